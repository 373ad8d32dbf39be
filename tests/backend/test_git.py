"""The git calls through the official ``leap0`` SDK against the real backend (issue #14).

Every one of the document's 16 git operations runs ``git`` in the sandbox as its user.
Repositories are local bare ones in the sandbox (deny-all: nothing leaves it) or, for the
network and the credentials, on the git server of the test hosts (``tests/hosts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer

DENY_ALL = {"mode": "deny-all"}
ORIGIN = "/tmp/origin.git"
REPO = "/home/user/work"


@pytest.fixture
def leap0(backend: BackendServer, api_key: str) -> Iterator[Any]:
    with sdk(backend, api_key) as client:
        yield client


@pytest.fixture
def box(leap0: Any) -> Iterator[Any]:
    sandbox = leap0.sandboxes.create(template_name=TEMPLATE, network_policy=DENY_ALL)
    try:
        yield sandbox
    finally:
        sandbox.delete()


def sh(box: Any, command: str) -> str:
    result = box.process.execute(command=command)
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return str(result.stdout)


def seed_origin(box: Any) -> None:
    """A bare repository in the sandbox with one commit on main, made with git itself."""
    sh(box, f"git init -q --bare -b main {ORIGIN} && git init -q -b main /tmp/seed && "
            "cd /tmp/seed && echo one > a.txt && git add a.txt && "
            "git -c user.name=Seed -c user.email=seed@test commit -q -m seed && "
            f"git push -q {ORIGIN} main && rm -rf /tmp/seed")


def test_every_git_operation_through_the_sdk(box: Any) -> None:
    seed_origin(box)
    git = box.git

    cloned = git.clone(url=ORIGIN, path=REPO)
    assert cloned.exit_code == 0 and "Cloning into" in cloned.output
    assert sh(box, f"cat {REPO}/a.txt") == "one\n"

    assert "On branch main" in git.status(path=REPO).output
    assert git.branches(path=REPO).output.split() == ["*", "main"]
    assert "origin/main" in git.branches(path=REPO, branch_type="remote").output
    assert "origin/main" in git.branches(path=REPO, branch_type="all").output

    sh(box, f"echo two >> {REPO}/a.txt && echo new > {REPO}/b.txt")
    unstaged = git.diff_unstaged(path=REPO)
    assert "+two" in unstaged.output and "\n one\n" in unstaged.output
    assert "\n one\n" not in git.diff_unstaged(path=REPO, context_lines=0).output
    assert git.diff_staged(path=REPO).output == ""

    assert git.add(path=REPO, files=["a.txt", "b.txt"]).exit_code == 0
    staged = git.diff_staged(path=REPO)
    assert "+two" in staged.output and "b.txt" in staged.output
    git.reset(path=REPO)
    assert git.diff_staged(path=REPO).output == ""
    git.add(path=REPO, files=["a.txt", "b.txt"])

    made = git.commit(path=REPO, message="second\n\nwith a body", author="Ada Lovelace",
                      email="ada@example.com")
    assert made.result is not None and made.result.exit_code == 0
    assert made.sha is not None and len(made.sha) == 40
    assert sh(box, f"git -C {REPO} log -1 --format='%H %an <%ae> %cn'") == (
        f"{made.sha} Ada Lovelace <ada@example.com> Ada Lovelace\n")

    log = git.log(path=REPO)
    assert made.sha in log.output and "seed" in log.output
    assert "seed" not in git.log(path=REPO, max_count=1).output
    assert git.log(path=REPO, start_timestamp="2099-01-01T00:00:00Z").output == ""
    assert made.sha in git.log(path=REPO, end_timestamp="2099-01-01T00:00:00Z").output

    shown = git.show(path=REPO, revision=made.sha)
    assert "with a body" in shown.output and "+two" in shown.output
    assert "+two" in git.diff(path=REPO, target="origin/main").output

    git.create_branch(path=REPO, name="feature")
    assert "* main" in git.branches(path=REPO).output
    git.create_branch(path=REPO, name="topic", checkout=True, base_branch="origin/main")
    assert "* topic" in git.branches(path=REPO).output
    assert sh(box, f"cat {REPO}/a.txt") == "one\n"
    git.checkout_branch(path=REPO, branch="feature")
    assert "* feature" in git.branches(path=REPO).output
    git.checkout_branch(path=REPO, branch="made-here", create=True)
    assert "* made-here" in git.branches(path=REPO).output
    git.checkout_branch(path=REPO, branch="feature", create=True)  # exists: just switches
    assert "* feature" in git.branches(path=REPO).output
    assert "feature" in git.branches(path=REPO, contains=made.sha).output
    assert "topic" not in git.branches(path=REPO, contains=made.sha).output
    assert "topic" in git.branches(path=REPO, not_contains=made.sha).output
    git.delete_branch(path=REPO, name="made-here")
    git.delete_branch(path=REPO, name="topic", force=True)
    assert git.branches(path=REPO).output.split() == ["*", "feature", "main"]

    pushed = git.push(path=REPO, remote="origin", branch="feature", set_upstream=True)
    assert pushed.exit_code == 0
    assert sh(box, f"git --git-dir={ORIGIN} rev-parse feature") == f"{made.sha}\n"

    # Pull: a second clone pushes a commit, the first pulls it (merge, then rebase).
    other = "/home/user/other"
    git.clone(url=ORIGIN, path=other, branch="feature")
    sh(box, f"cd {other} && echo three > c.txt")
    git.add(path=other, files=["c.txt"])
    third = git.commit(path=other, message="third").sha
    git.push(path=other)
    pulled = git.pull(path=REPO)
    assert pulled.exit_code == 0
    assert sh(box, f"git -C {REPO} rev-parse HEAD") == f"{third}\n"
    sh(box, f"cd {other} && echo four > d.txt")
    git.add(path=other, files=["d.txt"])
    fourth = git.commit(path=other, message="fourth").sha
    git.push(path=other, remote="origin", branch="feature")
    git.commit(path=REPO, message="local", allow_empty=True)
    assert git.pull(path=REPO, remote="origin", branch="feature", rebase=True).exit_code == 0
    assert sh(box, f"git -C {REPO} log -3 --format=%s") == "local\nfourth\nthird\n"
    assert sh(box, f"git -C {REPO} rev-parse HEAD~1") == f"{fourth}\n"


def test_clone_options_branch_depth_and_commit(box: Any) -> None:
    seed_origin(box)
    sh(box, f"git clone -q {ORIGIN} /tmp/w && cd /tmp/w && git switch -q -c side && "
            "echo s > s.txt && git add s.txt && "
            "git -c user.name=S -c user.email=s@test commit -q -m side && git push -q origin side")
    first = sh(box, f"git --git-dir={ORIGIN} rev-parse main").strip()
    git = box.git
    git.clone(url=f"file://{ORIGIN}", path="/tmp/shallow", branch="side", depth=1)
    assert sh(box, "git -C /tmp/shallow rev-list --count HEAD") == "1\n"
    assert sh(box, "git -C /tmp/shallow branch --show-current") == "side\n"
    git.clone(url=ORIGIN, path="/tmp/at", commit_id=first)
    assert sh(box, "git -C /tmp/at rev-parse HEAD") == f"{first}\n"
    # Relative paths are the sandbox's working directory's, as in a shell there.
    git.clone(url=ORIGIN, path="relative")
    assert "On branch main" in git.status(path="relative").output


def test_a_failing_git_command_is_a_400_with_gits_words_and_no_host_path(
        backend: BackendServer, api_key: str, box: Any) -> None:
    from leap0 import Leap0Error

    with pytest.raises(Leap0Error) as failed:
        box.git.status(path="/tmp")
    assert failed.value.status_code == 400
    assert "not a git repository" in str(failed.value)
    with http(backend, api_key) as raw:
        answer = raw.post(f"/v1/sandbox/{box.id}/git/clone",
                          json={"url": "/tmp/nothing-here.git", "path": "/tmp/x"})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["errors"][0]["field"] == "url"
        assert "does not exist" in body["errors"][0]["error"]
        assert str(backend.data_dir) not in answer.text and "/run/leap0" not in answer.text
        seed_origin(box)
        box.git.clone(url=ORIGIN, path=REPO)
        nothing = raw.post(f"/v1/sandbox/{box.id}/git/commit",
                           json={"path": REPO, "message": "empty"})
        assert nothing.status_code == 400 and "nothing to commit" in nothing.text
        unknown = raw.post(f"/v1/sandbox/{box.id}/git/show",
                           json={"path": REPO, "revision": "no-such-rev"})
        assert unknown.status_code == 400
        assert unknown.json()["errors"][0]["field"] == "revision"


BAD_INPUTS = [
    ("clone", {"url": "--upload-pack=touch /tmp/pwned", "path": "/tmp/x"}, "url"),
    ("clone", {"url": "ext::sh -c touch% /tmp/pwned", "path": "/tmp/x"}, "url"),
    ("clone", {"url": "https://user:secret@example.com/r.git", "path": "/tmp/x"}, "url"),
    ("clone", {"url": "gopher://example.com/r.git", "path": "/tmp/x"}, "url"),
    ("clone", {"url": ORIGIN, "path": "/tmp/x", "branch": "--help"}, "branch"),
    ("clone", {"url": ORIGIN, "path": "/tmp/x", "username": "u"}, "password"),
    ("clone", {"url": ORIGIN, "path": "/tmp/x", "password": "p"}, "username"),
    ("clone", {"url": ORIGIN, "path": "/tmp/x", "username": "u\nhost=evil",
               "password": "p"}, "username"),
    ("clone", {"url": ORIGIN, "path": "/tmp/x", "depth": -1}, "depth"),
    ("show", {"path": REPO, "revision": "--output=/tmp/pwned"}, "revision"),
    ("diff", {"path": REPO, "target": "-R"}, "target"),
    ("diff-unstaged", {"path": REPO, "context_lines": -1}, "context_lines"),
    ("branches", {"path": REPO, "contains": "-x"}, "contains"),
    ("branches", {"path": REPO, "branch_type": "both"}, "branch_type"),
    ("create-branch", {"path": REPO, "name": "-D"}, "name"),
    ("create-branch", {"path": REPO, "name": "ok", "base_branch": "-f"}, "base_branch"),
    ("checkout-branch", {"path": REPO, "branch": "-"}, "branch"),
    ("delete-branch", {"path": REPO, "name": "main\nx"}, "name"),
    ("add", {"path": REPO, "files": []}, "files"),
    ("add", {"path": REPO, "files": ["a\x00b"]}, "files[0]"),
    ("commit", {"path": REPO, "message": ""}, "message"),
    ("commit", {"path": REPO, "message": "m" * (64 * 1024 + 1)}, "message"),
    ("push", {"path": REPO, "remote": "--receive-pack=touch /tmp/pwned"}, "remote"),
    ("pull", {"path": REPO, "branch": "--upload-pack=x"}, "branch"),
    ("log", {"path": REPO, "max_count": 1001}, "max_count"),
    ("status", {"path": ""}, "path"),
    ("status", {}, "path"),
]


@pytest.mark.parametrize(("operation", "body", "field"), BAD_INPUTS,
                         ids=[f"{op}-{field}" for op, _, field in BAD_INPUTS])
def test_input_that_could_mean_something_else_to_git_is_a_400_naming_the_field(
        backend: BackendServer, api_key: str, operation: str, body: dict[str, Any],
        field: str) -> None:
    with http(backend, api_key) as raw:
        created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE,
                                                 "network_policy": DENY_ALL})
        box = created.json()["id"]
        try:
            answer = raw.post(f"/v1/sandbox/{box}/git/{operation}", json=body)
            assert answer.status_code == 400, answer.text
            assert [e["field"] for e in answer.json()["errors"]] == [field], answer.text
            assert "secret" not in answer.text
            pwned = raw.post(f"/v1/sandbox/{box}/filesystem/exists", json={"path": "/tmp/pwned"})
            assert pwned.json() == {"exists": False}
        finally:
            raw.delete(f"/v1/sandbox/{box}/")


def test_paths_to_stage_are_files_not_options_or_pathspec_magic(box: Any) -> None:
    seed_origin(box)
    box.git.clone(url=ORIGIN, path=REPO)
    sh(box, f"cd {REPO} && echo x > ./-A && echo y > ':(glob)*' && echo z > other")
    box.git.add(path=REPO, files=["-A", ":(glob)*"])
    staged = sh(box, f"git -C {REPO} diff --cached --name-only")
    assert staged.split() == ["-A", ":(glob)*"]


def test_another_organizations_sandbox_is_404_on_every_git_route(
        backend: BackendServer, box: Any) -> None:
    from pulumi_leap0.backend.routes.git import OPERATIONS

    other = backend.new_api_key()
    with http(backend, other) as raw:
        for path, *_ in OPERATIONS:
            for slash in ("", "/"):
                answer = raw.post(f"/v1/sandbox/{box.id}/git/{path}{slash}",
                                  json={"path": REPO, "url": ORIGIN})
                assert answer.status_code == 404, (path, answer.text)
                assert answer.json() == {"message": "sandbox not found"}
