"""The real Pulumi CLI, run offline on a file state backend: the one driver the demo, the
CLI tests and the benchmarks share.

``make pulumi`` (``tools/build-pulumi.sh``) builds the CLI and the Python language host from
the Go module proxy into a cache directory; :func:`cli_dir` finds it without building.
Every call gets the same environment: the binaries first on PATH, a private
``PULUMI_HOME``, a ``file://`` backend, a passphrase secrets provider, no update check and
no plugin downloads (nothing may be downloaded from outside the package registries here).

Like ``engine_protocol.py``, this is tooling beside the package's layers: no layer imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "tools" / "build-pulumi.sh"
#: Set to a directory holding ``pulumi`` and the language host to use those instead.
CLI_DIR_ENV = "PULUMI_LEAP0_CLI_DIR"
PASSPHRASE = "leap0-local-state"
CALL_TIMEOUT_S = 600.0


def cli_dir() -> Path | None:
    """Where ``make pulumi`` put the CLI, or None if it has not been built."""
    configured = os.environ.get(CLI_DIR_ENV)
    if configured:
        path = Path(configured)
        return path if (path / "pulumi").is_file() else None
    done = subprocess.run(["sh", str(BUILD_SCRIPT), "--where"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return Path(done.stdout.strip().splitlines()[-1])


class PulumiError(Exception):
    def __init__(self, args: Sequence[str], done: subprocess.CompletedProcess[str]) -> None:
        self.returncode = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr
        super().__init__(
            f"pulumi {' '.join(args)} exited {done.returncode}\n--- stdout\n{done.stdout[-8000:]}"
            f"\n--- stderr\n{done.stderr[-4000:]}"
        )


@dataclass
class Stack:
    """One stack of a project directory, with its own state and Pulumi home under ``root``."""

    bin_dir: Path
    project_dir: Path
    root: Path
    name: str = "test"
    env: dict[str, str] = field(default_factory=dict)
    #: Printed before each command and its output streamed (the demo), else captured.
    echo: bool = False

    def __post_init__(self) -> None:
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
        return {
            **base,
            "PATH": f"{self.bin_dir}{os.pathsep}{base.get('PATH', '')}",
            "PULUMI_HOME": str(self.root / "home"),
            "PULUMI_BACKEND_URL": (self.root / "state").as_uri(),
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            # The program, the provider and the policy pack run in this interpreter, so they
            # import the same pulumi_leap0 as the caller.
            "PULUMI_PYTHON_CMD": sys.executable,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p
            ),
            **self.env,
        }

    def run(self, *args: str, check: bool = True, stdin: str | None = None,
            capture: bool = False, timeout: float = CALL_TIMEOUT_S,
            ) -> subprocess.CompletedProcess[str]:
        """``pulumi <args>``; its output is captured unless the stack echoes (``capture``
        captures it anyway: output that is parsed)."""
        argv = [str(self.bin_dir / "pulumi"), *args, "--stack", self.name,
                "--non-interactive", "--color", "never"]
        if self.echo:
            print("$ pulumi " + " ".join(args), flush=True)
        done = subprocess.run(
            argv, cwd=self.project_dir, env=self.environment(), input=stdin, text=True,
            capture_output=capture or not self.echo, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise PulumiError(args, done)
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        """``pulumi <args>`` in the background (to interrupt it), in its own process group."""
        return subprocess.Popen(
            [str(self.bin_dir / "pulumi"), *args, "--stack", self.name, "--non-interactive",
             "--color", "never"],
            cwd=self.project_dir, env=self.environment(), text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    # --- The commands the tests use ---------------------------------------------------------

    def init(self, config: Mapping[str, str] = {},
             secrets: Mapping[str, str] = {}) -> None:
        self.run("stack", "init")
        for key, value in config.items():
            self.run("config", "set", key, value)
        for key, value in secrets.items():
            # Through stdin: a secret never appears in an argv (ps shows argv to everyone).
            self.run("config", "set", "--secret", key, stdin=value)

    def up(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("up", "--yes", "--skip-preview", *args, check=check)

    def preview(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("preview", *args, check=check)

    def preview_json(self, *args: str, check: bool = True) -> dict[str, Any]:
        done = self.run("preview", "--json", *args, check=check, capture=True)
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def refresh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("refresh", "--yes", "--skip-preview", *args)

    def destroy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("destroy", "--yes", "--skip-preview", *args)

    def outputs(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "output", "--json", *(["--show-secrets"] if show_secrets else [])]
        parsed: dict[str, Any] = json.loads(self.run(*args, capture=True).stdout)
        return parsed

    def export(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "export", *(["--show-secrets"] if show_secrets else [])]
        parsed: dict[str, Any] = json.loads(self.run(*args, capture=True).stdout)
        return parsed

    def resources(self, type_: str, show_secrets: bool = False) -> list[dict[str, Any]]:
        """The resources of ``type_`` in the stack's state."""
        deployment = self.export(show_secrets).get("deployment", {})
        return [r for r in deployment.get("resources") or [] if r.get("type") == type_]


def write_project(directory: Path, program: str, name: str = "leap0-test") -> Path:
    """A Python Pulumi project in ``directory`` whose ``__main__.py`` is ``program``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Pulumi.yaml").write_text(f"name: {name}\nruntime:\n  name: python\n")
    (directory / "__main__.py").write_text(program)
    return directory


def interrupt(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> str:
    """Send ``sig`` to a :meth:`Stack.start` process and everything it started."""
    os.killpg(process.pid, sig)
    out, _ = process.communicate(timeout=60)
    return out


def which() -> str | None:
    """The CLI to use: the built one, else a ``pulumi`` already on PATH."""
    built = cli_dir()
    return str(built) if built else (str(Path(p).parent) if (p := shutil.which("pulumi")) else None)
