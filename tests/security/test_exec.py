"""Exec, attacked from the host and from inside (issue #12).

A host user (``nobody``) lists every process of the host while tenants' commands run: no
value of a sandbox's ``env_vars`` or of a call's ``envs`` may be in any argv it can read,
nor in an environment it can read, nor in the backend's log or an error body. And a tenant
runs many commands at once in one sandbox: each must get its own exit status and output,
none a failure that names a host path.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.runner import Runner
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer
from tests.runner.conftest import Sandboxes
from tests.support import require

NOBODY = 65534

# Run as nobody: every /proc/<pid>/cmdline and environ it can read, and the pids whose
# text holds one of the needles (JSON on stdin: in argv they would find themselves). What a
# host user's `ps e` would show.
SCAN = r'''
import json, os, sys
needles = [n.encode() for n in json.load(sys.stdin)]
found = []
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as fh:
                text = fh.read()
        except OSError:
            continue
        found += [f"{pid}/{part}" for n in needles if n in text]
print(json.dumps(found))
'''


def scan_as_nobody(needles: list[str]) -> list[str]:
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-I", "-S", "-c", SCAN], input=json.dumps(needles),
        capture_output=True, text=True, timeout=30, check=True, cwd="/")
    found: list[str] = json.loads(done.stdout)
    return found


def scan_as_root(needles: list[str]) -> list[str]:
    """Every argv on the host (root reads them all; so does anyone, without hidepid)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            found += [pid for n in needles if n.encode() in text]
    return found


@pytest.fixture
def raw(backend: BackendServer, api_key: str) -> Iterator[httpx.Client]:
    require(os.geteuid() == 0, "the host's process table as nobody needs a root runner")
    with http(backend, api_key) as client:
        yield client


def _create(raw: httpx.Client, **body: object) -> str:
    created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE, **body})
    assert created.status_code == 201, created.text
    sandbox_id: str = created.json()["id"]
    return sandbox_id


def _execute(raw: httpx.Client, box: str, command: str, **body: object) -> httpx.Response:
    return raw.post(f"/v1/sandbox/{box}/process/execute",
                    json={"command": command, "timeout": 60, **body})


# --- Secrets in the host's process table ----------------------------------------------------


def test_env_values_are_in_no_host_argv_or_readable_environment(
        backend: BackendServer, raw: httpx.Client) -> None:
    sandbox_secret = f"sbx-secret-{secrets.token_hex(8)}"
    call_secret = f"call-secret-{secrets.token_hex(8)}"
    needles = [sandbox_secret, call_secret]
    box = _create(raw, env_vars={"LEAP0_SANDBOX_SECRET": sandbox_secret})
    try:
        answers: list[httpx.Response] = []
        # A long exec: its host-side chain (join, nsenter) lives as long as the command.
        command = 'sleep 3; printf %s "$LEAP0_SANDBOX_SECRET:$LEAP0_CALL_SECRET" | sha256sum'
        running = threading.Thread(target=lambda: answers.append(_execute(
            raw, box, command, envs={"LEAP0_CALL_SECRET": call_secret})))
        running.start()
        seen_as_nobody: list[str] = []
        seen_as_root: list[str] = []
        deadline = time.monotonic() + 2.5
        scans = 0
        while running.is_alive() and time.monotonic() < deadline:
            seen_as_nobody += scan_as_nobody(needles)
            seen_as_root += scan_as_root(needles)
            scans += 1
        running.join(timeout=60)
        assert scans >= 2, "the exec ended before the process table was read"
        assert not seen_as_nobody, f"a host user reads env values in {seen_as_nobody}"
        assert not seen_as_root, f"env values in the argv of host processes {seen_as_root}"
        # And the command did get both values.
        assert answers and answers[0].status_code == 200, answers
        expected = hashlib.sha256(f"{sandbox_secret}:{call_secret}".encode()).hexdigest()
        assert answers[0].json()["stdout"].split()[0] == expected, answers[0].json()

        # Calls that fail carry no value back either.
        failed = [
            _execute(raw, box, "true", cwd="/nonexistent", envs={"LEAP0_CALL_SECRET":
                                                                  call_secret}),
            _execute(raw, box, "true", envs={"LEAP0_CALL_SECRET": call_secret + "\0"}),
            _execute(raw, box, "exit 3", envs={"LEAP0_CALL_SECRET": call_secret}),
            raw.post("/v1/sandbox/", json={"template_name": TEMPLATE,
                                           "env_vars": {"A": sandbox_secret + "\0"}}),
        ]
        for answer in failed:
            assert sandbox_secret not in answer.text and call_secret not in answer.text, \
                answer.text
    finally:
        raw.delete(f"/v1/sandbox/{box}/")
    log = backend.log()
    assert sandbox_secret not in log and call_secret not in log


def test_the_init_chain_holds_no_env_value_in_its_argv(sandboxes: Sandboxes) -> None:
    secret = f"init-secret-{secrets.token_hex(8)}"
    require(os.geteuid() == 0, "the host's process table as nobody needs a root runner")
    sandbox_id = sandboxes.start(env={"LEAP0_INIT_SECRET": secret})
    assert not scan_as_nobody([secret])
    assert not scan_as_root([secret])
    runner = sandboxes.runner
    # Nor does anything the runner wrote for it that another host user can read.
    found = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         "grep", "-rlF", "-f", "-", str(runner.root_dir), str(runner.runtime_dir)],
        input=secret, capture_output=True, text=True, timeout=30, check=False)
    assert found.stdout == "", found.stdout
    result = runner.exec(sandbox_id, 'printf %s "$LEAP0_INIT_SECRET"')
    assert result.stdout == secret


def test_the_environment_is_exactly_the_sandboxs(sandboxes: Sandboxes) -> None:
    """What replaced ``env -i NAME=value`` sets the same variables, and only those: values
    with quotes, newlines and shell syntax arrive byte for byte, nothing is expanded."""
    require(os.geteuid() == 0, "exec needs a root runner")
    tricky = {"QUOTES": "it's \"quoted\" $HOME `id` $(id) \\n", "LINES": "one\ntwo\n",
              "EMPTY": "", "DASH": "-n", "BIG": "x" * 60_000}
    sandbox_id = sandboxes.start(env={"FROM_SANDBOX": "1"})
    runner = sandboxes.runner
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    result = runner.exec(sandbox_id, f"python3 -c '{dump}'", env=tricky)
    assert result.exit_code == 0, result
    env = json.loads(result.stdout)
    for name, value in tricky.items():
        assert env[name] == value, name
    assert env["FROM_SANDBOX"] == "1"
    base = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TMPDIR"}
    # sh itself adds PWD (as `env -i ... sh -c` did); nothing of the host's gets through.
    assert set(env) - set(tricky) - base - {"FROM_SANDBOX", "PWD"} == set(), sorted(env)
    # Stdin is still empty, not what carried the environment, also after the largest
    # environment and command the contract takes (more than a pipe holds).
    assert runner.exec(sandbox_id, "cat; echo end").stdout == "end\n"
    most = {f"V{i}": "y" * 500 for i in range(spec.MAX_ENV_VARS)}
    command = "# " + "z" * (spec.MAX_COMMAND_BYTES - 100) + '\ncat; echo "end $V999"'
    result = runner.exec(sandbox_id, command, env=most)
    assert (result.exit_code, result.stdout) == (0, f"end {'y' * 500}\n"), result.stderr


# --- Many execs at once in one sandbox ------------------------------------------------------


def _assert_own_outputs(results: list[tuple[int, int, str, str]]) -> None:
    for i, code, out, err in results:
        assert (code, out) == (0, f"out-{i}\n"), (i, code, out, err)
        assert "/sys/fs/cgroup" not in err and "/run/leap0" not in err, err


def test_twenty_concurrent_execs_in_one_sandbox_through_http(raw: httpx.Client) -> None:
    box = _create(raw)
    try:
        def one(i: int) -> tuple[int, int, str, str]:
            answer = _execute(raw, box, f"echo out-{i}")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            return i, body["exit_code"], body["stdout"], body["stderr"]

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            _assert_own_outputs(list(pool.map(one, range(20))))
    finally:
        raw.delete(f"/v1/sandbox/{box}/")


def test_fifty_concurrent_execs_in_one_sandbox(runner: Runner, sandboxes: Sandboxes) -> None:
    """More than one organization's share of the API at once, so through the runner: the
    cgroup of every call is its own until it ends, whatever the others do meanwhile."""
    require(os.geteuid() == 0, "exec cgroups need a root runner")
    sandbox_id = sandboxes.start()

    def one(i: int) -> tuple[int, int, str, str]:
        # Some leave a process behind, as a started server would: its cgroup stays.
        tail = " & sleep 0.1" if i % 5 == 0 else ""
        result = runner.exec(sandbox_id, f"echo out-{i}; sleep 0.3 >/dev/null{tail}")
        return i, result.exit_code, result.stdout, result.stderr

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        _assert_own_outputs(list(pool.map(one, range(50))))


def test_fifty_concurrent_execs_in_one_sandbox_through_http(
        raw: httpx.Client, client: Leap0Client) -> None:
    """Past the organization's share (8 running, 32 waiting): the API answers the rest 429
    before doing anything, and the project's client tries those again."""
    box = _create(raw)
    try:
        def one(i: int) -> tuple[int, int, str, str]:
            result = client.execute(box, spec.ExecuteRequest(command=f"echo out-{i}"))
            return i, result.exit_code, result.stdout, result.stderr

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            _assert_own_outputs(list(pool.map(one, range(50))))
    finally:
        raw.delete(f"/v1/sandbox/{box}/")
