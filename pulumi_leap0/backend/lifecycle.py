"""The sandbox state machine: the store says what a sandbox is, the runner makes it so.

Rules, and why:

* One lifecycle lock per sandbox. Create, pause, resume, stop, start and delete each hold it
  for their whole transition, and write the transitional state (``starting``,
  ``snapshotting``, ``unpausing``, ``stopping``, ``deleting``) first, so a concurrent
  request sees the truth and a delete answers 409 instead of racing the transition.
* The runner is synchronous and may block (processes, mounts): every call to it runs in a
  worker thread, so the event loop keeps serving reads while a sandbox boots.
* Reads never take the lock: a GET is one sqlite row, and it must stay cheap.
* Methods about one sandbox take its record as the request resolved it (the caller's own,
  see ``dependencies.InSandbox``), so none can be reached with an id nobody checked; the
  state is read again wherever it decides what happens.
* A sandbox-scoped request (process, filesystem, mounts) to a paused sandbox resumes it
  first, as the service does.
* Timeouts: a background task pauses (``auto_pause``) or deletes every running sandbox past
  its deadline. A resume or start gives the sandbox a fresh ``timeout`` seconds.
* Calls are bounded in time: a file call is answered within the server's call timeout, an
  execute within its own ``timeout`` and a grace, with 504 if the runner has not returned.
  The thread cannot be stopped, so it runs on with a unit of its organization's share
  borrowed (``backend.shares``) until it ends: what nobody waits for still counts against
  whoever started it.
* Restart: on startup the runner says which sandboxes still have processes; every other one
  is reported as ``stopped`` (its disk kept, startable again) rather than as running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import anyio
from anyio import to_thread

from pulumi_leap0 import spec
from pulumi_leap0.backend import runtime
from pulumi_leap0.backend.errors import ApiError, conflict, invalid, not_found
from pulumi_leap0.backend.shares import Lane, Shares
from pulumi_leap0.backend.store import (
    MountConflict,
    MountRecord,
    NoCapacity,
    QuotaExceeded,
    SandboxRecord,
    SnapshotConflict,
    SnapshotRecord,
    Store,
    TemplateConflict,
)
from pulumi_leap0.backend.templates import Templates

log = logging.getLogger("leap0.backend")

S = spec.SandboxState
P = ParamSpec("P")
T = TypeVar("T")

REAP_INTERVAL_S = 0.25
#: How long a file call may take before its caller is answered 504 (``serve --call-timeout``).
#: The runner ends a call at its own deadline (``spec.FILE_CALL_TIMEOUT_S``); this is the
#: backstop for a runner that does not, so it leaves the runner that deadline and a margin.
CALL_TIMEOUT_S = spec.FILE_CALL_TIMEOUT_S + 30.0
#: An execute's answer is due this long after its own timeout: the runner kills the
#: command at the timeout and may wait a few seconds for its processes to be reaped.
EXECUTE_GRACE_S = 15.0


class Lifecycle:
    def __init__(self, store: Store, runner: runtime.Runner, *, snapshot_dir: Path,
                 shares: Shares | None = None, call_timeout_s: float = CALL_TIMEOUT_S,
                 memory_capacity_mib: int | None = None) -> None:
        self.store = store
        self.runner = runner
        #: Snapshot archives, a folder per organization (``snapshot_path``).
        self.snapshot_dir = snapshot_dir
        #: Restores in flight per snapshot id: their snapshot cannot be deleted under them.
        self._restoring: Counter[str] = Counter()
        #: MiB of memory all sandboxes may hold at once (``backend/capacity.py``); None: any.
        self.memory_capacity_mib = memory_capacity_mib
        self.shares = shares or Shares()
        self.call_timeout_s = call_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.templates = Templates(store, runner)

    # --- Plumbing -----------------------------------------------------------------------------

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def call() -> T:
            return fn(*args, **kwargs)

        return await to_thread.run_sync(call)

    async def _run_within(self, seconds: float, org: str, fn: Callable[P, T],
                          *args: P.args, **kwargs: P.kwargs) -> T:
        """``_run``, but the caller is answered (504) after ``seconds`` whatever the thread
        does; a thread still running then borrows a unit of ``org``'s calls share until
        it returns."""
        loop = asyncio.get_running_loop()
        guard = threading.Lock()
        finished = False
        give_back: Callable[[], None] | None = None

        def call() -> T:
            nonlocal finished
            try:
                return fn(*args, **kwargs)
            finally:
                with guard:
                    finished = True
                    release = give_back
                if release is not None:
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                        loop.call_soon_threadsafe(release)

        try:
            with anyio.fail_after(seconds):
                return await to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError:
            with guard:
                if not finished:
                    give_back = self.shares.borrow(org, Lane.CALLS)
            log.warning("a call of %s did not return within %g s; its thread runs on",
                        fn.__name__, seconds)
            raise ApiError(504, f"the sandbox did not answer within {seconds:g} s") from None

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    def get(self, org_id: str, sandbox_id: str) -> SandboxRecord:
        record = self.store.get_sandbox(sandbox_id, org_id)
        if record is None:
            raise not_found()
        return record

    def _reload(self, sandbox_id: str) -> SandboxRecord:
        record = self.store.get_sandbox(sandbox_id)
        if record is None:
            raise not_found()
        return record

    # --- Create -------------------------------------------------------------------------------

    async def create(self, org_id: str, request: spec.SandboxCreateRequest) -> SandboxRecord:
        began = time.monotonic()
        # The caller's own templates and the system ones; never another organization's.
        template = self.store.template_named(org_id, request.template_name)
        if template is not None:
            disk = runtime.IMAGE_DISK_MIB
        else:
            try:
                disk = self.runner.disk_mib(request.template_name)
            except runtime.RunnerError:  # its one complaint here: a template it does not know
                raise invalid("template_name", "must name a known template") from None
        try:
            record = self.store.insert_sandbox(
                org_id, request, disk=disk, memory_capacity_mib=self.memory_capacity_mib,
                template_id=template.id if template is not None else None,
            )
        except TemplateConflict:
            raise invalid("template_name", "must name a known template") from None
        except QuotaExceeded as exc:
            raise conflict(
                f"sandbox limit reached: an organization may have at most "
                f"{spec.MAX_SANDBOXES_PER_ORG} sandboxes and this one has {exc.existing}; "
                "delete one first"
            ) from None
        except NoCapacity:
            raise _no_capacity(request.memory) from None
        return await self._launch(record, began=began)

    async def _launch(self, record: SandboxRecord, seed: Path | None = None, *,
                      began: float | None = None) -> SandboxRecord:
        """Boot a sandbox just inserted (``starting``), seeded with a snapshot's files.
        ``began``: when the request's own work began, for the debug log's step times."""
        inserted = time.monotonic()
        async with self._lock(record.id):
            try:
                await self._run(self.runner.start, self._config(record, seed=seed))
            except Exception as exc:
                # Nothing half-made is left behind, and the quota slot is given back.
                log.error("sandbox %s failed to start: %s: %s", record.id, type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.destroy, record.id)
                self.store.forget_sandbox(record.id)
                if isinstance(exc, runtime.SeedTooLarge):
                    raise invalid("snapshot_name", f"its files do not fit in the restored "
                                  f"sandbox's disk of {record.disk} MiB") from None
                if isinstance(exc, runtime.RunnerError) and record.mounts:
                    # The one part of a valid request that can fail on the outside world.
                    raise invalid("mounts", f"could not be attached: {exc}") from None
                raise ApiError(503, "the sandbox could not be started") from None
            started = time.monotonic()
            self.store.set_state(
                record.id, S.RUNNING, launched=True, deadline_ts=time.time() + record.timeout
            )
        done = self._reload(record.id)
        if log.isEnabledFor(logging.DEBUG):
            ms = {"insert": inserted - (began or inserted), "start": started - inserted,
                  "running": time.monotonic() - started}
            log.debug("created %s: %s", record.id,
                      ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in ms.items()))
        return done

    def _config(self, record: SandboxRecord, *,
                seed: Path | None = None) -> runtime.SandboxConfig:
        """The runner's config, with the image of the sandbox's user template, if any, and
        ``seed``, a snapshot's files, for a restore."""
        image = None
        if record.template_id is not None:
            template = self.store.get_template(record.template_id)
            if template is None:
                raise ApiError(409, "the sandbox's template is gone")
            image = runtime.image_of(self.runner, template)
        return runtime.sandbox_config(record, image, seed=seed)

    # --- Pause, resume, stop, start -----------------------------------------------------------

    async def pause(self, sandbox: SandboxRecord) -> SandboxRecord:
        async with self._lock(sandbox.id):
            record = self._reload(sandbox.id)
            if record.state != S.RUNNING:
                raise conflict(f"the sandbox is {record.state.value}, not running")
            await self._pause_locked(record)
        return self._reload(sandbox.id)

    async def _pause_locked(self, record: SandboxRecord) -> None:
        self.store.set_state(record.id, S.SNAPSHOTTING)
        try:
            await self._run(self.runner.freeze, record.id)
        except Exception:
            self.store.set_state(record.id, S.RUNNING)
            raise
        self.store.set_state(record.id, S.PAUSED)

    async def ensure_running(self, sandbox: SandboxRecord) -> SandboxRecord:
        """The sandbox, running: a paused one is resumed, one in transition is waited for."""
        sandbox_id = sandbox.id
        record = self._reload(sandbox_id)
        if record.state == S.RUNNING:
            return record
        async with self._lock(sandbox_id):
            record = self._reload(sandbox_id)
            if record.state == S.PAUSED:
                self.store.set_state(sandbox_id, S.UNPAUSING)
                try:
                    await self._run(self.runner.thaw, sandbox_id)
                except Exception:
                    self.store.set_state(sandbox_id, S.PAUSED)
                    raise
                if record.network_policy is not None:  # its filter may have died while paused
                    await self._run(self.runner.reconcile_network, sandbox_id,
                                    record.network_policy)
                self.store.set_state(
                    sandbox_id, S.RUNNING, deadline_ts=time.time() + record.timeout
                )
                return self._reload(sandbox_id)
            if record.state == S.RUNNING:
                return record
            raise conflict(f"the sandbox is {record.state.value}; start it first")

    async def stop(self, sandbox: SandboxRecord) -> SandboxRecord:
        sandbox_id = sandbox.id
        async with self._lock(sandbox_id):
            record = self._reload(sandbox_id)
            if record.state not in (S.RUNNING, S.PAUSED):
                raise conflict(f"the sandbox is {record.state.value}, not running")
            self.store.set_state(sandbox_id, S.STOPPING)
            try:
                # A sandbox whose processes already died is stopped: that is the goal.
                with contextlib.suppress(
                    runtime.SandboxNotRunningError, runtime.SandboxNotFoundError
                ):
                    await self._run(self.runner.stop, sandbox_id)
            except Exception:
                self.store.set_state(sandbox_id, record.state)
                raise
            self.store.set_state(sandbox_id, S.STOPPED)
        return self._reload(sandbox_id)

    async def start(self, sandbox: SandboxRecord) -> SandboxRecord:
        sandbox_id = sandbox.id
        async with self._lock(sandbox_id):
            record = self._reload(sandbox_id)
            if record.state != S.STOPPED:
                raise conflict(f"the sandbox is {record.state.value}, not stopped")
            try:
                self.store.claim_start(sandbox_id, record.memory, self.memory_capacity_mib)
            except NoCapacity:
                raise _no_capacity(record.memory) from None
            try:
                await self._run(self.runner.start, self._config(record))
            except Exception as exc:
                log.error("sandbox %s failed to start: %s: %s", sandbox_id, type(exc).__name__, exc)
                self.store.set_state(sandbox_id, S.STOPPED)
                raise ApiError(503, "the sandbox could not be started") from None
            self.store.set_state(
                sandbox_id, S.RUNNING, launched=True, deadline_ts=time.time() + record.timeout
            )
        return self._reload(sandbox_id)

    # --- Delete -------------------------------------------------------------------------------

    async def delete(self, sandbox: SandboxRecord) -> None:
        record = self._reload(sandbox.id)
        lock = self._lock(record.id)
        if record.state in spec.TRANSITIONING_STATES or lock.locked():
            raise conflict(f"the sandbox is {record.state.value}; try again when it settles")
        async with lock:
            await self._delete_locked(record.id)

    async def _delete_locked(self, sandbox_id: str) -> None:
        self.store.set_state(sandbox_id, S.DELETING)
        # A destroy that fails leaves the sandbox in ``deleting``; startup recovery finishes it.
        # One the runner no longer knows is already gone, which is what delete wants.
        with contextlib.suppress(runtime.SandboxNotFoundError):
            await self._run(self.runner.destroy, sandbox_id)
        self.store.forget_sandbox(sandbox_id)
        self._locks.pop(sandbox_id, None)

    # --- Snapshots ----------------------------------------------------------------------------

    def snapshot_path(self, snapshot: SnapshotRecord) -> Path:
        """Where a snapshot's archive is: a folder per organization, root's alone (0700),
        since an archive holds a tenant's files and the host's other users are not it."""
        folder = self.snapshot_dir / snapshot.org_id
        for d in (self.snapshot_dir, folder):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        return folder / f"{snapshot.id}.tar"

    async def snapshot(self, sandbox: SandboxRecord,
                       body: spec.SnapshotCreateRequest) -> SnapshotRecord:
        """Capture a running or paused sandbox's files and configuration; then it is as it
        was, or deleted with ``kill_sandbox_after``."""
        async with self._lock(sandbox.id):
            record = self._reload(sandbox.id)
            if record.state not in (S.RUNNING, S.PAUSED):
                raise conflict(f"the sandbox is {record.state.value}; only a running or "
                               "paused sandbox can be snapshot")
            try:
                snapshot = self.store.insert_snapshot(record, body.name)
            except SnapshotConflict as exc:
                raise conflict(str(exc)) from None
            dest = self.snapshot_path(snapshot)
            self.store.set_state(record.id, S.SNAPSHOTTING)
            try:
                # The runner gives up at spec.SNAPSHOT_TIMEOUT_S; this is the backstop.
                size = await self._run_within(
                    spec.SNAPSHOT_TIMEOUT_S + 30.0, record.org_id, runtime.snapshot,
                    self.runner, record.id, dest, keep_frozen=body.kill_sandbox_after)
            except Exception as exc:
                self.store.forget_snapshot(snapshot.id)
                with contextlib.suppress(OSError):
                    dest.unlink()
                self.store.set_state(record.id, record.state)
                if isinstance(exc, ApiError):
                    raise
                if isinstance(exc, runtime.RunnerError):
                    # Runner messages carry no credentials; this one is about the tenant's files.
                    raise conflict(f"the snapshot could not be made: {exc}") from None
                raise
            self.store.snapshot_ready(snapshot.id, size)
            if body.kill_sandbox_after:
                await self._delete_locked(record.id)
            else:
                self.store.set_state(record.id, record.state)
        made = self.store.get_snapshot(snapshot.id)
        assert made is not None
        return made

    async def restore(self, org_id: str, body: spec.SnapshotRestoreRequest) -> SandboxRecord:
        """A new sandbox with the snapshot's template, vcpu, memory, disk, environment and
        files; ``timeout``, ``auto_pause`` and ``network_policy`` from the request (the
        policy of the snapshot when the request has none). The quota is the sandbox
        quota, answered as the document answers a restore: 429."""
        snapshot = self.store.snapshot_by_name(org_id, body.snapshot_name)
        if snapshot is None:
            raise not_found("snapshot")
        request = spec.SandboxCreateRequest(
            template_name=snapshot.template_name, env_vars=snapshot.env_vars,
            vcpu=snapshot.vcpu, memory=snapshot.memory, timeout=body.timeout,
            auto_pause=body.auto_pause,
            network_policy=body.network_policy or snapshot.network_policy)
        # Resolved as a create resolves it: the organization's own templates, then the
        # system ones (a user template renamed or deleted since is gone for the snapshot).
        template = self.store.template_named(org_id, snapshot.template_name)
        if template is None:
            try:
                self.runner.disk_mib(snapshot.template_name)
            except runtime.RunnerError:
                raise conflict("the snapshot's template no longer exists") from None
        self._restoring[snapshot.id] += 1
        try:
            try:
                record = self.store.insert_sandbox(
                    org_id, request, disk=snapshot.disk,
                    memory_capacity_mib=self.memory_capacity_mib,
                    template_id=template.id if template is not None else None)
            except QuotaExceeded as exc:
                raise ApiError(429, f"sandbox limit reached: an organization may have at "
                               f"most {spec.MAX_SANDBOXES_PER_ORG} sandboxes and this one "
                               f"has {exc.existing}; delete one first") from None
            except NoCapacity:
                raise _no_capacity(request.memory) from None
            return await self._launch(record, seed=self.snapshot_path(snapshot))
        finally:
            self._restoring[snapshot.id] -= 1
            if not self._restoring[snapshot.id]:
                del self._restoring[snapshot.id]

    async def delete_snapshot(self, org_id: str, snapshot_id: str) -> None:
        snapshot = self.store.get_snapshot(snapshot_id, org_id, ready_only=False)
        if snapshot is None:
            raise not_found("snapshot")
        if not snapshot.ready:
            raise conflict("the snapshot is being created; try again when it is made")
        if self._restoring[snapshot.id]:
            raise conflict("the snapshot is in use: a sandbox is being restored from it")
        self.store.forget_snapshot(snapshot.id)
        path = self.snapshot_path(snapshot)
        await self._run(path.unlink, missing_ok=True)

    async def _recover_snapshots(self) -> None:
        """After a restart: snapshots whose making was cut short are forgotten, and
        archives that belong to no snapshot (a crash between the two) are removed."""
        keep: set[Path] = set()
        for snapshot in self.store.all_snapshots():
            if snapshot.ready:
                keep.add(self.snapshot_path(snapshot))
            else:
                self.store.forget_snapshot(snapshot.id)
        def sweep() -> None:
            for path in self.snapshot_dir.glob("*/*"):
                if path not in keep:
                    log.info("removing the orphaned snapshot archive %s", path.name)
                    path.unlink(missing_ok=True)
        if self.snapshot_dir.is_dir():
            await self._run(sweep)

    # --- Mounts -------------------------------------------------------------------------------

    async def add_mount(self, sandbox: SandboxRecord, mount: spec.MountRequest) -> MountRecord:
        sandbox_id = sandbox.id
        await self.ensure_running(sandbox)
        async with self._lock(sandbox_id):
            self._require_state(sandbox_id, S.RUNNING)
            try:
                record = self.store.add_mount(sandbox_id, mount)
            except MountConflict as exc:
                raise conflict(str(exc)) from None
            try:
                await self._run(self.runner.mounts.attach, sandbox_id, runtime.mount_config(record))
            except Exception as exc:
                self.store.delete_mount(sandbox_id, record.id)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.mounts.detach, sandbox_id, record.id)
                raise _mount_failed(exc) from None
        return record

    async def update_mount(
        self, sandbox: SandboxRecord, mount_id: str, update: spec.MountUpdateRequest
    ) -> MountRecord:
        sandbox_id = sandbox.id
        await self.ensure_running(sandbox)
        async with self._lock(sandbox_id):
            current = self._mount(self._require_state(sandbox_id, S.RUNNING), mount_id)
            changed = MountRecord(id=mount_id, config=update.apply_to(current.config))
            try:
                self.store.replace_mount(sandbox_id, mount_id, changed.config)
            except MountConflict as exc:
                raise conflict(str(exc)) from None
            try:
                await self._run(self.runner.mounts.detach, sandbox_id, mount_id)
                await self._run(self.runner.mounts.attach, sandbox_id,
                                runtime.mount_config(changed))
            except Exception as exc:
                # Put the old mount back, in the store and (as far as possible) in the sandbox.
                self.store.replace_mount(sandbox_id, mount_id, current.config)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.mounts.detach, sandbox_id, mount_id)
                    await self._run(self.runner.mounts.attach, sandbox_id,
                                    runtime.mount_config(current))
                raise _mount_failed(exc) from None
        return changed

    async def delete_mount(self, sandbox: SandboxRecord, mount_id: str) -> None:
        sandbox_id = sandbox.id
        await self.ensure_running(sandbox)
        async with self._lock(sandbox_id):
            self._mount(self._require_state(sandbox_id, S.RUNNING), mount_id)
            await self._run(self.runner.mounts.detach, sandbox_id, mount_id)
            self.store.delete_mount(sandbox_id, mount_id)

    def _require_state(self, sandbox_id: str, state: spec.SandboxState) -> SandboxRecord:
        record = self._reload(sandbox_id)
        if record.state != state:
            raise conflict(f"the sandbox is {record.state.value}, not {state.value}")
        return record

    @staticmethod
    def _mount(record: SandboxRecord, mount_id: str) -> MountRecord:
        for mount in record.mounts:
            if mount.id == mount_id:
                return mount
        raise not_found("mount")

    # --- Calls into a running sandbox ---------------------------------------------------------

    async def call(
        self,
        sandbox: SandboxRecord,
        fn: Callable[Concatenate[runtime.Runner, str, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(runner, sandbox_id, ...)`` (a filesystem call of ``runtime``) in a worker
        thread, on the sandbox running, answered within the server's call timeout."""
        return await self.call_within(self.call_timeout_s, sandbox, fn, *args, **kwargs)

    async def call_within(
        self,
        seconds: float,
        sandbox: SandboxRecord,
        fn: Callable[Concatenate[runtime.Runner, str, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``call``, answered within ``seconds``: a paused sandbox is resumed first."""
        sandbox_id = sandbox.id
        await self.ensure_running(sandbox)
        try:
            with runtime.translate_errors():
                return await self._run_within(
                    seconds, sandbox.org_id, fn, self.runner, sandbox_id, *args, **kwargs
                )
        except ApiError:
            raise
        except Exception:
            # The sandbox may have been deleted, stopped or paused under the call: then that
            # is the answer, not an internal error.
            record = self.store.get_sandbox(sandbox_id)
            if record is None:
                raise not_found() from None
            if record.state != S.RUNNING:
                raise conflict(f"the sandbox became {record.state.value} during the call") from None
            raise

    def identity(self, sandbox: SandboxRecord) -> runtime.SandboxIdentity:
        """Who the sandbox's processes are (a record read, no worker): 409 before its
        runner knows it."""
        with runtime.translate_errors():
            return runtime.identity(self.runner, sandbox.id)

    # --- Background work ----------------------------------------------------------------------

    async def recover(self) -> None:
        """Make the store tell the truth about sandboxes after a restart."""
        self.store.drop_unfinished_templates()
        await self._recover_snapshots()
        records = self.store.all_live_sandboxes()
        # Every sandbox we still own is "known", stopped ones included: the runner destroys
        # whatever is not known (orphans), and a stopped sandbox's disk must survive.
        known = [r.id for r in records if r.state != S.DELETING]
        alive = set(await self._run(self.runner.recover, known))
        for record in records:
            await self._settle(record, alive=record.id in alive)
        for record in records:
            if record.id in alive and record.state not in (S.DELETING, S.STOPPING, S.STOPPED):
                await self._restore_helpers(record)

    async def _settle(self, record: SandboxRecord, *, alive: bool) -> None:
        """Finish, or undo, the transition a sandbox was in when the backend went down."""
        if record.state == S.DELETING:
            with contextlib.suppress(Exception):
                await self._run(self.runner.destroy, record.id)
            self.store.forget_sandbox(record.id)
        elif record.state == S.STOPPED:
            return
        elif not alive:
            log.info("sandbox %s has no process after restart: stopped", record.id)
            self.store.set_state(record.id, S.STOPPED)
        elif record.state in (S.STARTING, S.UNPAUSING):
            self.store.set_state(record.id, S.RUNNING)
        elif record.state == S.SNAPSHOTTING:
            self.store.set_state(record.id, S.PAUSED)
        elif record.state == S.STOPPING:
            with contextlib.suppress(Exception):
                await self._run(self.runner.stop, record.id)
            self.store.set_state(record.id, S.STOPPED)

    async def _restore_helpers(self, record: SandboxRecord) -> None:
        """A sandbox's host-side helpers (rclone per mount, the egress filter of a custom
        policy) outlive a backend restart, but not every crash: start the dead ones again
        from the store."""
        configs = [runtime.mount_config(m) for m in record.mounts]
        try:
            again = await self._run(self.runner.mounts.reconcile, record.id, configs)
            if again:
                log.info("sandbox %s: mounts served again: %s", record.id, ", ".join(again))
            if record.network_policy is not None and await self._run(
                    self.runner.reconcile_network, record.id, record.network_policy):
                log.info("sandbox %s: egress filter started again", record.id)
        except Exception:  # one sandbox's helpers must not stop the startup
            log.exception("could not restore the helpers of sandbox %s", record.id)

    def start_reaper(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        # uvicorn ends the process by its signal after shutdown: no atexit runs then.
        await self._run(self.runner.close)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap(time.time())
            except Exception:
                log.exception("timeout reaper failed; trying again")

    async def reap(self, now: float) -> None:
        """Pause or delete every running sandbox past its deadline."""
        for sandbox_id in self.store.due_sandboxes(now):
            lock = self._lock(sandbox_id)
            if lock.locked():
                continue  # in transition: the next round looks again
            async with lock:
                record = self.store.get_sandbox(sandbox_id)
                if record is None or record.state != S.RUNNING or record.deadline_ts > now:
                    continue
                if record.auto_pause:
                    log.info("sandbox %s reached its timeout: pausing", sandbox_id)
                    await self._pause_locked(record)
                else:
                    log.info("sandbox %s reached its timeout: deleting", sandbox_id)
                    await self._delete_locked(sandbox_id)


def _no_capacity(memory: int) -> ApiError:
    # Nothing about other organizations' sandboxes: how full the host is is theirs too.
    return ApiError(503, f"no runner capacity is available: this server has no room for "
                    f"another sandbox of {memory} MiB now; try again later or ask for less "
                    "memory")


def _mount_failed(exc: Exception) -> Exception:
    """A mount the runner could not attach: the request's fault (endpoint, bucket, keys)."""
    if isinstance(exc, runtime.RunnerError):
        # Runner messages never carry credentials (its contract), so the cause can be shown.
        return invalid("endpoint", f"the bucket could not be mounted: {exc}")
    return exc
