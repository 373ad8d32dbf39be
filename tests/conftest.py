from __future__ import annotations

import sys
import typing
from pathlib import Path

import typing_extensions

# The official leap0 SDK builds pydantic models over typing.TypedDict, which pydantic
# accepts only from Python 3.12; on 3.11 the typing_extensions one works the same.
if sys.version_info < (3, 12):
    typing.TypedDict = typing_extensions.TypedDict  # type: ignore[misc]

# Every module in tests/fixtures/ is a fixture plugin shared by all tests.
pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
