"""The provider's overhead, measured side by side against the plain client on one backend.

1. Create-to-running through the gRPC provider (``python -m pulumi.dynamic``, as the engine
   drives it) against create-then-poll through ``Leap0Client``, alternating, each sandbox
   deleted before the next. Target: median ratio at most 1.2.
2. Check + diff for 100 sandboxes through the gRPC provider. Target: under 2 s in all.

Run: python bench/bench_provider.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.engine_protocol import ProviderProcess
from tests.fixtures.backend import running_backend

PROPS = {"template_name": "system/debian:bookworm", "vcpu": 1, "memory": 1024,
         "env_vars": {"STAGE": "bench"},
         "network_policy": {"mode": "custom", "allow_domains": ["pypi.org"]}}


def create_with_client(client: Leap0Client) -> tuple[float, str]:
    started = time.perf_counter()
    sandbox = client.create_sandbox(spec.validate_create(PROPS))
    interval = 0.02
    while sandbox.state != spec.SandboxState.RUNNING:
        time.sleep(interval)
        interval = min(interval * 2, 1.0)
        sandbox = client.get_sandbox(sandbox.id)
    return time.perf_counter() - started, sandbox.id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds

    with running_backend() as backend:
        api_key = backend.new_api_key()
        with ProviderProcess() as engine, Leap0Client(api_key, backend.base_url) as client:
            engine.configure({"leap0:apiKey": api_key, "leap0:baseUrl": backend.base_url})
            inputs, _ = engine.check(PROPS)
            engine.delete(*engine.create(inputs))  # warm both paths up

            via_client: list[float] = []
            via_provider: list[float] = []
            for _ in range(rounds):
                seconds, sandbox_id = create_with_client(client)
                via_client.append(seconds)
                client.delete_sandbox(sandbox_id)

                started = time.perf_counter()
                sandbox_id, outputs = engine.create(inputs)
                via_provider.append(time.perf_counter() - started)
                engine.delete(sandbox_id, outputs)

            id_, outputs = engine.create(inputs)
            started = time.perf_counter()
            for i in range(100):
                news, _ = engine.check({**PROPS, "env_vars": {"STAGE": f"bench-{i}"}})
                engine.diff(id_, outputs, news)
            check_diff_s = time.perf_counter() - started
            engine.delete(id_, outputs)

    client_ms = statistics.median(via_client) * 1000
    provider_ms = statistics.median(via_provider) * 1000
    print(f"create to running, median of {rounds} (alternating, same backend):")
    print(f"  plain client     {client_ms:7.1f} ms")
    print(f"  gRPC provider    {provider_ms:7.1f} ms")
    print(f"  ratio            {provider_ms / client_ms:7.2f}   (target <= 1.2)")
    print(f"check + diff for 100 sandboxes: {check_diff_s:.2f} s   (target < 2 s)")


if __name__ == "__main__":
    main()
