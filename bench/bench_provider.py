"""The provider's overhead, measured side by side against the plain client on one backend.

1. Create-to-running through the gRPC provider (``python -m pulumi.dynamic``, as the engine
   drives it) against create-then-poll through ``Leap0Client``, alternating, each sandbox
   deleted before the next, for a deny-all and a custom network policy, the order of the
   two paths alternated every round. Target: median ratio at most 1.05 for each policy.
2. Check + diff for 100 sandboxes through the gRPC provider. Target: under 2 s in all.

Run: python bench/bench_provider.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.engine_protocol import ProviderProcess
from pulumi_leap0.provider.base import CREATE_TIMEOUT_DEFAULT_S, Backoff
from tests.fixtures.backend import running_backend

BASE_PROPS = {"template_name": "system/debian:bookworm", "vcpu": 1, "memory": 1024,
              "env_vars": {"STAGE": "bench"}}
POLICIES: dict[str, dict[str, object]] = {
    "deny-all": {"mode": "deny-all"},
    "custom": {"mode": "custom", "allow_domains": ["pypi.org"]},
}
TARGET_RATIO = 1.05


def props(policy: str) -> dict[str, object]:
    return {**BASE_PROPS, "network_policy": POLICIES[policy]}


def create_with_client(client: Leap0Client, policy: str) -> float:
    """Create-then-poll as a user of the client would, with the provider's own backoff."""
    started = time.perf_counter()
    sandbox = client.create_sandbox(spec.validate_create(props(policy)))
    backoff = Backoff(CREATE_TIMEOUT_DEFAULT_S)
    while sandbox.state != spec.SandboxState.RUNNING and backoff.pause():
        sandbox = client.get_sandbox(sandbox.id)
    seconds = time.perf_counter() - started
    client.delete_sandbox(sandbox.id)
    return seconds


def create_with_provider(engine: ProviderProcess, inputs: dict[str, object]) -> float:
    started = time.perf_counter()
    sandbox_id, outputs = engine.create(inputs)
    seconds = time.perf_counter() - started
    engine.delete(sandbox_id, outputs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds

    times: dict[tuple[str, str], list[float]] = {
        (policy, path): [] for policy in POLICIES for path in ("client", "provider")}
    with running_backend() as backend:
        api_key = backend.new_api_key()
        with ProviderProcess() as engine, Leap0Client(api_key, backend.base_url) as client:
            engine.configure({"leap0:apiKey": api_key, "leap0:baseUrl": backend.base_url})
            inputs = {policy: engine.check(props(policy))[0] for policy in POLICIES}
            for policy in POLICIES:  # warm both paths up
                create_with_client(client, policy)
                create_with_provider(engine, inputs[policy])

            paths: dict[str, Callable[[str], float]] = {
                "client": lambda policy: create_with_client(client, policy),
                "provider": lambda policy: create_with_provider(engine, inputs[policy]),
            }
            for round_ in range(rounds):
                # Each path goes first in every other round, so that neither always follows
                # the other (a custom policy's create leaves work behind on the runner).
                order = ["client", "provider"] if round_ % 2 == 0 else ["provider", "client"]
                for policy in POLICIES:
                    for path in order:
                        times[policy, path].append(paths[path](policy))

            id_, outputs = engine.create(inputs["deny-all"])
            started = time.perf_counter()
            for i in range(100):
                news, _ = engine.check({**props("deny-all"), "env_vars": {"STAGE": f"bench-{i}"}})
                engine.diff(id_, outputs, news)
            check_diff_s = time.perf_counter() - started
            engine.delete(id_, outputs)

    print(f"create to running, median of {rounds} (order alternated per round, one backend):")
    for policy in POLICIES:
        client_ms = statistics.median(times[policy, "client"]) * 1000
        provider_ms = statistics.median(times[policy, "provider"]) * 1000
        print(f"  {policy:9} plain client {client_ms:7.1f} ms   gRPC provider {provider_ms:7.1f} ms"
              f"   ratio {provider_ms / client_ms:5.2f}   (target <= {TARGET_RATIO})")
    print(f"check + diff for 100 sandboxes: {check_diff_s:.2f} s   (target < 2 s)")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
