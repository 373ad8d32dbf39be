"""The launch chain: how a sandbox's first process comes to be.

One short chain of programs, started from a clean environment (``sysutil.HOST_ENV``), each
link doing one thing and then becoming the next (``exec``), so bubblewrap is the very
process the runner put into the cgroups and everything it starts, the sandbox's init
first, is born inside them:

1. ``nsenter --net=<netns> --setuid --setgid --`` joins the sandbox's network namespace and
   drops to the sandbox's host uid, with no supplementary groups (``enter_netns``; without
   a named netns, ``setpriv --reuid --regid --clear-groups --``, ``drop_to``);
2. ``bwrap --args <fd> -- /bin/sh -c INIT`` makes the user, PID, mount, IPC, UTS and cgroup
   namespaces and the read-only root (``bwrap``). Its options come on a pipe (``--args``),
   so host paths do not show up in the sandbox's ``ps``, and name host paths by open fds
   (``HostFds``). ``bwrap_options`` builds them.

The cgroups: ``spawn`` writes the chain's pid into the sandbox's ``cgroup.procs`` files
while that process waits for its options, and only then sends them. bubblewrap reads them
before it makes any namespace or process, so it is in the limits before the sandbox's
first process exists (``join``), and a chain that could not join never gets its options
and is killed. One process start (and two ``execve``) instead of four: this is on every
sandbox's start path. What stays costly is the move itself: the first write to a
``cgroup.procs`` waits for an RCU grace period (the kernel's ``cgroup_threadgroup_rwsem``,
6-15 ms on our 2-core VMs; the others then take microseconds). The runner avoids it by
keeping a hierarchy mounted with ``favordynmods`` (``cgroupmoves.py``); where the kernel
refuses that, the move overlaps the chain's ``execve``s (``CLONE_INTO_CGROUP`` would be
the way on v2).

Every link is a function that returns its argv, so the chain can be read and tested without
root; ``init_argv`` joins them and ``spawn`` runs the result. The exec path (``exec.py``)
joins with ``join_cgroups``, a shell link, since its chain has no pipe to wait on. The
seccomp filter (``seccomp.py``) is one more bubblewrap option, ``--seccomp <fd>``:
bubblewrap installs it right before it executes the init.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.identity import ETC_FILES, HostIdentity
from pulumi_leap0.runner.layer import STAGING_SANDBOX, exists_in
from pulumi_leap0.runner.network import NetworkHandle
from pulumi_leap0.runner.templates import HIDDEN_DIRS, HIDDEN_FILES, Template

START_TIMEOUT_S = 15.0
# Join every cgroup given before "--", then become the rest of the command line. The shell's
# own message would name the host path of the cgroup, and an exec's stderr is the tenant's.
JOIN = ('while [ "$#" -gt 0 ] && [ "$1" != -- ]; do { echo $$ > "$1"; } 2>/dev/null || '
        '{ echo "leap0: could not join the sandbox\'s cgroup" >&2; exit 121; }; shift; done; '
        'shift; exec "$@"')
# The sandbox's pid 1 (bwrap --as-pid-1): a shell, because a namespace's init ignores every
# signal from inside that it has no handler for, so the sandbox user cannot kill it (with
# bwrap's own reaper as pid 1, ``kill -9 -1`` inside would end the sandbox), and because
# dash's ``wait`` reaps any child, including orphans re-parented to it.
INIT = ("echo ready; exec </dev/null >/dev/null 2>&1; "
        "while :; do sleep 86400 & wait; done")


# --- The links ------------------------------------------------------------------------------


def join_cgroups(procs_files: Sequence[Path]) -> list[str]:
    return ["/bin/sh", "-c", JOIN, "leap0-join", *(str(p) for p in procs_files), "--"]


def enter_netns(netns_path: Path, identity: HostIdentity) -> list[str]:
    drop = ([f"--setuid={identity.uid}", f"--setgid={identity.gid}"] if identity.dedicated
            else [])
    return ["nsenter", f"--net={netns_path}", *drop, "--"]


def drop_to(identity: HostIdentity) -> list[str]:
    return ["setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups",
            "--"]


def bwrap(args_fd: int) -> list[str]:
    # Options from the pipe; the command must follow on the real command line.
    return ["bwrap", "--args", str(args_fd), "--", "/bin/sh", "-c", INIT]


def init_argv(*, netns_path: Path | None, identity: HostIdentity, args_fd: int) -> list[str]:
    """The whole chain. Without a named netns bubblewrap unshares the network itself;
    without root there is no uid to drop to."""
    if netns_path is not None:
        return enter_netns(netns_path, identity) + bwrap(args_fd)
    if identity.dedicated:
        return drop_to(identity) + bwrap(args_fd)
    return bwrap(args_fd)


def join(pid: int, procs_files: Sequence[Path]) -> None:
    """Put process ``pid`` (and so all it will start) into every cgroup of ``procs_files``."""
    for procs in procs_files:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)


# --- bubblewrap's options -------------------------------------------------------------------


class HostFds:
    """Host paths handed to bubblewrap as open ``O_PATH`` fds (``--bind-fd``): bubblewrap runs
    as the unprivileged sandbox uid, which need not be able to traverse the runner's
    directories (or a template's). Closed on exit, once bubblewrap has them."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def __call__(self, path: Path) -> str:
        self.fds.append(os.open(path, sysutil.O_PATH | os.O_CLOEXEC))
        return str(self.fds[-1])

    def data(self, name: str, content: bytes) -> str:
        """``content`` as a file bubblewrap reads from the start (``--seccomp``)."""
        self.fds.append(os.memfd_create(name, os.MFD_CLOEXEC))
        os.write(self.fds[-1], content)
        os.lseek(self.fds[-1], 0, os.SEEK_SET)
        return str(self.fds[-1])

    def __enter__(self) -> HostFds:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def bwrap_options(*, sandbox_id: str, template: Template, etc_dir: Path, layer: Path,
                  staging: Path | None, env: Mapping[str, str], network: NetworkHandle | None,
                  runner_dir: Path, fd: HostFds, seccomp: bytes | None = None,
                  root: Path | None = None) -> list[str]:
    """Namespaces, then the root: an empty read-only tmpfs with the template's allowed top
    entries bound read-only, the layer's parts bound writable, generated identity files
    over the template's, secrets covered, the runner's own state (``runner_dir``) hidden
    whatever the template binds, exactly ``env``, and the ``seccomp`` BPF program.
    A container image's sandbox gets its overlay ``root`` as ``/`` instead (``image_root``).
    """
    a = ["--unshare-user", "--uid", str(template.uid), "--gid", str(template.group),
         "--disable-userns", "--as-pid-1",
         "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--new-session", "--hostname", sandbox_id]
    if network is None:
        a.append("--unshare-net")
    if template.image:
        if root is None:
            raise RunnerError("a container image's sandbox needs its root")
        a += image_root(template=template, root=root, etc_dir=etc_dir, layer=layer,
                        staging=staging, network=network, fd=fd)
        return _finish(a, template, env, fd, seccomp, remount_root=False)
    rootfs = template.rootfs
    for entry in template.root_entries:
        src = rootfs / entry
        if src.is_symlink():
            a += ["--symlink", os.readlink(src), f"/{entry}"]
        elif src.is_dir():
            a += ["--ro-bind-fd", fd(src), f"/{entry}"]
    # /dev read-only before the layer's shm goes on it: bubblewrap's /dev is a tmpfs of its
    # own, which the sandbox could otherwise fill past its disk limit. The device nodes on
    # it stay usable: a read-only mount refuses writes to files, not to devices.
    a += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
          "--bind-fd", fd(layer / "shm"), "/dev/shm",
          "--bind-fd", fd(layer / "tmp"), "/tmp",
          "--dir", "/var", "--bind-fd", fd(layer / "vartmp"), "/var/tmp",
          "--symlink", "../run", "/var/run",
          "--dir", "/run", "--dir", "/home", "--dir", "/root",
          "--bind-fd", fd(layer / "home"), template.home]
    if (rootfs / "etc").is_dir():
        for name in ETC_FILES:
            a += ["--ro-bind-fd", fd(etc_dir / name), f"/etc/{name}"]
        for hidden in HIDDEN_FILES:
            if (rootfs / hidden.lstrip("/")).is_file():
                a += ["--ro-bind", "/dev/null", hidden]
        for hidden in HIDDEN_DIRS:
            if (rootfs / hidden.lstrip("/")).is_dir():
                a += ["--tmpfs", hidden, "--remount-ro", hidden]
    for entry in template.root_entries:
        with contextlib.suppress(ValueError):
            inner = runner_dir.relative_to((rootfs / entry).resolve())
            a += ["--tmpfs", f"/{entry}/{inner}"]
    if staging is not None:
        a += ["--bind-fd", fd(staging), STAGING_SANDBOX]
    if network is not None:
        for host_path, inside in network.extra_ro_binds:
            # Inside the template's read-only tree a bind can only cover a file that is
            # there; elsewhere (/run) bubblewrap makes the mount point.
            in_template = inside.strip("/").split("/")[0] in template.root_entries
            if not in_template or (rootfs / inside.lstrip("/")).is_file():
                a += ["--ro-bind-fd", fd(host_path), inside]
    if template.workdir != template.home:
        a += ["--dir", template.workdir]
    return _finish(a, template, env, fd, seccomp, remount_root=True)


def image_root(*, template: Template, root: Path, etc_dir: Path, layer: Path,
               staging: Path | None, network: NetworkHandle | None, fd: HostFds) -> list[str]:
    """The image's overlay (``layer.make_root``, its mount points made there) bound as
    ``/``, writable; then the kernel file systems, the layer's scratch directories and the
    generated host name files over it. The image's own /etc/passwd stays: its users are
    the image's, not the host's, and its user's home and working directory are in the
    overlay (``make_root`` gave them to the user)."""
    a = ["--bind-fd", fd(root), "/", "--proc", "/proc", "--dev", "/dev",
         "--bind-fd", fd(layer / "shm"), "/dev/shm",
         "--bind-fd", fd(layer / "tmp"), "/tmp",
         "--bind-fd", fd(layer / "vartmp"), "/var/tmp"]
    for name in IMAGE_ETC_FILES:
        a += ["--ro-bind-fd", fd(etc_dir / name), f"/etc/{name}"]
    if staging is not None:
        a += ["--bind-fd", fd(staging), STAGING_SANDBOX]
    if network is not None:
        for host_path, inside in network.extra_ro_binds:
            # Over a file of the image's only (resolved inside its root, not the host's).
            if inside.startswith("/run/leap0/") or exists_in(root, inside):
                a += ["--ro-bind-fd", fd(host_path), inside]
    return a


#: Of the generated identity files, what an image's sandbox gets (see ``image_root``).
IMAGE_ETC_FILES = ("hostname", "hosts")


def _finish(a: list[str], template: Template, env: Mapping[str, str], fd: HostFds,
            seccomp: bytes | None, *, remount_root: bool) -> list[str]:
    if remount_root:
        a += ["--remount-ro", "/"]
    a += ["--chdir", template.workdir, "--clearenv"]
    if seccomp is not None:
        a += ["--seccomp", fd.data("leap0-seccomp", seccomp)]
    for key, value in env.items():
        a += ["--setenv", key, value]
    return a


def encode_args(options: Sequence[str]) -> bytes:
    """bubblewrap's ``--args`` format: NUL-terminated strings."""
    return b"".join(x.encode() + b"\0" for x in options)


# --- Running the chain ----------------------------------------------------------------------


class Booting:
    """A started chain, until its init says it is ready (``wait``)."""

    def __init__(self, proc: subprocess.Popen[bytes], info_r: int, ready_r: int,
                 log_path: Path) -> None:
        self.proc = proc
        self._info_r, self._ready_r, self._log_path = info_r, ready_r, log_path

    def wait(self) -> tuple[int, int]:
        """The init's pid and start time, once bubblewrap reported it and it printed ready."""
        try:
            info = self._read_until(self._info_r, b"}", "bubblewrap did not report its child")
            self._read_until(self._ready_r, b"\n", "the sandbox did not become ready")
        finally:
            os.close(self._info_r)
            os.close(self._ready_r)
        pid = int(json.loads(info.decode())["child-pid"])
        start = sysutil.process_start_time(pid)
        if start is None:
            raise RunnerError("the sandbox init exited right after starting")
        return pid, start

    def _read_until(self, fd: int, end: bytes, what: str) -> bytes:
        data = b""
        deadline = time.monotonic() + START_TIMEOUT_S
        while end not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunnerError(f"{what} within {START_TIMEOUT_S:.0f}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RunnerError(f"{what}: {self._error()}")
                data += chunk
        return data

    def _error(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)
        with contextlib.suppress(OSError):
            text = self._log_path.read_text(errors="replace")
            # bwrap says what is wrong on a "bwrap: ..." line (then, maybe, its usage).
            lines = [ln for ln in text.strip().splitlines() if ln.startswith("bwrap:")]
            if lines:
                return lines[-1][:500]
        return f"exit status {self.proc.returncode}"


def spawn(options: Sequence[str], *, state_dir: Path, cgroup_procs: Sequence[Path],
          netns_path: Path | None, identity: HostIdentity, fds: HostFds) -> Booting:
    """Start the chain in a session of its own, so it does not die with the backend (no
    ``--die-with-parent`` for the init, on purpose). It stays a direct child of this process
    rather than being double-forked: on hosts whose pid 1 does not reap orphans (like our CI
    VMs) a double-forked sandbox would leave a zombie behind on every destroy.

    bubblewrap gets its options only once the chain is in the cgroups (module docstring)."""
    info_r, info_w = os.pipe()
    ready_r, ready_w = os.pipe()
    args_r, args_w = os.pipe()
    try:
        argv = init_argv(netns_path=netns_path, identity=identity, args_fd=args_r)
        log_path = state_dir / "init.log"
        with open(log_path, "ab") as errlog:
            proc = subprocess.Popen(
                argv, env=sysutil.HOST_ENV, stdin=subprocess.DEVNULL, stdout=ready_w, stderr=errlog,
                pass_fds=(info_w, args_r, *fds.fds), start_new_session=True, cwd="/",
            )
        os.close(args_r)
        args_r = -1
        try:
            join(proc.pid, cgroup_procs)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise RunnerError("could not join the sandbox's cgroup") from exc
        # A chain that died before reading them says why in its log (``Booting.wait``).
        with contextlib.suppress(BrokenPipeError), os.fdopen(args_w, "wb") as pipe:
            args_w = -1
            pipe.write(encode_args([*options, "--info-fd", str(info_w)]))
    except BaseException:
        os.close(info_r)
        os.close(ready_r)
        raise
    finally:
        for fd in (info_w, ready_w, args_r, args_w):
            if fd >= 0:
                os.close(fd)
    return Booting(proc, info_r, ready_r, log_path)
