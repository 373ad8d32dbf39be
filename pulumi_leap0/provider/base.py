"""What every Leap0 resource provider shares: credentials and a client per call, waiting,
cleanup when create fails half-way, the diff answer, and errors worth reading.

Facts about the engine that shape it (see docs/architecture.md):

* The provider object is pickled into every resource's state, so it holds nothing but plain
  configuration: no client, no socket, no credential. A client is built inside each call.
* Create, update and delete get no timeout from the engine: each wait here has its own.
* The dynamic provider's Diff passes on only ``changes``, ``replaces`` and
  ``delete_before_replace``: :func:`diff_result` sets all three.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import Any, Protocol, TypeVar

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    DiffResult,
    ResourceProvider,
)

from pulumi_leap0.client import API_KEY_ENV, BASE_URL_ENV, Leap0Client, Leap0Error

#: How long create waits for what it made to be ready, unless ``create_timeout`` says.
CREATE_TIMEOUT_DEFAULT_S = 300.0
DELETE_TIMEOUT_S = 300.0
# Most sandboxes run within tens of milliseconds: poll soon, then back off.
FIRST_POLL_S, MAX_POLL_S = 0.02, 1.0


class ProviderError(Exception):
    """A failure worth reading in `pulumi up` output: what went wrong and what to do."""


class Leap0Provider(ResourceProvider):
    """A dynamic provider reaching Leap0 with the stack's credentials. Pickled into state:
    subclasses add no attributes."""

    # Pulumi marks the pickled provider secret by default; it holds no secret, and a
    # readable provider in state is easier to debug.
    serialize_as_secret_always = False

    def __init__(self) -> None:
        self._api_key: str | None = None
        self._base_url: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # configure() may have run before pickling (program-side Sandbox.get); the key must
        # never travel into state with the provider.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def configure(self, req: ConfigureRequest) -> None:
        self._api_key = req.config.get("leap0:apiKey") or None
        self._base_url = req.config.get("leap0:baseUrl") or None

    @contextmanager
    def client(self) -> Iterator[Leap0Client]:
        api_key = self._api_key or os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ProviderError(
                "no Leap0 API key: set it with `pulumi config set --secret leap0:apiKey <key>` "
                f"or in the {API_KEY_ENV} environment variable"
            )
        base_url = self._base_url or os.environ.get(BASE_URL_ENV)
        with Leap0Client(api_key, base_url) as client:
            yield client


def check_result(news: dict[str, Any],
                 normalized: tuple[dict[str, Any], list[CheckFailure]]) -> CheckResult:
    """The engine's answer to check: the inputs in normal form, or, when a rule broke, what
    the user wrote, so that the engine reports the failures against it."""
    inputs, failures = normalized
    return CheckResult(news, failures) if failures else CheckResult(inputs, [])


def diff_result(
    news: Mapping[str, Any],
    olds: Mapping[str, Any],
    changed: list[str],
    replace_on_change: Collection[str],
) -> DiffResult:
    """The engine's answer for the compared inputs that ``changed``.

    Replacement always deletes first: Leap0 counts sandboxes and templates against quotas
    and keeps names unique, so a replacement made beside the old one may well be refused.
    """
    # A new version of the provider alone is an update that keeps every output.
    provider_changed = news.get("__provider") != olds.get("__provider")
    return DiffResult(
        changes=bool(changed) or provider_changed,
        replaces=[name for name in changed if name in replace_on_change],
        delete_before_replace=True,
    )


# --- Calls that wait -------------------------------------------------------------------------


class Backoff:
    """Sleeps growing from FIRST_POLL_S to MAX_POLL_S, while a deadline allows another."""

    def __init__(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s
        self._interval = FIRST_POLL_S

    def pause(self) -> bool:
        """Sleep the next interval; False, without sleeping, when it would pass the deadline."""
        if time.monotonic() + self._interval > self._deadline:
            return False
        time.sleep(self._interval)
        self._interval = min(self._interval * 2, MAX_POLL_S)
        return True


class Stateful(Protocol):
    @property
    def state(self) -> Enum: ...


StatefulT = TypeVar("StatefulT", bound=Stateful)
T = TypeVar("T")


def wait_until(
    current: StatefulT,
    fetch: Callable[[], StatefulT],
    want: Collection[Enum],
    passing: Collection[Enum],
    *,
    timeout_s: float,
    what: str,
    hint: str,
) -> StatefulT:
    """Poll until ``current`` is in a ``want`` state. Fail at once in a state it does not
    pass through on the way (``passing``), and after ``timeout_s`` with ``hint``."""
    backoff = Backoff(timeout_s)
    while current.state not in want:
        if current.state not in passing:
            raise ProviderError(f"gave up waiting for {what}: it is {current.state.value}")
        if not backoff.pause():
            raise ProviderError(
                f"gave up waiting for {what} after {timeout_s:g} s "
                f"(it is {current.state.value}); {hint}"
            )
        current = fetch()
    return current


def delete_and_wait(
    delete: Callable[[], None], gone: Callable[[], bool], *, what: str,
    timeout_s: float = DELETE_TIMEOUT_S,
) -> None:
    """Delete, waiting through transitions (409); what is already gone (404) is success."""
    backoff = Backoff(timeout_s)
    while True:
        try:
            delete()
            if gone():
                return
        except Leap0Error as exc:
            if exc.not_found:
                return
            if not exc.conflict:
                raise
        if not backoff.pause():
            raise ProviderError(f"{what} was not gone after {timeout_s:g} s")


@contextmanager
def deleted_on_failure(made: str, delete: Callable[[], None]) -> Iterator[None]:
    """Nothing half-made stays behind: ``made`` is deleted if the block fails, and a failure
    to delete it is added to the original error, which is the one to report."""
    try:
        yield
    except BaseException as failure:
        try:
            delete()
        except Exception as exc:
            failure.add_note(f"and {made} could not be deleted afterwards ({exc}); delete it")
        raise


# --- Errors ----------------------------------------------------------------------------------


def found(get: Callable[[], T]) -> T | None:
    """What ``get`` answers, or None where the API says 404."""
    try:
        return get()
    except Leap0Error as exc:
        if exc.not_found:
            return None
        raise


def create_error(exc: Leap0Error, noun: str, *, refused: str, listing: str) -> ProviderError:
    """A failed create in the words of ``pulumi up``: ``refused`` says what to do about a
    conflict (409), ``listing`` where to look for one that may exist after all."""
    if exc.conflict:
        return ProviderError(f"Leap0 refused the {noun}: {exc.message}. {refused}")
    if exc.errors:
        return ProviderError(
            f"Leap0 rejected the {noun}: " + "; ".join(f"{e.field}: {e.error}" for e in exc.errors)
        )
    if exc.status == 0:
        # The POST may have reached the server; it is never retried (it could make two).
        return ProviderError(
            f"Leap0 could not be reached to create the {noun} ({exc.message}); if the request "
            f"got through, a {noun} may exist: list them with {listing}"
        )
    return ProviderError(f"Leap0 could not create the {noun}: {exc}")
