"""The runner: real, isolated, resource-limited sandboxes on Linux.

How a sandbox is made (``start``), and why:

1. ``<root_dir>/<id>/state.json`` says how to find the sandbox again after the backend
   restarts (0600: it holds env values). What bubblewrap binds into the sandbox lives in
   ``/run/leap0/<scope>/<id>/`` instead: bubblewrap runs as the unprivileged sandbox uid and
   resolves bind sources by path, so they must sit below world-traversable directories,
   which ``root_dir`` need not be (``/root/...``, pytest's 0700 tmp). There: generated
   ``/etc/passwd``-like files, ``mnt/`` for object-storage mounts, and ``layer/``, a
   size-limited tmpfs that is the sandbox's only writable storage (``/home/<user>``,
   ``/tmp``, ``/var/tmp``, ``/dev/shm``). ``stop`` keeps it, ``destroy`` removes it.
2. A cgroup ``leap0/<scope>/<id>`` with the CPU quota, memory limit (no swap) and pids
   limit, and a network namespace from ``network.setup``.
3. One process chain, started from a clean environment: ``sh`` writes its own pid into the
   cgroup (so every later process, including user code, is inside the limits from its first
   instruction), ``nsenter --net`` joins the namespace, ``setpriv`` drops to the sandbox's
   host uid, and ``bwrap`` (reading its arguments from a file, so host paths do not show up
   in the sandbox's ``ps``) makes the user, PID, mount, IPC, UTS and cgroup namespaces and
   a read-only root. Its payload reports readiness and then sleeps forever: the sandbox's
   "init", which ``exec`` and the file helpers target.
4. The chain runs in its own session, so it does not die with the backend (no
   ``--die-with-parent`` for the init, on purpose) and a restarted backend finds it through
   ``state.json``. It stays a direct child of the runner rather than being double-forked,
   because on hosts whose pid 1 does not reap orphans (like our CI VMs) a double-forked
   sandbox would leave a zombie behind on every destroy; a runner process that goes away
   leaves its sandboxes to pid 1 all the same.

Inside, the sandbox user is ``template.uid`` in its own user namespace, mapped to a
dedicated unprivileged host uid (``SANDBOX_HOST_UID_BASE + uid``) with no capabilities and
no way to create further user namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi_leap0.runner import files, mounts, network, sysutil
from pulumi_leap0.runner.capabilities import Capabilities, probe
from pulumi_leap0.runner.cgroups import Cgroups, Limits
from pulumi_leap0.runner.errors import (
    RunnerError,
    SandboxFrozenError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from pulumi_leap0.runner.templates import Template, TemplateRegistry
from pulumi_leap0.runner.types import (
    ExecResult,
    FileInfo,
    MountConfig,
    SandboxConfig,
    SandboxStats,
)

log = logging.getLogger("leap0.runner")

SANDBOX_HOST_UID_BASE = 2_000_000_000
START_TIMEOUT_S = 15.0
DEFAULT_EXEC_TIMEOUT_S = 30.0
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
EXIT_TIMED_OUT = 124
# How long exec keeps reading output after the command exited, for data still in flight
# from background processes that inherited stdout; they do not hold the call open longer.
OUTPUT_GRACE_S = 0.05
STAGING_SANDBOX = "/run/leap0/mounts"
RUNTIME_BASE = Path("/run/leap0")
SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[^=\x00-][^=\x00]*$")
_HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
# Join every cgroup given before "--", then become the rest of the command line.
_JOIN = ('while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo $$ > "$1" || exit 121; shift; done; '
         'shift; exec "$@"')
# The sandbox's pid 1 (bwrap --as-pid-1): a shell, because a namespace's init ignores every
# signal from inside that it has no handler for, so the sandbox user cannot kill it (with
# bwrap's own reaper as pid 1, ``kill -9 -1`` inside would end the sandbox), and because
# dash's ``wait`` reaps any child, including orphans re-parented to it.
_INIT = ("echo ready; exec </dev/null >/dev/null 2>&1; "
         "while :; do sleep 86400 & wait; done")


def short_hash(text: str, length: int = 8) -> str:
    """A stable short name for ``text``; interface names (15 bytes) need it later."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class _Box:
    """What the runner remembers about one sandbox (persisted as ``state.json``)."""

    id: str
    template: str
    user: str
    uid: int
    host_uid: int
    host_gid: int
    workdir: str
    env: dict[str, str]
    init_pid: int = 0
    init_start: int = 0
    outer_pid: int = 0
    netns: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Runner:
    """Sandboxes on this host, with all host-side state under ``root_dir``.

    Thread-safe: lifecycle calls on one sandbox are serialized, calls on different
    sandboxes and concurrent ``exec``/file calls run in parallel.
    """

    def __init__(self, root_dir: Path, *, egress: network.EgressSettings | None = None) -> None:
        self.root_dir = Path(root_dir).absolute()
        self.egress = egress or network.EgressSettings()
        # Traversable, not listable: bubblewrap runs as the unprivileged sandbox uid and
        # must reach the bind sources below; state.json (it holds env values) stays 0600.
        self.root_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(self.root_dir, 0o711)
        self.scope = short_hash(str(self.root_dir))
        privileged = os.geteuid() == 0
        self.runtime_dir = RUNTIME_BASE / self.scope if privileged else self.root_dir
        if privileged:
            for d in (RUNTIME_BASE, self.runtime_dir):
                d.mkdir(mode=0o711, exist_ok=True)
                os.chmod(d, 0o711)
        self.templates = TemplateRegistry()
        self._privileged = os.geteuid() == 0
        self._cgroups = self._usable_cgroups()
        self._netns = self._privileged and shutil.which("ip", path=_HOST_ENV["PATH"]) is not None
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._boxes: dict[str, _Box] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._caps: Capabilities | None = None

    # --- Setup ----------------------------------------------------------------------------

    def _usable_cgroups(self) -> Cgroups | None:
        if not self._privileged:
            return None
        cg = Cgroups.detect()
        if cg is None:
            return None
        try:
            cg.create(self._cg_scope())
        except OSError:
            log.warning("cgroups present but not writable: sandboxes run without limits")
            return None
        return cg

    def _cg_scope(self) -> str:
        return f"leap0/{self.scope}"

    def _cg(self, sandbox_id: str) -> str:
        return f"{self._cg_scope()}/{sandbox_id}"

    def _dir(self, sandbox_id: str) -> Path:
        return self.root_dir / sandbox_id

    def _rt(self, sandbox_id: str) -> Path:
        return self.runtime_dir / sandbox_id

    def _id_lock(self, sandbox_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(sandbox_id, threading.Lock())

    @staticmethod
    def _check_id(sandbox_id: str) -> None:
        # The id becomes a path, a cgroup name, a netns name and the hostname (<= 64).
        if not SANDBOX_ID.match(sandbox_id):
            raise RunnerError("sandbox ids are 1-63 letters, digits, '.', '_' or '-'")

    # --- Queries --------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self._caps = probe(self._cgroups, self.scope)
        return self._caps

    def disk_mib(self, template_name: str) -> int:
        template = self.templates.get(template_name)
        if template is None:
            raise RunnerError("unknown template")
        return template.disk_mib

    def _load(self, sandbox_id: str) -> _Box | None:
        with self._lock:
            box = self._boxes.get(sandbox_id)
        if box is not None:
            return box
        try:
            raw = json.loads((self._dir(sandbox_id) / "state.json").read_text())
            box = _Box(**raw)
        except (OSError, ValueError, TypeError):
            return None
        with self._lock:
            self._boxes[sandbox_id] = box
        return box

    def _save(self, box: _Box) -> None:
        path = self._dir(box.id) / "state.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(box.to_json()))
        os.replace(tmp, path)
        with self._lock:
            self._boxes[box.id] = box

    def _running(self, box: _Box) -> bool:
        return box.init_pid > 0 and sysutil.process_start_time(box.init_pid) == box.init_start

    def is_alive(self, sandbox_id: str) -> bool:
        if not SANDBOX_ID.match(sandbox_id):
            return False
        box = self._load(sandbox_id)
        return box is not None and self._running(box)

    def _require(self, sandbox_id: str) -> _Box:
        self._check_id(sandbox_id)
        box = self._load(sandbox_id)
        if box is None:
            raise SandboxNotFoundError("no such sandbox")
        if not self._running(box):
            raise SandboxNotRunningError("the sandbox is not running")
        return box

    def stats(self, sandbox_id: str) -> SandboxStats:
        self._check_id(sandbox_id)
        if self._cgroups is None or not self._cgroups.exists(self._cg(sandbox_id)):
            return SandboxStats(0, 0, 0)
        rel = self._cg(sandbox_id)
        return SandboxStats(
            cpu_usage_ns=self._cgroups.cpu_usage_ns(rel),
            memory_bytes=self._cgroups.memory_bytes(rel),
            pids=self._cgroups.pids_current(rel),
        )

    def list_sandboxes(self) -> list[str]:
        """Ids with host-side state (running or stopped)."""
        found: set[str] = set()
        for d in {self.root_dir, self.runtime_dir}:
            with contextlib.suppress(OSError):
                found.update(e.name for e in os.scandir(d)
                             if e.is_dir(follow_symlinks=False) and SANDBOX_ID.match(e.name))
        return sorted(found)

    # --- Start ----------------------------------------------------------------------------

    def start(self, config: SandboxConfig) -> None:
        """Boot a sandbox (again, after ``stop``: its writable layer is kept).

        On any failure everything this call made is removed before ``RunnerError`` is
        raised; a writable layer that existed before the call is kept.
        """
        self._check_id(config.id)
        template = self.templates.get(config.template)
        if template is None:
            raise RunnerError("unknown template")
        for name, value in config.env.items():
            if not _ENV_NAME.match(name) or "\x00" in value:
                raise RunnerError("environment variable names must not be empty or contain "
                                  "'=' or NUL, nor start with '-'")
        with self._id_lock(config.id):
            existing = self._load(config.id)
            if existing is not None and self._running(existing):
                raise RunnerError("the sandbox is already running")
            state = self._dir(config.id)
            layer_existed = (self._rt(config.id) / "layer").is_dir()
            try:
                self._start_locked(config, template, state)
            except BaseException as exc:
                self._teardown(config.id, keep_layer=layer_existed)
                if not layer_existed:
                    self._remove_state(config.id)
                if isinstance(exc, RunnerError):
                    raise
                if isinstance(exc, (OSError, subprocess.SubprocessError, ValueError)):
                    raise RunnerError(f"could not start the sandbox: {exc}") from exc
                raise

    def _start_locked(self, config: SandboxConfig, template: Template, state: Path) -> None:
        host_uid = SANDBOX_HOST_UID_BASE + template.uid if self._privileged else os.geteuid()
        host_gid = SANDBOX_HOST_UID_BASE + template.uid if self._privileged else os.getegid()
        state.mkdir(mode=0o711, exist_ok=True)
        os.chmod(state, 0o711)
        rt = self._rt(config.id)
        rt.mkdir(mode=0o711, exist_ok=True)
        layer = self._make_layer(rt, config.disk_mib or template.disk_mib, template,
                                 host_uid, host_gid)
        self._write_identity(rt, config.id, template)
        staging = self._make_staging(rt)

        rel = self._cg(config.id)
        if self._cgroups is not None:
            self._cgroups.remove(rel)  # leftovers of a crashed earlier run
            self._cgroups.create(rel, Limits(vcpu=config.vcpu, memory_mib=config.memory_mib))
        handle: network.NetworkHandle | None = None
        if self._netns:
            handle = network.setup(config.id, config.network_policy, state, scope=self.scope,
                                   egress=self.egress, bind_dir=rt,
                                   cgroup=self._filter_cgroup(config.id, config.network_policy))

        env = template.base_env()
        env.update(config.env)
        if handle is not None:
            env.update(handle.extra_env)
        box = _Box(id=config.id, template=template.name, user=template.user, uid=template.uid,
                   host_uid=host_uid, host_gid=host_gid, workdir=template.workdir, env=env,
                   netns=handle.netns_name if handle else None)
        fds: list[int] = []
        try:
            args = self._bwrap_args(config.id, template, rt, layer, staging, env, handle, fds)
            self._spawn_init(box, state, args, handle, fds)
        finally:
            for f in fds:
                os.close(f)
        self._save(box)
        for mount in config.mounts:
            mounts.attach(self._handle(box), mount)

    def _make_layer(self, state: Path, disk_mib: int, template: Template, uid: int,
                    gid: int) -> Path:
        layer = state / "layer"
        fresh = not layer.is_dir()
        layer.mkdir(mode=0o711, exist_ok=True)
        if self._privileged and not sysutil.is_mountpoint(layer):
            # tmpfs pages are charged to the memory cgroup of whoever writes them, so the
            # sandbox pays for its own disk; size= is the disk limit.
            sysutil.mount("leap0-layer", layer, "tmpfs", sysutil.MS_NOSUID | sysutil.MS_NODEV,
                          f"size={disk_mib}m,mode=0711")
            fresh = True
        if fresh:
            for sub, mode in (("home", 0o750), ("tmp", 0o1777), ("vartmp", 0o1777),
                              ("shm", 0o1777)):
                path = layer / sub
                path.mkdir(exist_ok=True)
                os.chmod(path, mode)
                os.chown(path, uid, gid)
        del template
        return layer

    def _write_identity(self, state: Path, sandbox_id: str, template: Template) -> None:
        etc = state / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        u, name, home = template.uid, template.user, template.home
        (etc / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\n"
            f"{name}:x:{u}:{u}:{name}:{home}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        (etc / "group").write_text(f"root:x:0:\n{name}:x:{u}:\nnogroup:x:65534:\n")
        (etc / "hostname").write_text(f"{sandbox_id}\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost {sandbox_id}\n::1\tlocalhost\n")
        for f in etc.iterdir():
            os.chmod(f, 0o644)

    def _make_staging(self, state: Path) -> Path | None:
        """A shared mount whose sub-mounts propagate into the sandbox (for ``mounts``)."""
        staging = state / "mnt"
        staging.mkdir(mode=0o755, exist_ok=True)
        if not self._privileged:
            return None
        if not sysutil.is_mountpoint(staging):
            sysutil.mount(str(staging), staging, None, sysutil.MS_BIND)
            sysutil.mount("none", staging, None, sysutil.MS_SHARED)
        return staging

    def _bwrap_args(self, sandbox_id: str, template: Template, state: Path, layer: Path,
                    staging: Path | None, env: Mapping[str, str],
                    handle: network.NetworkHandle | None, fds: list[int]) -> list[str]:
        """bubblewrap's options. Host paths are handed over as open fds (appended to
        ``fds``): bubblewrap runs as the unprivileged sandbox uid, which need not be able
        to traverse the runner's directories (or a template's)."""

        def fd(path: Path) -> str:
            fds.append(os.open(path, sysutil.O_PATH | os.O_CLOEXEC))
            return str(fds[-1])

        uid = str(template.uid)
        a = ["--unshare-user", "--uid", uid, "--gid", uid, "--disable-userns", "--as-pid-1",
             "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--new-session", "--hostname", sandbox_id]
        if handle is None:
            a.append("--unshare-net")
        rootfs = template.rootfs
        for entry in template.root_entries:
            src = rootfs / entry
            if src.is_symlink():
                a += ["--symlink", os.readlink(src), f"/{entry}"]
            elif src.is_dir():
                a += ["--ro-bind-fd", fd(src), f"/{entry}"]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--bind-fd", fd(layer / "shm"), "/dev/shm",
              "--bind-fd", fd(layer / "tmp"), "/tmp",
              "--dir", "/var", "--bind-fd", fd(layer / "vartmp"), "/var/tmp",
              "--symlink", "../run", "/var/run",
              "--dir", "/run", "--dir", "/home", "--dir", "/root",
              "--bind-fd", fd(layer / "home"), template.home]
        if (rootfs / "etc").is_dir():
            for name in ("passwd", "group", "hostname", "hosts"):
                a += ["--ro-bind-fd", fd(state / "etc" / name), f"/etc/{name}"]
            from pulumi_leap0.runner.templates import HIDDEN_DIRS, HIDDEN_FILES

            for hidden in HIDDEN_FILES:
                if (rootfs / hidden.lstrip("/")).is_file():
                    a += ["--ro-bind", "/dev/null", hidden]
            for hidden in HIDDEN_DIRS:
                if (rootfs / hidden.lstrip("/")).is_dir():
                    a += ["--tmpfs", hidden, "--remount-ro", hidden]
        # The runner's own state must not be reachable, whatever the template binds.
        for entry in template.root_entries:
            top = rootfs / entry
            with contextlib.suppress(ValueError):
                inner = self.root_dir.relative_to(top.resolve())
                a += ["--tmpfs", f"/{entry}/{inner}"]
        if staging is not None:
            a += ["--bind-fd", fd(staging), STAGING_SANDBOX]
        if handle is not None:
            for host_path, inside in handle.extra_ro_binds:
                # Inside the template's read-only tree a bind can only cover a file that is
                # there; elsewhere (/run) bubblewrap makes the mount point.
                in_template = inside.strip("/").split("/")[0] in template.root_entries
                if not in_template or (rootfs / inside.lstrip("/")).is_file():
                    a += ["--ro-bind-fd", fd(host_path), inside]
        if template.workdir != template.home:
            a += ["--dir", template.workdir]
        a += ["--remount-ro", "/", "--chdir", template.workdir, "--clearenv"]
        for key, value in env.items():
            a += ["--setenv", key, value]
        return a

    def _spawn_init(self, box: _Box, state: Path, args: list[str],
                    handle: network.NetworkHandle | None, fds: Sequence[int]) -> None:
        info_r, info_w = os.pipe()
        ready_r, ready_w = os.pipe()
        args_path = state / "bwrap.args"
        args_fd = -1
        try:
            args = [*args, "--info-fd", str(info_w)]
            fd = os.open(args_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"".join(x.encode() + b"\0" for x in args))
            args_fd = os.open(args_path, os.O_RDONLY)
            argv = ["/bin/sh", "-c", _JOIN, "leap0-join"]
            if self._cgroups is not None:
                argv += [str(p) for p in self._cgroups.procs_files(self._cg(box.id))]
            argv.append("--")
            if handle is not None:
                argv += ["nsenter", f"--net={handle.netns_path}", "--"]
            if self._privileged:
                argv += ["setpriv", f"--reuid={box.host_uid}", f"--regid={box.host_gid}",
                         "--clear-groups", "--"]
            # Options from the file; the command must follow on the real command line.
            argv += ["bwrap", "--args", str(args_fd), "--", "/bin/sh", "-c", _INIT]
            with open(state / "init.log", "ab") as errlog:
                proc = subprocess.Popen(
                    argv, env=_HOST_ENV, stdin=subprocess.DEVNULL, stdout=ready_w,
                    stderr=errlog, pass_fds=(info_w, args_fd, *fds), start_new_session=True,
                    cwd="/",
                )
            with self._lock:
                self._procs[box.id] = proc
            box.outer_pid = proc.pid
        finally:
            os.close(info_w)
            os.close(ready_w)
            if args_fd >= 0:
                os.close(args_fd)
        try:
            info = self._read_until(info_r, b"}", proc, "bubblewrap did not report its child")
            self._read_until(ready_r, b"\n", proc, "the sandbox did not become ready")
        finally:
            os.close(info_r)
            os.close(ready_r)
        pid = int(json.loads(info.decode())["child-pid"])
        start = sysutil.process_start_time(pid)
        if start is None:
            raise RunnerError("the sandbox init exited right after starting")
        box.init_pid, box.init_start = pid, start

    def _read_until(self, fd: int, end: bytes, proc: subprocess.Popen[bytes],
                    what: str) -> bytes:
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
                    raise RunnerError(f"{what}: {self._init_error(proc)}")
                data += chunk
        return data

    def _init_error(self, proc: subprocess.Popen[bytes]) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        with self._lock:
            owners = [sid for sid, p in self._procs.items() if p is proc]
        for sid in owners:
            with contextlib.suppress(OSError):
                text = (self._dir(sid) / "init.log").read_text(errors="replace")
                # bwrap says what is wrong on a "bwrap: ..." line (then, maybe, its usage).
                lines = [ln for ln in text.strip().splitlines() if ln.startswith("bwrap:")]
                if lines:
                    return lines[-1][:500]
        return f"exit status {proc.returncode}"

    def _handle(self, box: _Box) -> mounts.SandboxHandle:
        return mounts.SandboxHandle(
            sandbox_id=box.id, init_pid=box.init_pid, state_dir=self._dir(box.id),
            staging_host=self._rt(box.id) / "mnt", staging_sandbox=STAGING_SANDBOX,
            uid=box.host_uid, gid=box.host_gid,
        )

    # --- Exec -----------------------------------------------------------------------------

    def exec(self, sandbox_id: str, command: str, *, cwd: str | None = None,
             env: Mapping[str, str] | None = None,
             timeout: float | None = DEFAULT_EXEC_TIMEOUT_S) -> ExecResult:
        """Run ``/bin/sh -c command`` in the sandbox as its user.

        The environment is exactly template defaults + the sandbox's ``env`` + ``env``
        (nothing of the host's). On timeout every process the call started, however it
        forked, is killed (see ``ExecResult``). Background processes that outlive a
        command that exited normally keep running (a started server stays up).
        """
        box = self._require(sandbox_id)
        rel = self._cg(sandbox_id)
        if self._cgroups is not None and self._cgroups.is_frozen(rel):
            raise SandboxFrozenError("the sandbox is paused")
        merged = dict(box.env)
        for key, value in (env or {}).items():
            if not _ENV_NAME.match(key) or "\x00" in value:
                raise RunnerError("environment variable names must not be empty or contain "
                                  "'=' or NUL, nor start with '-'")
            merged[key] = value
        workdir = files.normalize(cwd, box.workdir) if cwd else box.workdir
        call_rel = f"{rel}/x-{secrets.token_hex(6)}"
        argv = ["/bin/sh", "-c", _JOIN, "leap0-join"]
        if self._cgroups is not None:
            self._gc_exec_cgroups(rel)
            self._cgroups.create(call_rel)
            argv += [str(p) for p in self._cgroups.procs_files(call_rel)]
        argv.append("--")
        argv += ["nsenter", f"--target={box.init_pid}", "--user", "--mount", "--uts", "--ipc",
                 "--net", "--pid", "--cgroup", "--root", "--wd",
                 f"--setuid={box.uid}", f"--setgid={box.uid}", "--",
                 "/usr/bin/env", "-i", f"--chdir={workdir}", "--",
                 *(f"{k}={v}" for k, v in merged.items()), "/bin/sh", "-c", command]
        try:
            proc = subprocess.Popen(argv, env=_HOST_ENV, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, cwd="/")
        except OSError as exc:
            if self._cgroups is not None:
                self._cgroups.remove_if_empty(call_rel)
            raise RunnerError(f"could not run the command: {exc}") from exc
        out, err, timed_out = self._collect(proc, timeout, call_rel)
        code = proc.returncode
        if timed_out:
            code = EXIT_TIMED_OUT
        elif code is not None and code < 0:
            code = 128 - code
        if self._cgroups is not None:
            self._cgroups.remove_if_empty(call_rel)
        return ExecResult(exit_code=int(code if code is not None else EXIT_TIMED_OUT),
                          stdout=out.decode("utf-8", errors="replace"),
                          stderr=err.decode("utf-8", errors="replace"),
                          timed_out=timed_out)

    def _collect(self, proc: subprocess.Popen[bytes], timeout: float | None,
                 call_rel: str) -> tuple[bytes, bytes, bool]:
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        streams = {out_fd: bytearray(), err_fd: bytearray()}
        open_fds = set(streams)
        deadline = None if timeout is None else time.monotonic() + timeout
        exited_at: float | None = None
        timed_out = False
        try:
            while open_fds:
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > OUTPUT_GRACE_S:
                    break
                if deadline is not None and now >= deadline and exited_at is None:
                    timed_out = True
                    self._kill_call(proc, call_rel)
                    exited_at = time.monotonic()
                    continue
                wait = 0.05
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - now))
                ready, _, _ = select.select(list(open_fds), [], [], wait)
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_fds.discard(fd)
                        continue
                    buf = streams[fd]
                    if len(buf) < MAX_OUTPUT_BYTES:
                        buf += chunk[: MAX_OUTPUT_BYTES - len(buf)]
            if proc.poll() is None:
                # Output closed but the command runs on: wait for it within the deadline.
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._kill_call(proc, call_rel)
        finally:
            proc.stdout.close()
            proc.stderr.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        return bytes(streams[out_fd]), bytes(streams[err_fd]), timed_out

    def _kill_call(self, proc: subprocess.Popen[bytes], call_rel: str) -> None:
        """Kill one exec's whole process tree, leaving no zombie behind.

        The host-side ``nsenter`` (``proc``) is spared at first: it must outlive the
        command's top process to reap it. Were both killed at once, that process would be
        re-parented to the host's pid 1, which on some hosts never reaps.
        """
        if self._cgroups is not None:
            frozen = self._cgroups.freeze(call_rel, timeout=1.0)
            for pid in self._cgroups.pids(call_rel) - {proc.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if frozen:
                self._cgroups.thaw(call_rel)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            self._cgroups.kill(call_rel)
        else:
            # Without cgroups the best available is the call's session (start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _gc_exec_cgroups(self, rel: str) -> None:
        assert self._cgroups is not None
        for name in self._cgroups.children(rel):
            if name.startswith("x-"):
                self._cgroups.remove_if_empty(f"{rel}/{name}")

    # --- Freezer --------------------------------------------------------------------------

    def freeze(self, sandbox_id: str) -> None:
        box = self._require(sandbox_id)
        if self._cgroups is None:
            raise RunnerError("pause needs the cgroup freezer, which this host does not offer")
        with self._id_lock(box.id):
            if not self._cgroups.freeze(self._cg(box.id)):
                self._cgroups.thaw(self._cg(box.id))
                raise RunnerError("the sandbox did not freeze in time")

    def thaw(self, sandbox_id: str) -> None:
        box = self._require(sandbox_id)
        if self._cgroups is None:
            raise RunnerError("resume needs the cgroup freezer, which this host does not offer")
        with self._id_lock(box.id):
            self._cgroups.thaw(self._cg(box.id))

    def is_frozen(self, sandbox_id: str) -> bool:
        self._check_id(sandbox_id)
        return self._cgroups is not None and self._cgroups.is_frozen(self._cg(sandbox_id))

    # --- Teardown -------------------------------------------------------------------------

    def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox; keep its writable layer for ``start``."""
        self._check_id(sandbox_id)
        with self._id_lock(sandbox_id):
            self._teardown(sandbox_id, keep_layer=True)

    def destroy(self, sandbox_id: str) -> None:
        """Remove every trace of the sandbox: processes, cgroups, namespace, mounts, files.
        Idempotent: destroying an unknown or already destroyed sandbox is fine."""
        self._check_id(sandbox_id)
        with self._id_lock(sandbox_id):
            self._teardown(sandbox_id, keep_layer=False)
            self._remove_state(sandbox_id)
        with self._lock:
            self._locks.pop(sandbox_id, None)

    def _teardown(self, sandbox_id: str, *, keep_layer: bool) -> None:
        box = self._load(sandbox_id)
        state = self._dir(sandbox_id)
        if box is not None:
            # Also when the sandbox died: its rclone processes live on the host. Its init pid
            # may name another process by now (even a host one): pass 0, so that no
            # namespace is entered and nothing is unmounted there.
            handle = self._handle(box)
            if not (box.init_pid and self._running(box)):
                handle = dataclasses.replace(handle, init_pid=0)
            with contextlib.suppress(Exception):
                mounts.detach_all(handle)
        # The egress filter lives in a child of the sandbox's cgroup but outside its pid
        # namespace: stop it first, or the wait below for the cgroup to empty waits for it.
        # Not when frozen: it could not die before the thaw, which the cgroup kill does.
        rel = self._cg(sandbox_id)
        if self._cgroups is None or not self._cgroups.is_frozen(rel):
            network.stop_filter(state)
        # Killing the pid namespace's init takes every process of the namespace with it
        # (the kernel does that); the cgroup kill below catches anything else, such as a
        # process frozen mid-fork or the host-side half of an exec.
        if box is not None and self._running(box):
            with contextlib.suppress(ProcessLookupError):
                os.kill(box.init_pid, signal.SIGKILL)
            # Give host-side nsenter processes of running execs the moment they need to
            # reap their (now killed) children and exit on their own (see _kill_call).
            deadline = time.monotonic() + 0.5
            while (self._cgroups is not None and self._cgroups.exists(rel)
                   and self._cgroups.populated(rel) and time.monotonic() < deadline):
                time.sleep(0.002)
        if self._cgroups is not None and self._cgroups.exists(rel):
            self._cgroups.kill(rel)
        if box is not None and box.outer_pid and not self._cgroups:
            with contextlib.suppress(ProcessLookupError):
                if sysutil.process_ppid(box.outer_pid) == os.getpid():
                    os.kill(box.outer_pid, signal.SIGKILL)
        self._reap(sandbox_id, box)
        if self._cgroups is not None:
            self._cgroups.remove(rel)
        if self._netns:
            network.teardown(sandbox_id, scope=self.scope, state_dir=self._dir(sandbox_id))
        rt = self._rt(sandbox_id)
        for point in sysutil.mountpoints_under(rt / "mnt"):
            sysutil.umount(point)
        if not keep_layer:
            for point in sysutil.mountpoints_under(rt):
                sysutil.umount(point)
        if box is not None:
            box.init_pid = box.init_start = box.outer_pid = 0
            if keep_layer and state.is_dir():
                with contextlib.suppress(OSError):
                    self._save(box)

    def _reap(self, sandbox_id: str, box: _Box | None) -> None:
        with self._lock:
            proc = self._procs.pop(sandbox_id, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        elif box is not None and box.outer_pid:
            # Started by an earlier Runner object in this same process: still our child.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(box.outer_pid, 0)

    def _remove_state(self, sandbox_id: str) -> None:
        for d in (self._rt(sandbox_id), self._dir(sandbox_id)):
            for point in sysutil.mountpoints_under(d):
                sysutil.umount(point)
            shutil.rmtree(d, ignore_errors=True)
        with self._lock:
            self._boxes.pop(sandbox_id, None)

    # --- Recovery -------------------------------------------------------------------------

    def recover(self, known_ids: Iterable[str]) -> set[str]:
        """Reconcile with the kernel after a (backend) restart.

        Returns the known ids whose sandbox is still running. Known ids that are not
        running are stopped cleanly (their writable layer is kept, so they can start
        again). Everything of this runner's scope that belongs to no known id (state
        directories, cgroups, network namespaces, mounts, processes) is destroyed.
        """
        known = {i for i in known_ids if SANDBOX_ID.match(i)}
        found: set[str] = set(self.list_sandboxes())
        if self._cgroups is not None:
            found.update(self._cgroups.children(self._cg_scope()))
        if self._netns:
            found.update(network.list_netns(self.scope))
        found = {i for i in found if SANDBOX_ID.match(i) and not i.startswith("probe-")}
        alive: set[str] = set()
        for sandbox_id in sorted(found | known):
            with self._lock:
                self._boxes.pop(sandbox_id, None)  # re-read from disk: the truth may differ
            if sandbox_id not in known:
                log.info("removing orphaned sandbox %s", sandbox_id)
                self.destroy(sandbox_id)
            elif self.is_alive(sandbox_id):
                alive.add(sandbox_id)
            elif sandbox_id in found:
                self.stop(sandbox_id)
        return alive

    def reconcile_network(self, sandbox_id: str, policy: Any) -> bool:
        """After a restart or a thaw: start the egress filter of a custom-policy sandbox
        again if it died (``policy`` is the sandbox's, header values included). Returns
        whether it had to; a paused sandbox's is left for its thaw."""
        box = self._require(sandbox_id)
        if not self._netns:
            return False
        if self._cgroups is not None and self._cgroups.is_frozen(self._cg(box.id)):
            return False  # a new filter would freeze before it is ready: ask again on thaw
        with self._id_lock(box.id):
            return network.ensure_filter(box.id, policy, self._dir(box.id), scope=self.scope,
                                         egress=self.egress, bind_dir=self._rt(box.id),
                                         cgroup=self._filter_cgroup(box.id, policy))

    def _filter_cgroup(self, sandbox_id: str, policy: Any) -> list[Path]:
        """Where a custom policy's egress filter runs: a child of the sandbox's cgroup, so
        the sandbox's limits (and its freezer) hold it too."""
        if self._cgroups is None or not network.needs_filter(policy):
            return []
        rel = f"{self._cg(sandbox_id)}/egress"
        self._cgroups.create(rel)
        return self._cgroups.procs_files(rel)

    # --- Mounts ---------------------------------------------------------------------------

    def mount(self, sandbox_id: str, mount: MountConfig) -> None:
        box = self._require(sandbox_id)
        with self._id_lock(box.id):
            mounts.attach(self._handle(box), mount)

    def unmount(self, sandbox_id: str, mount_id: str) -> None:
        box = self._require(sandbox_id)
        with self._id_lock(box.id):
            mounts.detach(self._handle(box), mount_id)

    def reconcile_mounts(self, sandbox_id: str, configs: Sequence[MountConfig]) -> list[str]:
        """After a restart, serve exactly ``configs``: mounts not among them, or whose rclone
        died meanwhile, are detached, and the missing ones attached again. Returns the ids
        attached again."""
        box = self._require(sandbox_id)
        with self._id_lock(box.id):
            handle = self._handle(box)
            missing = mounts.reconcile(handle, [config.id for config in configs])
            for config in configs:
                if config.id in missing:
                    mounts.attach(handle, config)
            return missing

    # --- Files ----------------------------------------------------------------------------

    def _view(self, sandbox_id: str) -> files.SandboxView:
        box = self._require(sandbox_id)
        names = {box.host_uid: box.user, 0: "root"}
        if self._privileged:
            names[box.host_gid] = box.user
        return files.SandboxView(init_pid=box.init_pid, uid=box.host_uid, gid=box.host_gid,
                                 workdir=box.workdir, names=names)

    def list_dir(self, sandbox_id: str, path: str, *, recursive: bool = False,
                 exclude: Sequence[str] = ()) -> list[FileInfo]:
        return files.list_dir(self._view(sandbox_id), path, recursive=recursive,
                              exclude=exclude)

    def stat(self, sandbox_id: str, path: str) -> FileInfo:
        return files.stat(self._view(sandbox_id), path)

    def exists(self, sandbox_id: str, path: str) -> bool:
        return files.exists(self._view(sandbox_id), path)

    def mkdir(self, sandbox_id: str, path: str, *, recursive: bool = False,
              mode: int = 0o755) -> None:
        files.mkdir(self._view(sandbox_id), path, recursive=recursive, mode=mode)

    def write_file(self, sandbox_id: str, path: str, content: bytes, *,
                   mode: int | None = None) -> None:
        files.write_file(self._view(sandbox_id), path, content, mode=mode)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return files.read_file(self._view(sandbox_id), path)

    def delete(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        files.delete(self._view(sandbox_id), path, recursive=recursive)
