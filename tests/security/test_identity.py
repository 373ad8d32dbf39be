"""Kernel identity, attacked: a host uid per sandbox, and the seccomp filter (issue #12).

The kernel keeps keyrings, inotify instances and other per-user limits per *host* uid. The
attacks: a tenant reads another organization's kernel keys, or exhausts a per-user limit
for every other sandbox; a tenant calls what no sandbox needs (add_key, bpf, io_uring,
personality flags, the 32-bit entry points); and the uid of a destroyed sandbox is handed
to the next one while something of the old one still lives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pulumi_leap0.runner import Runner, RunnerError, SandboxConfig, identity
from pulumi_leap0.runner.capabilities import probe
from pulumi_leap0.runner.cgroups import NoCgroups
from tests.backend.helpers import TEMPLATE, http, wait_for
from tests.fixtures.backend import BackendServer, running_backend
from tests.runner.conftest import Sandboxes, leftovers, new_id, require_capability
from tests.security import probes
from tests.security.legacy import SharedUids
from tests.support import REPO_ROOT, require

# --- Helpers ---------------------------------------------------------------------------------


def create(raw: httpx.Client) -> str:
    answer = raw.post("/v1/sandbox", json={"template_name": TEMPLATE, "timeout": 600})
    assert answer.status_code == 201, answer.text
    sandbox_id: str = answer.json()["id"]
    wait_for(lambda: raw.get(f"/v1/sandbox/{sandbox_id}").json()["state"] == "running",
             what="the sandbox to run")
    return sandbox_id


def run(raw: httpx.Client, sandbox_id: str, command: str, timeout: int = 30) -> str:
    answer = raw.post(f"/v1/sandbox/{sandbox_id}/process/execute",
                      json={"command": command, "timeout": timeout})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["exit_code"] == 0, body
    out: str = body["stdout"]
    return out


def put(raw: httpx.Client, sandbox_id: str, path: str, content: str) -> None:
    answer = raw.post(f"/v1/sandbox/{sandbox_id}/filesystem/write-file", params={"path": path},
                      content=content.encode())
    assert answer.status_code in (200, 201, 204), answer.text


@pytest.fixture
def two_orgs(backend: BackendServer) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    require(os.geteuid() == 0, "a host uid per sandbox needs a root runner")
    with http(backend, backend.new_api_key()) as a, http(backend, backend.new_api_key()) as b:
        made: list[tuple[httpx.Client, str]] = []
        yield a, b
        for raw in (a, b):
            for item in raw.get("/v1/sandboxes").json()["items"]:
                made.append((raw, item["id"]))
        for raw, sandbox_id in made:
            raw.delete(f"/v1/sandbox/{sandbox_id}/")


def process_uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system uid of ``pid``, from the host."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def host_uid(root_dir: Path, sandbox_id: str) -> int:
    """The host uid the sandbox's init runs as: what the kernel counts its processes under."""
    record = json.loads((root_dir / sandbox_id / "state.json").read_text())
    uids = process_uids(record["init_pid"])
    assert len(set(uids)) == 1 and uids[0] == record["host_uid"], (uids, record)
    return uids[0]


def runner_uid(runner: Runner, sandbox_id: str) -> int:
    return host_uid(runner.root_dir, sandbox_id)


# --- Keys and per-user limits, between organizations -----------------------------------------


def test_another_organizations_kernel_keys_are_out_of_reach(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    org_a, org_b = two_orgs
    a, b = create(org_a), create(org_b)
    put(org_a, a, "/tmp/keys.py", probes.KEYS)
    put(org_b, b, "/tmp/keys.py", probes.KEYS)
    added = json.loads(run(org_a, a, "python3 /tmp/keys.py add leap0-secret hunter2-of-a"))
    stolen = json.loads(run(org_b, b, "python3 /tmp/keys.py steal"))
    assert "hunter2-of-a" not in json.dumps(stolen), stolen
    assert "leap0-secret" not in stolen["proc_keys"], stolen
    # Not even its own: no sandbox has a use for the kernel keyring (seccomp).
    assert added["add_key"] == "Operation not permitted", added


def test_one_sandbox_exhausting_inotify_leaves_the_others_theirs(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    """fs.inotify.max_user_instances is per host uid, and seccomp does not touch inotify:
    this is the uid separation on its own."""
    org_a, org_b = two_orgs
    a, b = create(org_a), create(org_b)
    put(org_a, a, "/tmp/inotify.py", probes.INOTIFY)
    put(org_b, b, "/tmp/inotify.py", probes.INOTIFY)
    run(org_a, a, "nohup python3 /tmp/inotify.py hold >/dev/null 2>&1 &")

    def held() -> bool:
        out = org_a.post(f"/v1/sandbox/{a}/process/execute",
                         json={"command": "cat /tmp/held", "timeout": 10}).json()
        return bool(out["exit_code"] == 0 and out["stdout"])
    wait_for(held, what="sandbox A to take every inotify instance it can")
    count, reason = run(org_a, a, "cat /tmp/held").split(" ", 1)
    assert reason == "Too many open files" and int(count) > 0, (count, reason)
    assert run(org_b, b, "python3 /tmp/inotify.py one").strip() == "ok"


def test_two_live_sandboxes_run_as_different_host_uids(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    org_a, org_b = two_orgs
    a1, a2, b1 = create(org_a), create(org_a), create(org_b)
    uids = [host_uid(backend.data_dir / "sandboxes", s) for s in (a1, a2, b1)]
    # Also two sandboxes of one organization: every sandbox is hostile to every other.
    assert len(set(uids)) == 3, uids


# --- The seccomp filter ------------------------------------------------------------------------

# Each denied call with arguments that are harmless should the call ever run (they run on
# a host without the filter): NULL pointers, fd -1, names that do not exist, magic numbers
# that are wrong. Without the filter many of these answer something else than EPERM
# (success, EFAULT, EBADF, ENOSYS), which is what makes the test able to fail.
CLONE_NEWUTS, SIGCHLD = 0x04000000, 17
ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0x0040000, 0x0400000
DENIED_CALLS: dict[str, list[int | str]] = {
    "add_key": ["user", "leap0-probe", "x", 1, -4],
    "keyctl": [0, -4, 0],
    "request_key": ["user", "leap0-probe", 0, 0],
    "bpf": [0, 0, 0],
    "perf_event_open": [0, 0, -1, -1, 0],
    "kexec_load": [0, 0, 0, 0],
    "kexec_file_load": [-1, -1, 0, 0, 0],
    "init_module": [0, 0, ""],
    "finit_module": [-1, "", 0],
    "delete_module": ["leap0_none", 0],
    "clock_settime": [0, 0],
    "clock_adjtime": [0, 0],
    "settimeofday": [0, 0],
    "adjtimex": [0],
    "userfaultfd": [0],
    "mount": [0, 0, 0, 0, 0],
    "umount2": ["/leap0-none", 0],
    "pivot_root": [0, 0],
    "unshare": [0],
    "swapon": ["/leap0-none", 0],
    "swapoff": ["/leap0-none"],
    "reboot": [0, 0, 0, 0],
    "acct": [0],
    "quotactl": [0, 0, 0, 0],
    "quotactl_fd": [-1, 0, 0, 0],
    "open_by_handle_at": [-1, 0, 0],
    "name_to_handle_at": [-100, "/", 0, 0, 0],
    "lookup_dcookie": [0, 0, 0],
    "iopl": [0],
    "ioperm": [0, 0, 0],
    "io_uring_setup": [1, 0],
    "io_uring_enter": [-1, 0, 0, 0, 0, 0],
    "io_uring_register": [-1, 0, 0, 0],
    "syslog": [10, 0, 0],
    "vhangup": [],
    "fanotify_init": [0, 0],
    "fsopen": ["tmpfs", 0],
    "fsconfig": [-1, 0, 0, 0, 0],
    "fsmount": [-1, 0, 0],
    "fspick": [-1, "", 0],
    "move_mount": [-1, "", -1, "", 0],
    "open_tree": [-100, "/", 0],
    "mount_setattr": [-1, "", 0, 0, 0],
    "sysfs": [1, "ext4"],
    "ustat": [0, 0],
    "uselib": ["/leap0-none"],
    "_sysctl": [0],
    "nfsservctl": [0, 0, 0],
    "create_module": [0, 0],
    "get_kernel_syms": [0],
    "query_module": [0, 0, 0, 0, 0],
    "personality:ADDR_NO_RANDOMIZE": [ADDR_NO_RANDOMIZE],
    "personality:READ_IMPLIES_EXEC": [READ_IMPLIES_EXEC],
    "personality:PER_SVR4": [0x0001],
    "personality:all-but-query": [0xFFFFFFF7],
    "clone:CLONE_NEWUTS": [CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0],
}
# What stays allowed: the personalities programs use (and the query), clone3 answering
# ENOSYS so that glibc falls back to clone, whose flags the filter can see.
ALLOWED_CALLS: dict[str, tuple[list[int | str], int]] = {
    "personality:query": ([0xFFFFFFFF], 0),
    "personality:PER_LINUX": ([0x0], 0),
    "personality:PER_LINUX32": ([0x8], 0),
    "personality:UNAME26": ([0x20000], 0),
    "clone3": ([0, 0], 38),
}


NEEDS = """
import ctypes, os, threading
t = threading.Thread(target=print, args=("thread",))
t.start()
t.join()
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.ptrace(0, 0, 0, 0) == 0 else ctypes.get_errno())  # PTRACE_TRACEME
print("ptrace", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def syscall_table(calls: dict[str, list[int | str]]) -> str:
    import pyseccomp

    table = {}
    for label, args in calls.items():
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, label.split(":")[0])
        assert nr >= 0, label
        table[label] = [nr, *args]
    return json.dumps(table)


def test_every_denied_system_call_answers_eperm(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    org_a, _ = two_orgs
    a = create(org_a)
    put(org_a, a, "/tmp/calls.py", probes.SYSCALLS)
    put(org_a, a, "/tmp/table.json", syscall_table(DENIED_CALLS))
    answers = json.loads(run(org_a, a, "python3 /tmp/calls.py \"$(cat /tmp/table.json)\""))
    wrong = {name: os.strerror(e) if e else "allowed"
             for name, e in answers.items() if e != 1}
    assert wrong == {}, wrong
    assert set(answers) == {*DENIED_CALLS, "i386:getpid", "x32:getpid"}


def test_what_programs_need_stays_allowed(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    org_a, _ = two_orgs
    a = create(org_a)
    put(org_a, a, "/tmp/calls.py", probes.SYSCALLS)
    put(org_a, a, "/tmp/table.json",
        syscall_table({k: args for k, (args, _) in ALLOWED_CALLS.items()}))
    answers = json.loads(run(org_a, a, "python3 /tmp/calls.py \"$(cat /tmp/table.json)\""))
    assert {k: answers[k] for k in ALLOWED_CALLS} == {k: e for k, (_, e) in
                                                      ALLOWED_CALLS.items()}
    # Threads (glibc's pthread_create tries clone3 first), forks, a debugger's ptrace.
    put(org_a, a, "/tmp/needs.py", NEEDS)
    out = run(org_a, a, "python3 /tmp/needs.py && sh -c 'echo forked'")
    assert out.split() == ["thread", "ptrace", "0", "forked"]


def test_the_filter_holds_every_process_of_the_sandbox(
        backend: BackendServer, two_orgs: tuple[httpx.Client, httpx.Client]) -> None:
    """The init's tree (bubblewrap's --seccomp) and every exec (which nsenter starts from
    the host, so it inherits nothing from the init) are filtered."""
    org_a, _ = two_orgs
    a = create(org_a)
    from_exec = run(org_a, a, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    init_child = run(org_a, a, "pid=$(pgrep -o -P 1 -x sleep); "
                               "grep -E '^(Seccomp|NoNewPrivs):' /proc/1/status /proc/$pid/status")
    assert from_exec.split() == ["NoNewPrivs:", "1", "Seccomp:", "2"], from_exec
    assert [ln.split(":", 1)[1].split() for ln in init_child.splitlines()] == [
        ["NoNewPrivs:", "1"], ["Seccomp:", "2"]] * 2, init_child


# --- Allocation: distinct, never reused while something of the old one lives ------------------


def plant(uid: int) -> subprocess.Popen[bytes]:
    """A leftover process of ``uid``, as a crash or an escape would leave one behind."""
    return subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             "--", "sleep", "300"])


def test_a_destroyed_sandboxs_uid_is_not_given_while_a_process_of_it_lives(
        runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    old = runner_uid(runner, a)
    leftover = plant(old)
    try:
        runner.destroy(a)
        later = [runner_uid(runner, sandboxes.start()) for _ in range(3)]
        assert old not in later, (old, later)
    finally:
        leftover.kill()
        leftover.wait()


def test_the_chain_is_in_the_cgroups_with_no_groups_and_no_capabilities(
        runner: Runner, sandboxes: Sandboxes) -> None:
    """bubblewrap's monitor (the chain's own process, moved into the cgroups by the runner
    before it gets its options) and the init: the sandbox's uid alone, no supplementary
    group, no capability, in the sandbox's cgroup of every hierarchy."""
    require(os.geteuid() == 0, "a host uid per sandbox needs a root runner")
    require_capability(runner, "cpu", "memory", "pids")
    box = sandboxes.start()
    record = json.loads((runner.root_dir / box / "state.json").read_text())
    for pid in (record["outer_pid"], record["init_pid"]):
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines())
        assert status["Uid"].split() == [str(record["host_uid"])] * 4, status["Uid"]
        assert status["Gid"].split() == [str(record["host_gid"])] * 4, status["Gid"]
        assert status["Groups"].split() == [], status["Groups"]
        for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[caps], 16) == 0, (caps, status[caps])
        groups = [line.split(":", 2)[2] for line in
                  Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
        # The init's own view is of its cgroup namespace ("/"); the monitor's is the host's.
        if pid == record["outer_pid"]:
            mine = [g for g in groups if g.endswith(f"/leap0/{runner.scope}/{box}")]
            assert mine and len(mine) == len([g for g in groups if g != "/"]), groups


def test_concurrent_starts_get_distinct_uids(runner: Runner, sandboxes: Sandboxes) -> None:
    ids = [new_id() for _ in range(4)]
    sandboxes.ids.extend(ids)
    errors: list[BaseException] = []

    def start(sandbox_id: str) -> None:
        try:
            runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE))
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    uids = [runner_uid(runner, i) for i in ids]
    assert len(set(uids)) == len(ids), uids


def test_a_restart_keeps_each_sandboxs_uid() -> None:
    require(os.geteuid() == 0, "a host uid per sandbox needs a root runner")
    with running_backend() as server, http(server, server.new_api_key()) as raw:
        root = server.data_dir / "sandboxes"
        running, stopped = create(raw), create(raw)
        put(raw, stopped, "/tmp/mine", "written before the restart")
        before = {s: host_uid(root, s) for s in (running, stopped)}
        assert raw.post(f"/v1/sandbox/{stopped}/stop").status_code == 200

        server.restart()

        assert host_uid(root, running) == before[running]
        assert raw.post(f"/v1/sandbox/{stopped}/start").status_code in (200, 201)
        wait_for(lambda: raw.get(f"/v1/sandbox/{stopped}").json()["state"] == "running",
                 what="the stopped sandbox to run again")
        # Kept across stop and start, with the files it owns.
        assert host_uid(root, stopped) == before[stopped]
        out = run(raw, stopped, "cat /tmp/mine && echo && echo more >> /tmp/mine && echo ok")
        assert out.splitlines() == ["written before the restart", "ok"]
        newcomer = create(raw)
        assert host_uid(root, newcomer) not in before.values()


def test_destroy_leaves_no_process_of_the_uid(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.exec(a, "nohup sleep 600 >/dev/null 2>&1 & nohup sh -c 'sleep 600' >/dev/null 2>&1 &")
    uid = runner_uid(runner, a)
    runner.destroy(a)
    assert leftovers(runner, a) == []
    still = [p for p in os.listdir("/proc") if p.isdigit() and _has_uid(int(p), uid)]
    assert still == [], still


def _has_uid(pid: int, uid: int) -> bool:
    try:
        return uid in process_uids(pid)
    except OSError:
        return False



def test_a_uid_comes_back_only_once_nothing_of_it_lives(tmp_path: Path) -> None:
    """A pool of two uids goes round quickly: after it did, a uid a leftover process still
    holds is skipped, and with the other in use no uid is given at all."""
    first = 2_100_000_000  # outside the host-wide range, so no other runner's uids
    pool = identity.UidPool(tmp_path / "uids", first=first, count=2)
    runner = Runner(tmp_path / "sandboxes", uids=pool)
    require_capability(runner, "bubblewrap", "namespaces", "cpu")
    boxes = Sandboxes(runner)
    leftover = None
    try:
        a, b = boxes.start(), boxes.start()
        assert [runner_uid(runner, a), runner_uid(runner, b)] == [first, first + 1]
        leftover = plant(first)
        runner.destroy(a)
        with pytest.raises(RunnerError, match="no free host uid"):
            boxes.start()
        assert leftovers(runner, boxes.ids[-1]) == []
        runner.destroy(b)
        assert runner_uid(runner, boxes.start()) == first + 1
        leftover.kill()
        leftover.wait()
        leftover = None
        assert runner_uid(runner, boxes.start()) == first
    finally:
        if leftover is not None:
            leftover.kill()
            leftover.wait()
        boxes.cleanup()
    assert pool.owners() == {}


def _claim_many(directory: str, owner: str, n: int) -> list[int]:
    pool = identity.UidPool(Path(directory), first=2_100_000_000, count=1000)
    return [pool.claim(f"{owner}/{i}").uid for i in range(n)]


def test_processes_claiming_at_once_never_share_a_uid(tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(3) as workers:
        got = workers.starmap(_claim_many, [(str(tmp_path), f"p{k}", 40) for k in range(3)])
    claimed = [uid for uids in got for uid in uids]
    assert len(claimed) == len(set(claimed)) == 120


def test_state_recorded_under_the_shared_uid_recovers(tmp_path: Path) -> None:
    root = tmp_path / "sandboxes"
    old = Runner(root, uids=SharedUids(tmp_path / "unused"))
    require_capability(old, "bubblewrap", "namespaces", "cpu")
    a = new_id()
    shared = identity.SANDBOX_HOST_UID_BASE + 1000
    old.start(SandboxConfig(id=a, template=TEMPLATE))
    try:
        old.exec(a, "echo kept > ~/f && mkdir ~/d && echo too > ~/d/g && ln -s /etc ~/link")
        assert runner_uid(old, a) == shared
        del old  # the backend is upgraded

        new = Runner(root)
        assert new.recover([a]) == {a}
        assert runner_uid(new, a) == shared  # running processes keep the uid they have
        assert new.exec(a, "cat ~/f").stdout == "kept\n"
        new.stop(a)
        new.start(SandboxConfig(id=a, template=TEMPLATE))
        moved = runner_uid(new, a)
        assert identity.HOST_UID_FIRST <= moved < identity.HOST_UID_FIRST + identity.HOST_UID_COUNT
        out = new.exec(a, "cat ~/f ~/d/g && echo more >> ~/d/g && rm ~/f && readlink ~/link")
        assert out.exit_code == 0 and out.stdout.split() == ["kept", "too", "/etc"], out
        layer = new.runtime_dir / a / "layer"
        owned = {os.lstat(os.path.join(top, n)).st_uid
                 for top, dirs, files in os.walk(layer) for n in dirs + files}
        assert shared not in owned, owned
        assert os.stat("/etc").st_uid == 0  # the symlink was not followed
    finally:
        Runner(root).destroy(a)


def test_the_report_says_both_are_in_force(runner: Runner, tmp_path: Path) -> None:
    caps = runner.capabilities()
    assert caps.seccomp and caps.host_uid_per_sandbox, caps.missing
    doctor = subprocess.run(
        [sys.executable, "-m", "pulumi_leap0.backend.cli", "doctor", "--data-dir",
         str(tmp_path)], capture_output=True, text=True, timeout=60, check=True,
        cwd=REPO_ROOT)
    report = json.loads(doctor.stdout[doctor.stdout.index("{"):])
    assert report["seccomp"] is True and report["host_uid_per_sandbox"] is True, report
    # Where the filter cannot be built, the report says so instead.
    without = probe(NoCgroups(), "probe", own_uids=True, seccomp_program=None)
    assert not without.seccomp
    assert any(m.startswith("no seccomp filter") for m in without.missing)
