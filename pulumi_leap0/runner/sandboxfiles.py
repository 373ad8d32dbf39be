"""The file calls on a running sandbox, by its id: ``Runner.files``.

Each call finds the sandbox's record (``SandboxNotFoundError``, ``SandboxNotRunningError``)
and hands it to the sandbox's file helper (``filecalls.FileHelpers``), which does the call
in the sandbox. A new file call is one method here (see ``filecalls.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pulumi_leap0.runner.filecalls import FileHelpers, FileReader, FilesReader
from pulumi_leap0.runner.state import Records
from pulumi_leap0.spec import FileInfo


class SandboxFiles:
    """Every running sandbox's files, as its user sees them."""

    def __init__(self, records: Records, helpers: FileHelpers) -> None:
        self._records = records
        self._helpers = helpers

    def list_dir(self, sandbox_id: str, path: str, *, recursive: bool = False,
                 exclude: Sequence[str] = ()) -> list[FileInfo]:
        return self._helpers.list_dir(self._records.running(sandbox_id), path,
                                      recursive=recursive, exclude=exclude)

    def stat(self, sandbox_id: str, path: str) -> FileInfo:
        return self._helpers.stat(self._records.running(sandbox_id), path)

    def exists(self, sandbox_id: str, path: str) -> bool:
        return self._helpers.exists(self._records.running(sandbox_id), path)

    def mkdir(self, sandbox_id: str, path: str, *, recursive: bool = False,
              mode: int = 0o755) -> None:
        self._helpers.mkdir(self._records.running(sandbox_id), path, recursive=recursive,
                            mode=mode)

    def write_file(self, sandbox_id: str, path: str, content: bytes | Iterable[bytes], *,
                   mode: int | None = None) -> None:
        self._helpers.write_file(self._records.running(sandbox_id), path, content, mode=mode)

    def open_file(self, sandbox_id: str, path: str, *, offset: int = 0,
                  limit: int | None = None, head: int | None = None,
                  tail: int | None = None) -> FileReader:
        return self._helpers.open_file(self._records.running(sandbox_id), path, offset=offset,
                                       limit=limit, head=head, tail=tail)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return b"".join(self.open_file(sandbox_id, path))

    def delete(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        self._helpers.delete(self._records.running(sandbox_id), path, recursive=recursive)

    def set_permissions(self, sandbox_id: str, path: str, *, mode: int | None = None,
                        owner: str | None = None, group: str | None = None) -> None:
        self._helpers.set_permissions(self._records.running(sandbox_id), path, mode=mode,
                                      owner=owner, group=group)

    def glob(self, sandbox_id: str, path: str, pattern: str | None,
             exclude: Sequence[str] = ()) -> list[str]:
        return self._helpers.glob(self._records.running(sandbox_id), path, pattern, exclude)

    def grep(self, sandbox_id: str, path: str, pattern: str, *, include: str | None = None,
             exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._helpers.grep(self._records.running(sandbox_id), path, pattern,
                                  include=include, exclude=exclude)

    def tree(self, sandbox_id: str, path: str, *, max_depth: int,
             exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._helpers.tree(self._records.running(sandbox_id), path, max_depth=max_depth,
                                  exclude=exclude)

    def edit_file(self, sandbox_id: str, path: str,
                  edits: Sequence[tuple[str, str]]) -> dict[str, Any]:
        return self._helpers.edit_file(self._records.running(sandbox_id), path, edits)

    def edit_files(self, sandbox_id: str, paths: Sequence[str], find: str,
                   replace: str) -> list[dict[str, Any]]:
        return self._helpers.edit_files(self._records.running(sandbox_id), paths, find, replace)

    def move(self, sandbox_id: str, src: str, dst: str, *, overwrite: bool = False) -> None:
        self._helpers.move(self._records.running(sandbox_id), src, dst, overwrite=overwrite)

    def copy(self, sandbox_id: str, src: str, dst: str, *, recursive: bool = False,
             overwrite: bool = False) -> None:
        self._helpers.copy(self._records.running(sandbox_id), src, dst, recursive=recursive,
                           overwrite=overwrite)

    def write_files(self, sandbox_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        self._helpers.write_files(self._records.running(sandbox_id), items)

    def open_files(self, sandbox_id: str, paths: Sequence[str]) -> FilesReader:
        return self._helpers.open_files(self._records.running(sandbox_id), paths)
