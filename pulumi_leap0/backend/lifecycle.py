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
import threading
import time
from collections.abc import Callable
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
    Store,
)

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
    def __init__(self, store: Store, runner: runtime.Runner, *,
                 shares: Shares | None = None, call_timeout_s: float = CALL_TIMEOUT_S,
                 memory_capacity_mib: int | None = None) -> None:
        self.store = store
        self.runner = runner
        #: MiB of memory all sandboxes may hold at once (``backend/capacity.py``); None: any.
        self.memory_capacity_mib = memory_capacity_mib
        self.shares = shares or Shares()
        self.call_timeout_s = call_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

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
        try:
            disk = self.runner.disk_mib(request.template_name)
        except runtime.RunnerError:  # its one complaint here: a template it does not know
            raise invalid("template_name", "must name a known template") from None
        try:
            record = self.store.insert_sandbox(
                org_id, request, disk=disk, memory_capacity_mib=self.memory_capacity_mib
            )
        except QuotaExceeded as exc:
            raise conflict(
                f"sandbox limit reached: an organization may have at most "
                f"{spec.MAX_SANDBOXES_PER_ORG} sandboxes and this one has {exc.existing}; "
                "delete one first"
            ) from None
        except NoCapacity:
            raise _no_capacity(request.memory) from None
        async with self._lock(record.id):
            try:
                await self._run(self.runner.start, runtime.sandbox_config(record))
            except Exception as exc:
                # Nothing half-made is left behind, and the quota slot is given back.
                log.error("sandbox %s failed to start: %s: %s", record.id, type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.destroy, record.id)
                self.store.forget_sandbox(record.id)
                if isinstance(exc, runtime.RunnerError) and record.mounts:
                    # The one part of a valid request that can fail on the outside world.
                    raise invalid("mounts", f"could not be attached: {exc}") from None
                raise ApiError(503, "the sandbox could not be started") from None
            self.store.set_state(
                record.id, S.RUNNING, launched=True, deadline_ts=time.time() + record.timeout
            )
        return self._reload(record.id)

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
                await self._run(self.runner.start, runtime.sandbox_config(record))
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
                await self._run(self.runner.mount, sandbox_id, runtime.mount_config(record))
            except Exception as exc:
                self.store.delete_mount(sandbox_id, record.id)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.unmount, sandbox_id, record.id)
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
                await self._run(self.runner.unmount, sandbox_id, mount_id)
                await self._run(self.runner.mount, sandbox_id, runtime.mount_config(changed))
            except Exception as exc:
                # Put the old mount back, in the store and (as far as possible) in the sandbox.
                self.store.replace_mount(sandbox_id, mount_id, current.config)
                with contextlib.suppress(Exception):
                    await self._run(self.runner.unmount, sandbox_id, mount_id)
                    await self._run(self.runner.mount, sandbox_id, runtime.mount_config(current))
                raise _mount_failed(exc) from None
        return changed

    async def delete_mount(self, sandbox: SandboxRecord, mount_id: str) -> None:
        sandbox_id = sandbox.id
        await self.ensure_running(sandbox)
        async with self._lock(sandbox_id):
            self._mount(self._require_state(sandbox_id, S.RUNNING), mount_id)
            await self._run(self.runner.unmount, sandbox_id, mount_id)
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
            again = await self._run(self.runner.reconcile_mounts, record.id, configs)
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
