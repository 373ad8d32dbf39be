"""What each git operation of the API runs in the sandbox, and how git's answer becomes the
document's body.

A ``Call`` is the argv (after ``git``) of one or more git runs and a function from their
outcomes to the answer; ``runtime.git`` runs it in the sandbox within one deadline. Values
from the body go into the argv only as option values (``--since=...``, ``-m message``) or
after ``--``; refs, remotes and revisions are refused when they start with ``-``
(``gitmodels.py``), so none of them can become an option either. Paths to stage are literal
(``--literal-pathspecs``): ``:(glob)*`` is a file name, not pathspec magic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from pulumi_leap0 import spec
from pulumi_leap0.backend import gitmodels as m
from pulumi_leap0.backend.errors import invalid

#: How much of git's output a failure's 400 quotes (its last lines: where git says why).
FAILURE_QUOTE_CHARS = 2000
#: The committer's e-mail where neither the request nor the repository's configuration gives
#: one: git would otherwise guess ``user@<hostname>.(none)`` and refuse to commit.
FALLBACK_EMAIL = "user@sandbox.invalid"


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    output: str


#: Runs ``git args...`` in the sandbox within what is left of the call's time.
Run = Callable[[Sequence[str]], Outcome]


class GitFailed(Exception):
    """Git exited non-zero: the request's fault (no such repository, branch, revision,
    nothing to commit...), a 400 naming ``field`` with git's own words."""

    def __init__(self, name: str, field_name: str, outcome: Outcome) -> None:
        quote = outcome.output.strip()[-FAILURE_QUOTE_CHARS:]
        super().__init__(f"git {name} failed (exit code {outcome.exit_code}): {quote}")
        self.field = field_name


@dataclass(frozen=True)
class Call:
    name: str
    #: The input a failure is reported on.
    field_name: str
    perform: Callable[[Run], BaseModel]
    #: Talks to a remote (clone, push, pull): the longer bound, and the call's credentials.
    remote: bool = False
    credentials: tuple[str, str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def timeout_s(self) -> int:
        return spec.GIT_REMOTE_TIMEOUT_S if self.remote else spec.GIT_CALL_TIMEOUT_S

    def checked(self, run: Run, args: Sequence[str]) -> Outcome:
        outcome = run(args)
        if outcome.exit_code != 0:
            raise GitFailed(self.name, self.field_name, outcome)
        return outcome


def _result(*outcomes: Outcome) -> m.GitResult:
    return m.GitResult(output="".join(o.output for o in outcomes),
                       exit_code=outcomes[-1].exit_code)


def _one(name: str, field_name: str, args: Sequence[str]) -> Call:
    def perform(run: Run) -> BaseModel:
        return _result(call.checked(run, args))

    call = Call(name, field_name, perform)
    return call


def _credentials(body: m.GitCloneRequest | m.GitPushPullRequest) -> tuple[str, str] | None:
    if body.username is None and body.password is None:
        return None
    if body.username is None or body.password is None:
        missing = "username" if body.username is None else "password"
        raise invalid(missing, "is required when the other of username and password is given")
    return body.username, body.password


def _diff_options(body: m.GitContextRequest) -> list[str]:
    return ["--no-ext-diff", "--no-textconv", f"--unified={body.context_lines}"]


# --- The operations, in the document's order ------------------------------------------------


def clone(body: m.GitCloneRequest) -> Call:
    args = ["clone", *(["--branch", body.branch] if body.branch else []),
            *([f"--depth={body.depth}"] if body.depth else []), "--", body.url, body.path]

    def perform(run: Run) -> BaseModel:
        outcomes = [call.checked(run, args)]
        if body.commit_id:
            outcomes.append(call.checked(
                run, ["-C", body.path, "switch", "--detach", body.commit_id]))
        return _result(*outcomes)

    call = Call("clone", "url", perform, remote=True, credentials=_credentials(body))
    return call


def status(body: m.GitPathRequest) -> Call:
    return _one("status", "path", ["-C", body.path, "status"])


def branches(body: m.GitBranchesRequest) -> Call:
    which = {"local": [], "remote": ["--remotes"], "all": ["--all"]}[body.branch_type or "local"]
    return _one("branch", "path", [
        "-C", body.path, "branch", *which,
        *([f"--contains={body.contains}"] if body.contains else []),
        *([f"--no-contains={body.not_contains}"] if body.not_contains else [])])


def diff_unstaged(body: m.GitContextRequest) -> Call:
    return _one("diff", "path", ["-C", body.path, "diff", *_diff_options(body)])


def diff_staged(body: m.GitContextRequest) -> Call:
    return _one("diff", "path", ["-C", body.path, "diff", "--cached", *_diff_options(body)])


def diff(body: m.GitDiffRequest) -> Call:
    return _one("diff", "target",
                ["-C", body.path, "diff", *_diff_options(body), body.target, "--"])


def reset(body: m.GitPathRequest) -> Call:
    return _one("reset", "path", ["-C", body.path, "reset"])


def log(body: m.GitLogRequest) -> Call:
    return _one("log", "path", [
        "-C", body.path, "log", f"--max-count={body.max_count}",
        *([f"--since={body.start_timestamp}"] if body.start_timestamp else []),
        *([f"--until={body.end_timestamp}"] if body.end_timestamp else []), "--"])


def show(body: m.GitShowRequest) -> Call:
    return _one("show", "revision",
                ["-C", body.path, "show", "--no-ext-diff", "--no-textconv", body.revision, "--"])


def create_branch(body: m.GitCreateBranchRequest) -> Call:
    def perform(run: Run) -> BaseModel:
        outcomes = [call.checked(run, ["-C", body.path, "branch", "--", body.name,
                                       *([body.base_branch] if body.base_branch else [])])]
        if body.checkout:
            outcomes.append(call.checked(run, ["-C", body.path, "switch", "--", body.name]))
        return _result(*outcomes)

    call = Call("branch", "name", perform)
    return call


def checkout_branch(body: m.GitCheckoutBranchRequest) -> Call:
    def perform(run: Run) -> BaseModel:
        switch = ["-C", body.path, "switch", "--", body.branch]
        if body.create:
            local = run(["-C", body.path, "rev-parse", "--verify", "--quiet",
                         f"refs/heads/{body.branch}"])
            if local.exit_code != 0:
                switch = ["-C", body.path, "switch", "--create", body.branch]
        return _result(call.checked(run, switch))

    call = Call("switch", "branch", perform)
    return call


def delete_branch(body: m.GitDeleteBranchRequest) -> Call:
    return _one("branch", "name", ["-C", body.path, "branch",
                                   "--delete", *(["--force"] if body.force else []), "--",
                                   body.name])


def add(body: m.GitAddRequest) -> Call:
    return _one("add", "files", ["--literal-pathspecs", "-C", body.path, "add", "--",
                                 *body.files])


def commit(body: m.GitCommitRequest) -> Call:
    env = {"EMAIL": FALLBACK_EMAIL}
    if body.author:
        env |= {"GIT_AUTHOR_NAME": body.author, "GIT_COMMITTER_NAME": body.author}
    if body.email:
        env |= {"GIT_AUTHOR_EMAIL": body.email, "GIT_COMMITTER_EMAIL": body.email}

    def perform(run: Run) -> BaseModel:
        made = call.checked(run, ["-C", body.path, "commit",
                                  *(["--allow-empty"] if body.allow_empty else []),
                                  f"--message={body.message}"])
        head = call.checked(run, ["-C", body.path, "rev-parse", "--verify", "HEAD"])
        return m.GitCommitResponse(sha=head.output.strip(), result=_result(made))

    call = Call("commit", "path", perform, env=env)
    return call


def _remote_and_branch(body: m.GitPushPullRequest) -> list[str]:
    if body.branch:
        return [body.remote or "origin", body.branch]
    return [body.remote] if body.remote else []


def push(body: m.GitPushPullRequest) -> Call:
    args = ["-C", body.path, "push", *(["--set-upstream"] if body.set_upstream else []), "--",
            *_remote_and_branch(body)]
    return _remote("push", args, body)


def pull(body: m.GitPushPullRequest) -> Call:
    args = ["-C", body.path, "pull", "--rebase" if body.rebase else "--no-rebase",
            *(["--set-upstream"] if body.set_upstream else []), "--", *_remote_and_branch(body)]
    return _remote("pull", args, body)


def _remote(name: str, args: Sequence[str], body: m.GitPushPullRequest) -> Call:
    def perform(run: Run) -> BaseModel:
        return _result(call.checked(run, args))

    # A pull may merge: a merge commit needs a committer as a commit does.
    call = Call(name, "remote", perform, remote=True, credentials=_credentials(body),
                env={"EMAIL": FALLBACK_EMAIL})
    return call
