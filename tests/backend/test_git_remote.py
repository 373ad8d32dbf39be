"""Git calls that talk to a remote: the git server of the test hosts (smart HTTP, basic
auth, ``tests/hosts/git_server.py``), through the official SDK against the real backend.

The sandbox's network policy decides what clone, push and pull reach, and credentials given
in a request are used for that call only: nothing in the sandbox, no host argv or
environment, no backend log line and no answer holds them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http, sdk
from tests.backend.test_git import sh
from tests.fixtures.backend import BackendServer
from tests.fixtures.git_server import GitServer
from tests.hosts import TestHosts

ALLOW_ALL = {"mode": "allow-all"}
DENY_ALL = {"mode": "deny-all"}
#: How long another organization's git call may take while one stalls every call it may.
ANSWER_BOUND_S = 5.0


@contextlib.contextmanager
def sandbox(backend: BackendServer, key: str, policy: dict[str, Any]) -> Iterator[Any]:
    with sdk(backend, key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE, network_policy=policy)
        try:
            yield box
        finally:
            box.delete()


def _processes_of(box_id: str) -> list[Path]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and box_id in (proc / "cgroup").read_text():
                found.append(proc)
    return found


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path))
    return hits


class HostWatch:
    """Reads every host process's argv and environment while a call runs."""

    def __init__(self, needle: bytes) -> None:
        self.needle = needle
        self.hits: set[str] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                for name in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        if self.needle in (proc / name).read_bytes():
                            self.hits.add(f"{proc.name}/{name}")
            self.rounds += 1

    def __enter__(self) -> HostWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_clone_push_and_pull_with_credentials_leave_them_nowhere(
        backend: BackendServer, api_key: str, git_server: GitServer) -> None:
    repo = git_server.repo("private-round-trip")
    url = git_server.url("private", repo)
    secret = git_server.password.encode()
    creds = {"username": git_server.user, "password": git_server.password}
    with sandbox(backend, api_key, ALLOW_ALL) as box:
        # The sandbox's own configuration asks git to store credentials: the call's
        # helper list replaces it, so nothing is written.
        sh(box, "git config --global credential.helper store")
        with HostWatch(secret) as watch:
            cloned = box.git.clone(url=url, path="/home/user/repo", **creds)
            sh(box, "cd /home/user/repo && echo more >> README.md")
            box.git.add(path="/home/user/repo", files=["README.md"])
            made = box.git.commit(path="/home/user/repo", message="from the sandbox")
            pushed = box.git.push(path="/home/user/repo", **creds)
        assert watch.rounds > 0 and not watch.hits, watch.hits
        assert cloned.exit_code == 0 and pushed.exit_code == 0
        assert git_server.head(repo) == made.sha
        # Upstream saw the credentials (that is what they are for).
        assert any(r["auth"] and repo in r["path"] for r in git_server.requests())

        # Pull: a commit made upstream arrives.
        from tests.fixtures.git_server import host_git
        with contextlib.ExitStack() as stack:
            import tempfile
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            host_git("clone", "--quiet", str(git_server.root / repo), str(work))
            (work / "upstream.txt").write_text("upstream\n")
            host_git("add", "upstream.txt", cwd=work)
            host_git("commit", "--quiet", "-m", "upstream", cwd=work)
            host_git("push", "--quiet", "origin", "HEAD:main", cwd=work)
        with HostWatch(secret) as watch:
            pulled = box.git.pull(path="/home/user/repo", **creds)
        assert not watch.hits, watch.hits
        assert pulled.exit_code == 0
        assert sh(box, "cat /home/user/repo/upstream.txt") == "upstream\n"

        # Nothing of them in the sandbox: files (home, /tmp, .git/config), nor the argv or
        # environment of any process of the sandbox; nor in the answers or the backend log.
        for proc in _processes_of(box.id):
            for name in ("cmdline", "environ"):
                with contextlib.suppress(OSError):
                    assert secret not in (proc / name).read_bytes(), (proc, name)
        root = _processes_of(box.id)[0] / "root"
        for top in ("home", "tmp", "var/tmp"):
            assert _files_holding(root / top, secret) == [], top
        assert not (root / "home/user/.git-credentials").exists()
        assert "l0pw-" not in sh(box, "cat /home/user/repo/.git/config")
        for answer in (cloned, pushed, pulled):
            assert git_server.password not in answer.output
        assert git_server.password not in backend.log()


def test_without_credentials_a_private_clone_fails_with_gits_words(
        backend: BackendServer, api_key: str, git_server: GitServer) -> None:
    repo = git_server.repo("private-no-creds")
    with sandbox(backend, api_key, ALLOW_ALL) as box, http(backend, api_key) as raw:
        answer = raw.post(f"/v1/sandbox/{box.id}/git/clone",
                          json={"url": git_server.url("private", repo), "path": "/tmp/r"})
        assert answer.status_code == 400, answer.text
        assert "terminal prompts disabled" in answer.json()["message"], answer.text
        wrong = raw.post(f"/v1/sandbox/{box.id}/git/clone", json={
            "url": git_server.url("private", repo), "path": "/tmp/r",
            "username": git_server.user, "password": "not-the-password"})
        assert wrong.status_code == 400 and "Authentication failed" in wrong.text, wrong.text
        assert "not-the-password" not in wrong.text


def test_the_network_policy_decides_what_a_clone_reaches(
        backend: BackendServer, api_key: str, git_server: GitServer, hosts: TestHosts) -> None:
    repo = git_server.repo("public-policy")
    url = git_server.url("public", repo)
    host = hosts.address("allowed")
    with http(backend, api_key) as raw:
        for policy, reaches in ((ALLOW_ALL, True), (DENY_ALL, False),
                                ({"mode": "custom", "allow_cidrs": [f"{host}/32"]}, True),
                                ({"mode": "custom", "allow_domains": ["example.com"]}, False)):
            created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE,
                                                     "network_policy": policy})
            assert created.status_code == 201, created.text
            box = created.json()["id"]
            try:
                before = len(git_server.requests())
                answer = raw.post(f"/v1/sandbox/{box}/git/clone",
                                  json={"url": url, "path": "/tmp/r"}, timeout=120)
                if reaches:
                    assert answer.status_code == 200, (policy, answer.text)
                    assert len(git_server.requests()) > before
                else:
                    assert answer.status_code == 400, (policy, answer.text)
                    assert "unable to access" in answer.text, answer.text
                    assert len(git_server.requests()) == before, policy
                    assert "/run/leap0" not in answer.text
                    assert str(backend.data_dir) not in answer.text
            finally:
                raw.delete(f"/v1/sandbox/{box}/")


def test_a_stalled_remote_costs_only_its_own_organization(
        backend: BackendServer, git_server: GitServer) -> None:
    """Organization A fills its whole share with clones from a server that never answers;
    organization B's git calls are answered as fast as ever meanwhile."""
    a_key, b_key = backend.new_api_key(), backend.new_api_key()
    stalled = git_server.url("stall", "never.git")
    with sandbox(backend, a_key, ALLOW_ALL) as a_box, sandbox(backend, b_key, DENY_ALL) as b_box:
        sh(b_box, "git init -q /tmp/r")

        async def stall_and_measure() -> tuple[list[float], list[int]]:
            async with httpx.AsyncClient(base_url=backend.base_url, timeout=30,
                                         headers={"Authorization": f"Bearer {a_key}"}) as a, \
                    httpx.AsyncClient(base_url=backend.base_url, timeout=30,
                                      headers={"Authorization": f"Bearer {b_key}"}) as b:
                clones = [asyncio.create_task(a.post(
                    f"/v1/sandbox/{a_box.id}/git/clone",
                    json={"url": stalled, "path": f"/tmp/c{i}"}))
                    for i in range(spec.MAX_CALLS_PER_ORG)]
                await asyncio.sleep(2.0)
                timings = []
                for _ in range(5):
                    started = time.monotonic()
                    answer = await b.post(f"/v1/sandbox/{b_box.id}/git/status",
                                          json={"path": "/tmp/r"})
                    assert answer.status_code == 200, answer.text
                    timings.append(time.monotonic() - started)
                over = await a.post(f"/v1/sandbox/{a_box.id}/git/status",
                                    json={"path": "/tmp"})
                running = [clone.done() and clone.result().text for clone in clones]
                for clone in clones:
                    clone.cancel()
                return timings, [over.status_code, *running]

        timings, over = asyncio.run(stall_and_measure())
        assert max(timings) < ANSWER_BOUND_S, timings
        # A itself is at its share: told to come back, not queued forever.
        assert over == [429, *[False] * spec.MAX_CALLS_PER_ORG], over
