"""The runner: real, isolated, resource-limited sandboxes on Linux.

This module is the lifecycle; each step it takes lives in a module of its own.

``start`` makes a sandbox, in this order:

1. Host-side state. ``<root_dir>/<id>/state.json`` (``state.py``) says how to find the
   sandbox again after the backend restarts. What bubblewrap binds into the sandbox lives in
   the runtime directory ``/run/leap0/<scope>/<id>/`` instead: bubblewrap runs as the
   unprivileged sandbox uid and resolves bind sources by path, so they must sit below
   world-traversable directories, which ``root_dir`` need not be (``/root/...``, pytest's
   0700 tmp). There: the generated ``/etc`` identity files (``identity.py``), and the
   size-limited writable layer and the mount staging directory (``layer.py``).
2. Limits and network. A cgroup ``leap0/<scope>/<id>`` with the CPU quota, memory limit (no
   swap) and pids limit (``cgroups.py``; a do-nothing ``NoCgroups`` where the host gives
   none), and a network namespace enforcing the policy (``network.py``; a custom policy's
   egress filter, ``egress_filter.py``, runs in a child cgroup of the sandbox's).
3. The launch chain (``launch.py``): ``nsenter`` joins the namespace and drops to the
   sandbox's host uid, the runner puts it into the cgroup before ``bwrap`` gets its options,
   ``bwrap`` makes the other namespaces and the read-only root and installs the seccomp
   filter (``seccomp.py``); its payload, the sandbox's "init", reports readiness and sleeps
   forever. The chain runs in its own
   session, so the sandbox outlives the backend.
4. Object-storage mounts (``mounts.py``).

On any failure everything the call made is removed before ``RunnerError`` is raised.

A running sandbox is its init: ``exec`` (``exec.py``) enters its namespaces; ``freeze`` and
``thaw`` are the cgroup freezer. What else is done to it is an object beside the lifecycle,
by sandbox id: ``files`` (``sandboxfiles.py``: its file helper, a process of its own),
``terminals``, ``git``, ``snapshots``, ``ingress``, ``identities`` and ``mounts``
(``sandboxmounts.py``). ``stop`` kills every process (file helper and terminals first) but
keeps the writable layer for the next ``start``; ``destroy`` removes every trace (both
``_teardown``). After a backend restart ``recover`` keeps the known sandboxes and destroys
the orphans, and ``mounts.reconcile`` and ``reconcile_network`` start again the host-side
helpers (rclone, the egress filter) that died meanwhile.

Inside, the sandbox user is ``template.uid`` in its own user namespace, mapped to a host
uid of the sandbox's own (``identity.UidPool``: claimed at its first start, released by
``destroy``) with no capabilities and no way to create further user namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import (
    cgroups,
    egress_filter,
    filecalls,
    identity,
    ingress,
    launch,
    layer,
    mounts,
    netns,
    network,
    seccomp,
    snapshots,
    state,
    sysutil,
    templates,
    terminals,
)
from pulumi_leap0.runner.capabilities import Capabilities, probe
from pulumi_leap0.runner.cgroups import Limits
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.exec import DEFAULT_EXEC_TIMEOUT_S, run_command
from pulumi_leap0.runner.git import SandboxGit
from pulumi_leap0.runner.images import ImageStore
from pulumi_leap0.runner.sandboxfiles import SandboxFiles
from pulumi_leap0.runner.sandboxmounts import SandboxMounts
from pulumi_leap0.runner.state import SANDBOX_ID, SandboxState, Steps, check_id
from pulumi_leap0.runner.templates import Template, TemplateRegistry
from pulumi_leap0.runner.types import (
    ExecResult,
    SandboxConfig,
    SandboxStats,
    check_env,
)

log = logging.getLogger("leap0.runner")

RUNTIME_BASE = Path("/run/leap0")


def short_hash(text: str, length: int = 8) -> str:
    """A stable short name for ``text``; interface names (15 bytes) need it later."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class Runner:
    """Sandboxes on this host, with all host-side state under ``root_dir``.

    Thread-safe: lifecycle calls on one sandbox are serialized, calls on different
    sandboxes and concurrent ``exec``/file calls run in parallel.
    """

    def __init__(self, root_dir: Path, *, egress: network.EgressSettings | None = None,
                 uids: identity.UidPool | None = None,
                 images: ImageStore | None = None) -> None:
        self.root_dir = Path(root_dir).absolute()
        self._images = images
        self.egress = egress or network.EgressSettings()
        # Traversable, not listable: bubblewrap runs as the unprivileged sandbox uid and
        # must reach the bind sources below; state.json (it holds env values) stays 0600.
        self.root_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(self.root_dir, 0o711)
        self.scope = short_hash(str(self.root_dir))
        self._privileged = os.geteuid() == 0
        self.runtime_dir = RUNTIME_BASE / self.scope if self._privileged else self.root_dir
        if self._privileged:
            for d in (RUNTIME_BASE, self.runtime_dir):
                d.mkdir(mode=0o711, exist_ok=True)
                os.chmod(d, 0o711)
        # Host-wide, shared with every other runner on the host (``uids`` for tests).
        self._uids = (uids or identity.UidPool(RUNTIME_BASE / "uids")) if self._privileged \
            else None
        self._seccomp = seccomp.program() if seccomp.AVAILABLE else None
        self.templates = TemplateRegistry()
        self._records = state.Records(self.root_dir, self.runtime_dir)
        self._cgroups = cgroups.for_scope(self._cg_scope())
        self._netns = (self._privileged
                       and shutil.which("ip", path=sysutil.HOST_ENV["PATH"]) is not None)
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._caps: Capabilities | None = None
        self._files = filecalls.FileHelpers(self._cgroups, self._cg)
        # The calls on a running sandbox besides the lifecycle, by its id, one module each.
        records, cg = self._records, self._cg
        self.files = SandboxFiles(records, self._files)
        self.terminals = terminals.Terminals(records, self._cgroups, cg)
        self.git = SandboxGit(records, self._cgroups, cg)
        self.snapshots = snapshots.Snapshots(records, self._cgroups, cg, self._id_lock)
        self.ingress = ingress.Ingress(records)
        self.identities = identity.Identities(records, self.templates)
        self.mounts = SandboxMounts(records, self.egress, self._id_lock)

    # --- Where things are -----------------------------------------------------------------

    def _cg_scope(self) -> str:
        return f"leap0/{self.scope}"

    def _cg(self, sandbox_id: str) -> str:
        return f"{self._cg_scope()}/{sandbox_id}"

    def _id_lock(self, sandbox_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(sandbox_id, threading.Lock())

    @property
    def images(self) -> ImageStore:
        """Container images of user templates (pulled, unpacked, shared read-only); by
        default in the runner's own directory, made at first use."""
        if self._images is None:
            self._images = ImageStore(self.root_dir / ".images")
        return self._images

    def _template(self, name: str) -> Template:
        template = self.templates.get(name)
        if template is None:
            raise RunnerError("unknown template")
        return template

    # --- Queries --------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self._caps = probe(self._cgroups, self.scope, own_uids=self._uids is not None,
                               seccomp_program=self._seccomp)
        return self._caps

    def disk_mib(self, template_name: str) -> int:
        return self._template(template_name).disk_mib

    def is_alive(self, sandbox_id: str) -> bool:
        box = self._records.get(sandbox_id) if SANDBOX_ID.match(sandbox_id) else None
        return box is not None and box.running

    def stats(self, sandbox_id: str) -> SandboxStats:
        check_id(sandbox_id)
        return self._cgroups.stats(self._cg(sandbox_id))

    def list_sandboxes(self) -> list[str]:
        """Ids with host-side state (running or stopped)."""
        return self._records.ids()

    # --- Start ----------------------------------------------------------------------------

    def start(self, config: SandboxConfig) -> None:
        """Boot a sandbox (again, after ``stop``: its writable layer is kept).

        On any failure everything this call made is removed before ``RunnerError`` is
        raised; a writable layer that existed before the call is kept.
        """
        check_id(config.id)
        template = (templates.from_image(config.template, config.image)
                    if config.image is not None else self._template(config.template))
        check_env(config.env)
        with self._id_lock(config.id):
            existing = self._records.get(config.id)
            if existing is not None and existing.running:
                raise RunnerError("the sandbox is already running")
            layer_existed = (self._records.runtime(config.id) / "layer").is_dir()
            steps = Steps()
            try:
                self._boot(config, template, existing, steps)
            except BaseException as exc:
                self._teardown(config.id, keep_layer=layer_existed)
                if not layer_existed:
                    self._remove(config.id)
                if isinstance(exc, RunnerError):
                    raise
                if isinstance(exc, (OSError, subprocess.SubprocessError, ValueError)):
                    raise RunnerError(f"could not start the sandbox: {exc}") from exc
                raise
            finally:
                if self._netns:
                    netns.refill(self.scope)  # after the start: it competes for the CPU
            log.debug("started %s: %s", config.id, steps, extra={"steps": steps.times})

    def _boot(self, config: SandboxConfig, template: Template,
              kept: SandboxState | None, steps: Steps) -> None:
        """``kept``: the record of a stopped sandbox, if any (its layer may be kept)."""
        owner = self._host_identity(config.id, kept)
        steps("uid")
        state_dir, rt = self._records.state_dir(config.id), self._records.runtime(config.id)
        # Root's alone: state.json holds env values, init.log what the chain said, and
        # nothing that runs as another uid needs a path below.
        state_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)
        layer.make_runtime(rt, owner, privileged=self._privileged)
        if kept is not None and kept.host_uid != owner.uid:
            # Recorded under the old shared uid, or its uid was lost (a wiped /run/leap0).
            old = identity.HostIdentity(kept.host_uid, kept.host_gid, dedicated=True)
            identity.reown(rt / "layer", old, owner)
            self._records.put(dataclasses.replace(kept, host_uid=owner.uid, host_gid=owner.gid))
        fresh = not (rt / "layer").is_dir()
        writable = layer.make_layer(rt, config.disk_mib or template.disk_mib, owner,
                                    privileged=self._privileged)
        etc = identity.write_etc(rt, config.id, template)
        staging = layer.make_staging(rt, privileged=self._privileged)
        steps("layer")

        rel = self._cg(config.id)
        self._cgroups.remove(rel)  # leftovers of a crashed earlier run
        self._cgroups.create(rel, Limits(vcpu=config.vcpu, memory_mib=config.memory_mib))
        if config.seed is not None and fresh:
            # In the sandbox's cgroups, as its uid: its memory pays for its files.
            snapshots.seed(config.seed, writable, owner, self._cgroups.procs_files(rel),
                           timeout=spec.SNAPSHOT_TIMEOUT_S, image=bool(template.image))
        root = (layer.make_root(rt, writable, template, owner, privileged=self._privileged)
                if template.image else None)
        steps("cgroup")
        net: network.NetworkHandle | None = None
        if self._netns:
            net = network.setup(config.id, config.network_policy, state_dir, scope=self.scope,
                                egress=self.egress, bind_dir=rt,
                                cgroup=self._filter_cgroup(config.id, config.network_policy))
        steps("network")

        env = {**template.base_env(), **config.env, **(net.extra_env if net else {})}
        box = SandboxState(id=config.id, template=template.name, user=template.user,
                           uid=template.uid, host_uid=owner.uid, host_gid=owner.gid,
                           workdir=template.workdir, env=env,
                           netns=net.netns_name if net else None, gid=template.group,
                           image=template.image)
        with launch.HostFds() as fds:
            options = launch.bwrap_options(
                sandbox_id=config.id, template=template, etc_dir=etc, layer=writable,
                staging=staging, env=env, network=net, runner_dir=self.root_dir, fd=fds,
                seccomp=self._seccomp, root=root)
            steps("options")
            booting = launch.spawn(options, state_dir=state_dir,
                                   cgroup_procs=self._cgroups.procs_files(rel),
                                   netns_path=net.netns_path if net else None,
                                   identity=owner, fds=fds)
            with self._lock:
                self._procs[box.id] = booting.proc
            box.outer_pid = booting.proc.pid
            steps("spawn")
            box.init_pid, box.init_start = booting.wait()
            steps("ready")
        self._records.put(box)
        for mount in config.mounts:
            mounts.attach(self.mounts.handle(box), mount)
        steps("record")

    def _host_identity(self, sandbox_id: str,
                       kept: SandboxState | None) -> identity.HostIdentity:
        """The sandbox's own host uid: kept across ``stop`` and ``start``, because its kept
        layer is owned by it, so nothing needs re-owning."""
        if self._uids is None:
            return identity.runner_identity()
        return self._uids.claim(self._uid_owner(sandbox_id),
                                keep=kept.host_uid if kept is not None else None)

    def _uid_owner(self, sandbox_id: str) -> str:
        return str(self._records.state_dir(sandbox_id))

    def _remove(self, sandbox_id: str) -> None:
        """The sandbox's directories and record, and then its host uid: only once both
        directories are gone, since what is left in them (its layer's files, a stuck mount)
        is still its."""
        self._records.remove(sandbox_id)
        if self._uids is None:
            return
        if any(d.exists() for d in (self._records.state_dir(sandbox_id),
                                    self._records.runtime(sandbox_id))):
            log.warning("keeping the host uid of %s: its directories are not gone", sandbox_id)
            return
        self._uids.release(self._uid_owner(sandbox_id))

    # --- Exec and the freezer -------------------------------------------------------------

    def exec(self, sandbox_id: str, command: str, *, cwd: str | None = None,
             env: Mapping[str, str] | None = None,
             timeout: float | None = DEFAULT_EXEC_TIMEOUT_S) -> ExecResult:
        """Run ``/bin/sh -c command`` in the sandbox as its user.

        The environment is exactly template defaults + the sandbox's ``env`` + ``env``
        (nothing of the host's). On timeout every process the call started, however it
        forked, is killed (see ``ExecResult``). Background processes that outlive a
        command that exited normally keep running (a started server stays up).
        """
        box = self._records.running(sandbox_id)
        return run_command(self._cgroups, self._cg(box.id), box, command, cwd=cwd, env=env,
                           timeout=timeout)

    def freeze(self, sandbox_id: str) -> None:
        box = self._records.running(sandbox_id)
        with self._id_lock(box.id):
            self._cgroups.freeze_or_thaw(self._cg(box.id))

    def thaw(self, sandbox_id: str) -> None:
        box = self._records.running(sandbox_id)
        with self._id_lock(box.id):
            self._cgroups.thaw(self._cg(box.id))

    def is_frozen(self, sandbox_id: str) -> bool:
        check_id(sandbox_id)
        return self._cgroups.is_frozen(self._cg(sandbox_id))

    # --- Teardown -------------------------------------------------------------------------

    def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox; keep its writable layer for ``start``."""
        check_id(sandbox_id)
        with self._id_lock(sandbox_id):
            self._teardown(sandbox_id, keep_layer=True)

    def destroy(self, sandbox_id: str) -> None:
        """Remove every trace of the sandbox: processes, cgroups, namespace, mounts, files.
        Idempotent: destroying an unknown or already destroyed sandbox is fine."""
        check_id(sandbox_id)
        with self._id_lock(sandbox_id):
            self._teardown(sandbox_id, keep_layer=False)
            self._remove(sandbox_id)
        with self._lock:
            self._locks.pop(sandbox_id, None)

    def close(self) -> None:
        """Give back what the runner holds ahead of starts (network namespaces); sandboxes
        keep running. A later ``start`` works, and makes them again."""
        if self._netns:
            netns.drain(self.scope)

    def _teardown(self, sandbox_id: str, *, keep_layer: bool) -> None:
        self._files.stop(sandbox_id)
        self.terminals.stop(sandbox_id)
        box = self._records.get(sandbox_id)
        state_dir = self._records.state_dir(sandbox_id)
        if box is not None:
            # Also when the sandbox died: its rclone processes live on the host. Its init pid
            # may name another process by now (even a host one): pass 0, so that no
            # namespace is entered and nothing is unmounted there.
            handle = self.mounts.handle(box)
            if not (box.init_pid and box.running):
                handle = dataclasses.replace(handle, init_pid=0)
            with contextlib.suppress(Exception):
                mounts.detach_all(handle)
        # The egress filter lives in a child of the sandbox's cgroup but outside its pid
        # namespace: stop it first, or the wait below for the cgroup to empty waits for it.
        # Not when frozen: it could not die before the thaw, which the cgroup kill does.
        rel = self._cg(sandbox_id)
        if not self._cgroups.is_frozen(rel):
            egress_filter.stop(state_dir)
        # Killing the pid namespace's init takes every process of the namespace with it
        # (the kernel does that); the cgroup kill below catches anything else, such as a
        # process frozen mid-fork or the host-side half of an exec.
        if box is not None and box.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(box.init_pid, signal.SIGKILL)
            # Give host-side nsenter processes of running execs the moment they need to
            # reap their (now killed) children and exit on their own (see exec.kill_call).
            deadline = time.monotonic() + 0.5
            while self._cgroups.populated(rel) and time.monotonic() < deadline:
                time.sleep(0.002)
        if not self._cgroups.kill(rel) and box is not None and box.outer_pid:
            # No cgroup kill emptied the sandbox's cgroup (NoCgroups has none), so the
            # chain's first process, bubblewrap's monitor, may be left: ours to kill.
            with contextlib.suppress(ProcessLookupError):
                if sysutil.process_ppid(box.outer_pid) == os.getpid():
                    os.kill(box.outer_pid, signal.SIGKILL)
        self._reap(sandbox_id, box)
        self._cgroups.remove(rel)
        if self._netns:
            network.teardown(sandbox_id, scope=self.scope, state_dir=state_dir)
        layer.unmount(self._records.runtime(sandbox_id), keep_layer=keep_layer)
        if box is not None:
            box.forget_processes()
            if keep_layer and state_dir.is_dir():
                with contextlib.suppress(OSError):
                    self._records.put(box)

    def _reap(self, sandbox_id: str, box: SandboxState | None) -> None:
        with self._lock:
            proc = self._procs.pop(sandbox_id, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        elif box is not None and box.outer_pid:
            # Started by an earlier Runner object in this same process: still our child.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(box.outer_pid, 0)

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
        found.update(self._cgroups.children(self._cg_scope()))
        if self._netns:
            found.update(network.list_netns(self.scope))
        found = {i for i in found if SANDBOX_ID.match(i) and not i.startswith("probe-")}
        alive: set[str] = set()
        for sandbox_id in sorted(found | known):
            self._records.forget(sandbox_id)  # re-read from disk: the truth may differ
            if sandbox_id not in known:
                log.info("removing orphaned sandbox %s", sandbox_id)
                self.destroy(sandbox_id)
            elif self.is_alive(sandbox_id):
                alive.add(sandbox_id)
            elif sandbox_id in found:
                self.stop(sandbox_id)
        if self._uids is not None:
            self._uids.release_lost(self._records)
        return alive

    def reconcile_network(self, sandbox_id: str, policy: spec.NetworkPolicy | None) -> bool:
        """After a restart or a thaw: start the egress filter of a custom-policy sandbox
        again if it died (``policy`` is the sandbox's, header values included). Returns
        whether it had to; a paused sandbox's is left for its thaw."""
        box = self._records.running(sandbox_id)
        if not self._netns:
            return False
        if self._cgroups.is_frozen(self._cg(box.id)):
            return False  # a new filter would freeze before it is ready: ask again on thaw
        with self._id_lock(box.id):
            return network.ensure_filter(
                box.id, policy, self._records.state_dir(box.id), scope=self.scope,
                egress=self.egress, bind_dir=self._records.runtime(box.id),
                cgroup=self._filter_cgroup(box.id, policy))

    def _filter_cgroup(self, sandbox_id: str, policy: spec.NetworkPolicy | None) -> list[Path]:
        if not network.needs_filter(policy):
            return []
        return egress_filter.cgroup(self._cgroups, self._cg(sandbox_id))
