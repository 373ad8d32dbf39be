"""Helpers for the backend tests: the official SDK pointed at the local server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.fixtures.backend import BackendServer

#: The template every test sandbox uses: the SDK's own default.
TEMPLATE = "system/debian:bookworm"


@contextmanager
def sdk(backend: BackendServer, api_key: str, **options: Any) -> Iterator[Any]:
    """A ``leap0.Leap0Client`` for ``api_key`` at the local backend."""
    from leap0 import Leap0Client

    client = Leap0Client(
        api_key=api_key, base_url=backend.base_url, sdk_otel_enabled=False, **options
    )
    try:
        yield client
    finally:
        client.close()


def http(backend: BackendServer, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=backend.base_url, headers=headers, timeout=60.0)


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
