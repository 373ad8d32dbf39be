"""Fixtures of the SDK tests: the official ``leap0`` client for a fresh organization
(``sdk_client``, beside the project's own ``client``), and a deny-all sandbox of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.backend.helpers import TEMPLATE, sdk
from tests.fixtures.backend import BackendServer
from tests.support import require


@pytest.fixture
def sdk_client(backend: BackendServer, api_key: str) -> Iterator[Any]:
    require(os.geteuid() == 0, "file calls as the sandbox user need a root runner")
    with sdk(backend, api_key) as leap0:
        yield leap0


@pytest.fixture
def box(sdk_client: Any) -> Iterator[Any]:
    sandbox = sdk_client.sandboxes.create(template_name=TEMPLATE,
                                      network_policy={"mode": "deny-all"})
    try:
        yield sandbox
    finally:
        sdk_client.sandboxes.delete(sandbox.id)
