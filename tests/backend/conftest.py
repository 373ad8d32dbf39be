"""Fixtures of the SDK tests: the official ``leap0`` client for a fresh organization, and a
deny-all sandbox of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.backend.helpers import TEMPLATE, sdk
from tests.fixtures.backend import BackendServer
from tests.support import require


@pytest.fixture
def client(backend: BackendServer, api_key: str) -> Iterator[Any]:
    require(os.geteuid() == 0, "file calls as the sandbox user need a root runner")
    with sdk(backend, api_key) as leap0:
        yield leap0


@pytest.fixture
def box(client: Any) -> Iterator[Any]:
    sandbox = client.sandboxes.create(template_name=TEMPLATE,
                                      network_policy={"mode": "deny-all"})
    try:
        yield sandbox
    finally:
        client.sandboxes.delete(sandbox.id)
