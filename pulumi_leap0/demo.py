"""``make demo``: the quickstart stack end to end against a local reference backend.

With the Pulumi CLI (``make pulumi`` builds it; else a ``pulumi`` on PATH), on a file state
backend: ``pulumi up --yes``, a command in the sandbox, an edit and its ``pulumi preview
--diff``, ``pulumi up``, ``pulumi destroy --yes``, each with Pulumi's own output. Only where
the CLI cannot be built, the fallback: the quickstart program runs under Pulumi's mocks to
capture its sandbox, and that sandbox goes through the provider's engine protocol (check,
create, read, a command inside, diff of an edited spec, replace, delete), step by step.
"""

from __future__ import annotations

import asyncio
import runpy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import which

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = REPO_ROOT / "examples" / "quickstart"
DEMO_DIR = Path.cwd() / ".demo"
COMMAND = 'echo "$GREETING"; uname -n; id -un'


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def reference_backend(data_dir: Path) -> Iterator[tuple[str, str]]:
    """A ``leap0-backend`` in the background, its URL and a fresh API key; stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o711)  # the sandboxes' own uids must be able to traverse it
    backend = [sys.executable, "-m", "pulumi_leap0.backend.cli"]
    api_key = subprocess.run(
        [*backend, "api-key", "create", "--org", "demo", "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "backend.log").open("ab")
    server = subprocess.Popen(
        [*backend, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise SystemExit(f"leap0-backend exited; see {data_dir / 'backend.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("leap0-backend did not become ready within 30 s")
            time.sleep(0.1)
        print(f"reference backend at {url} (data in {data_dir})")
        yield url, api_key
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def run_command(url: str, api_key: str, sandbox_id: str) -> None:
    step(f"run a command inside {sandbox_id}: {COMMAND}")
    with Leap0Client(api_key, url) as client:
        result = client.execute(sandbox_id, spec.ExecuteRequest(command=COMMAND))
    print(result.stdout, end="")
    if result.exit_code != 0:
        raise SystemExit(f"the command failed ({result.exit_code}): {result.stderr}")


# --- With the Pulumi CLI -----------------------------------------------------------------------


def with_cli(bin_dir: Path, url: str, api_key: str) -> None:
    from pulumi_leap0.pulumi_cli import Stack

    print(f"The Pulumi CLI from {bin_dir}, on a file state backend in {DEMO_DIR / 'pulumi'}.")
    # A copy: the stack's config file and the edit below stay out of examples/.
    project = DEMO_DIR / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("Pulumi.*.yaml"))
    stack = Stack(bin_dir, project, DEMO_DIR / "pulumi", name="demo", echo=True)
    stack.init(config={"leap0:baseUrl": url}, secrets={"leap0:apiKey": api_key})
    try:
        step("pulumi up --yes")
        stack.run("up", "--yes")
        sandbox_id = stack.run("stack", "output", "sandbox_id", capture=True).stdout.strip()
        run_command(url, api_key, sandbox_id)

        step("edit the program: memory 1024 -> 2048 MiB, then pulumi preview --diff")
        program = project / "__main__.py"
        program.write_text(program.read_text().replace("memory=1024", "memory=2048"))
        stack.run("preview", "--diff")

        step("pulumi up --yes: the replacement, deleting the old sandbox first")
        stack.run("up", "--yes")
    finally:
        step("pulumi destroy --yes")
        stack.run("destroy", "--yes")


# --- Without it: the engine protocol -----------------------------------------------------------


def quickstart_inputs() -> dict[str, Any]:
    """The sandbox the quickstart program declares, captured by running it under mocks."""
    import pulumi

    captured: dict[str, Any] = {}

    class Capture(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            captured.update(args.inputs)
            return (f"{args.name}-id", dict(args.inputs))

        def call(
            self, args: pulumi.runtime.MockCallArgs
        ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            return {}, None

    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(Capture(), project="leap0-quickstart", stack="demo", preview=False)
    runpy.run_path(str(QUICKSTART / "__main__.py"))
    loop = asyncio.get_event_loop()
    loop.run_until_complete(pulumi.runtime.stack.wait_for_rpcs())
    secret = "4dabf18193072939515e22adb298388d"
    return {
        k: (v["value"] if isinstance(v, dict) and secret in v else v)
        for k, v in captured.items()
        if v is not None and k != "__provider"
    }


def without_cli(url: str, api_key: str) -> None:
    from pulumi_leap0.engine_protocol import ProviderProcess

    print("The Pulumi CLI is not built here (`make pulumi` builds it from the Go module "
          "proxy), and no `pulumi` is on PATH: falling back to driving the quickstart's "
          "sandbox through the provider's engine protocol (python -m pulumi.dynamic over "
          "gRPC), which checks the provider but not Pulumi's engine.")
    program = quickstart_inputs()
    with ProviderProcess() as engine:
        engine.configure({"leap0:apiKey": api_key, "leap0:baseUrl": url})

        step("check: the program's inputs, validated and normalized")
        inputs, failures = engine.check(program)
        if failures:
            raise SystemExit(f"check failed: {failures}")
        print({k: _whole(v) for k, v in inputs.items() if k not in ("__provider", "env_vars")})

        step("create")
        sandbox_id, outputs = engine.create(inputs)
        print(f"created {sandbox_id}: state={outputs['state']} vcpu={outputs['vcpu']:g} "
              f"memory={outputs['memory']:g} MiB disk={outputs['disk']:g} MiB")
        try:
            step("read (refresh)")
            read_id, outputs, _ = engine.read(sandbox_id, outputs)
            print(f"{read_id} is {outputs['state']}")

            run_command(url, api_key, sandbox_id)

            step("diff of the same program: nothing to do")
            print(engine.diff(sandbox_id, outputs, inputs))

            edited = {**program, "memory": 2048}
            step("diff after editing memory to 2048 MiB")
            edited_inputs, _ = engine.check(edited)
            diff = engine.diff(sandbox_id, outputs, edited_inputs)
            print(diff)

            step("replace: delete the old sandbox first (the organization limit is 3), "
                 "then create")
            engine.delete(sandbox_id, outputs)
            sandbox_id, outputs = engine.create(edited_inputs)
            print(f"created {sandbox_id}: memory={outputs['memory']:g} MiB")
        finally:
            step(f"delete {sandbox_id}")
            engine.delete(sandbox_id, outputs)
            print("deleted")


def _whole(value: Any) -> Any:
    # Numbers cross the engine protocol as floats; show 1024, not 1024.0.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def main() -> None:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    with reference_backend(DEMO_DIR / "backend") as (url, api_key):
        bin_dir = which()
        if bin_dir:
            with_cli(Path(bin_dir), url, api_key)
        else:
            without_cli(url, api_key)
    print("\ndemo complete")


if __name__ == "__main__":
    main()
