"""Each organization's fair share of the backend's workers.

Every request that may hold a worker thread (and, through it, a runner process) takes one
unit of its organization's share in one of two lanes, before its body is read, and holds
it until it is answered:

* ``Lane.CALLS``: execute and the file calls, ``spec.MAX_CALLS_PER_ORG`` at once. Nothing
  else bounds them: a sandbox runs any number of calls, and a call may take minutes.
* ``Lane.CHANGES``: create, pause, stop, start, delete and the mounts calls,
  ``spec.MAX_CHANGES_PER_ORG`` at once. A lane of their own so that an organization whose
  calls fill their share can still delete the sandbox that runs them.

A request over its share waits for a unit, first come first served, at most ``WAIT_S``
seconds and behind at most ``QUEUE`` others; then it is answered 429 with ``Retry-After``.
Why wait at all: bursts a little over the share (twenty execs at once, a stack creating
its sandboxes) are ordinary use, and a waiting request costs no thread and, since its body
is not read yet, next to no memory. Why 429 after that, not a longer wait: it is the
document's answer for too many at once, the official SDK raises it as a rate limit to back
off from, ``client.py`` retries it on every call, and it comes before anything was done.

A call the lifecycle gave up on (its answer timed out while its thread runs on) keeps a
unit ``borrow``ed until the thread ends, so work nobody waits for any more still counts
against the organization that started it, never against the others.

The thread pool (``WORKER_THREADS``) holds the full shares of many organizations at once,
so one organization at its share never makes another wait for a thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import AsyncIterator, Callable

from pulumi_leap0 import spec
from pulumi_leap0.backend.errors import ApiError

WAIT_S = 10.0
QUEUE = 32
RETRY_AFTER_S = 1
#: 21 organizations' full shares (8 calls + 4 changes each); anyio's default is 40.
WORKER_THREADS = 256


class Lane(enum.Enum):
    CALLS = "calls into its sandboxes"
    CHANGES = "changes to its sandboxes"


SIZES = {Lane.CALLS: spec.MAX_CALLS_PER_ORG, Lane.CHANGES: spec.MAX_CHANGES_PER_ORG}


class Share:
    """``size`` units; a released unit goes to the longest waiter, if any."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def idle(self) -> bool:
        return self.in_use == 0 and not self._waiters

    async def take(self, wait_s: float, queue: int) -> bool:
        """Take a unit, waiting at most ``wait_s`` behind at most ``queue`` others."""
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1
            return True
        if len(self._waiters) >= queue:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, wait_s)
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a unit as the request went away: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def borrow(self) -> None:
        """One more unit in use, even over the size (work that outlives its request)."""
        self.in_use += 1

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the unit changes hands; in_use stays
                return
        self.in_use -= 1


class Shares:
    """Every organization's share in each lane; a share exists while it is in use."""

    def __init__(self, wait_s: float = WAIT_S, queue: int = QUEUE) -> None:
        self.wait_s = wait_s
        self.queue = queue
        self._shares: dict[tuple[str, Lane], Share] = {}

    def _share(self, org: str, lane: Lane) -> Share:
        share = self._shares.get((org, lane))
        if share is None:
            share = self._shares[(org, lane)] = Share(SIZES[lane])
        return share

    def _release(self, org: str, lane: Lane, share: Share) -> None:
        share.release()
        if share.idle():
            self._shares.pop((org, lane), None)

    @contextlib.asynccontextmanager
    async def slot(self, org: str, lane: Lane) -> AsyncIterator[None]:
        """Hold one unit of ``org``'s share in ``lane``, or answer 429."""
        share = self._share(org, lane)
        if not await share.take(self.wait_s, self.queue):
            if share.idle():
                self._shares.pop((org, lane), None)
            raise ApiError(
                429,
                f"too many requests: this organization already runs {share.size} "
                f"{lane.value}, the most it may at once; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            yield
        finally:
            self._release(org, lane, share)

    def borrow(self, org: str, lane: Lane) -> Callable[[], None]:
        """Count one more unit against ``org`` until the returned function is called."""
        share = self._share(org, lane)
        share.borrow()
        return lambda: self._release(org, lane, share)
