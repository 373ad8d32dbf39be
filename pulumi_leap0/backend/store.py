"""The backend's state in one sqlite file (WAL), with explicit SQL.

Why sqlite: one file in the data dir, transactions that span processes (``leap0-backend
api-key create`` writes while the server runs), and reads of one row cost microseconds.

The file holds what a sandbox needs to be rebuilt after a restart, including credentials
(mount keys, injected headers, env values): a stopped sandbox must be startable again after
the server restarts. The file is therefore created with mode 0600, and nothing here ever
logs or returns those values; responses are built from the non-secret columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pulumi_leap0 import spec

DB_FILE_NAME: Final = "leap0.db"
API_KEY_PREFIX: Final = "l0_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    template_name TEXT NOT NULL,
    vcpu INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    auto_pause INTEGER NOT NULL,
    env_vars TEXT NOT NULL,
    network_policy TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    state_changed_at TEXT NOT NULL,
    launch_time TEXT,
    deadline_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_org ON sandboxes(org_id, state);
CREATE TABLE IF NOT EXISTS mounts (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    config TEXT NOT NULL,
    created_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mounts_sandbox ON mounts(sandbox_id);
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    digest TEXT,
    image_config TEXT,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    template_name TEXT NOT NULL,
    vcpu INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    env_vars TEXT NOT NULL,
    network_policy TEXT,
    ready INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE IF NOT EXISTS presigned_urls (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    port INTEGER NOT NULL,
    created_ts REAL NOT NULL,
    expires_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS presigned_urls_sandbox ON presigned_urls(sandbox_id);
"""
#: Columns added after the first release, for files made before them.
_MIGRATIONS = (("sandboxes", "template_id", "TEXT"),)


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain sha256 is enough: there is nothing to
    # brute-force that a slow hash would protect.
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_sandbox_id() -> str:
    return spec.SANDBOX_ID_PREFIX + uuid.uuid4().hex[:20]


def new_mount_id() -> str:
    return spec.MOUNT_ID_PREFIX + uuid.uuid4().hex[:16]


def new_template_id() -> str:
    return spec.TEMPLATE_ID_PREFIX + uuid.uuid4().hex[:20]


def new_snapshot_id() -> str:
    return spec.SNAPSHOT_ID_PREFIX + uuid.uuid4().hex[:20]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class QuotaExceeded(Exception):
    def __init__(self, existing: int) -> None:
        self.existing = existing
        super().__init__(existing)


class TemplateConflict(Exception):
    """A name taken, the organization at its template limit, or a template in use; the
    message says which, in the API's words."""


class NoCapacity(Exception):
    """The sandbox's memory does not fit beside that of the sandboxes holding memory."""


#: States in which a sandbox holds no memory of the host (see ``backend/capacity.py``).
_HOLDS_NO_MEMORY = (spec.SandboxState.STOPPED.value, spec.SandboxState.DELETED.value)


@dataclass(frozen=True, slots=True)
class MountRecord:
    id: str
    config: spec.MountRequest

    def public(self) -> spec.Mount:
        c = self.config
        return spec.Mount(
            id=self.id,
            bucket=c.bucket,
            mount_path=c.mount_path,
            prefix=c.prefix,
            read_only=c.read_only,
        )


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """``digest`` is None while the upload runs: such a template is nobody's to use yet,
    but holds its name and a place under the limit. No credentials: they served the
    upload only."""

    id: str
    org_id: str
    name: str
    uri: str
    digest: str | None
    image_config: spec.ImageConfig | None
    created_at: str

    def public(self) -> spec.Template:
        assert self.digest is not None and self.image_config is not None
        return spec.Template(id=self.id, name=self.name, digest=self.digest,
                             image_config=self.image_config, is_system=False,
                             created_at=self.created_at)


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    org_id: str
    template_name: str
    vcpu: int
    memory: int
    disk: int
    timeout: int
    auto_pause: bool
    env_vars: dict[str, str]
    network_policy: spec.NetworkPolicy | None
    state: spec.SandboxState
    created_at: str
    created_ts: float
    state_changed_at: str
    launch_time: str | None
    deadline_ts: float
    mounts: tuple[MountRecord, ...]
    #: The user template it boots from (``tpl-...``); None for a system template.
    template_id: str | None = None

    def public(self) -> spec.Sandbox:
        """The sandbox as the API shows it: no env values, no mount credentials."""
        return spec.Sandbox(
            id=self.id,
            template_id=self.template_name,
            vcpu=self.vcpu,
            memory=self.memory,
            disk=self.disk,
            timeout=self.timeout,
            state=self.state,
            auto_pause=self.auto_pause,
            created_at=self.created_at,
            mounts=[m.public() for m in self.mounts],
            network_policy=public_network_policy(self.network_policy),
        )

    def list_item(self) -> spec.SandboxListItem:
        return spec.SandboxListItem(
            id=self.id,
            template_id=self.template_name,
            pod_id="local" if self.launch_time else "",
            state=self.state,
            created_at=self.created_at,
            launch_time=self.launch_time,
            state_change_time=self.state_changed_at,
            timeout_at=int(self.deadline_ts),
        )


def public_network_policy(policy: spec.NetworkPolicy | None) -> spec.NetworkPolicy:
    """The policy as responses show it: injected header values are credentials.

    The header names stay, so a refresh can tell that a header is configured; the values
    are replaced by an empty string and never leave the server.
    """
    policy = policy or spec.NetworkPolicy(mode="allow-all")
    if not any(t.inject_headers for t in policy.transforms):
        return policy
    transforms = [
        t.model_copy(update={"inject_headers": dict.fromkeys(t.inject_headers, "")})
        for t in policy.transforms
    ]
    return policy.model_copy(update={"transforms": transforms})


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot: the configuration it restores (env values and header values included,
    like a sandbox's) beside its archive (``Lifecycle`` knows where that is). ``ready`` is
    false while it is being made: the name is taken, nothing can restore it yet."""

    id: str
    org_id: str
    name: str
    template_name: str
    vcpu: int
    memory: int
    disk: int
    env_vars: dict[str, str]
    network_policy: spec.NetworkPolicy | None
    ready: bool
    size_bytes: int
    created_at: str
    created_ts: float

    def public(self) -> spec.Snapshot:
        return spec.Snapshot(
            id=self.id, name=self.name, template_id=self.template_name, vcpu=self.vcpu,
            memory=self.memory, disk=self.disk, created_at=self.created_at,
            network_policy=public_network_policy(self.network_policy),
        )


class SnapshotConflict(Exception):
    """A name taken in the organization, or the organization at its snapshot limit."""


_SANDBOX_COLUMNS = (
    "id, org_id, template_name, vcpu, memory, disk, timeout, auto_pause, env_vars, "
    "network_policy, state, created_at, created_ts, state_changed_at, launch_time, deadline_ts"
)
_SANDBOX_WITH_MOUNTS = (
    f"SELECT {', '.join('s.' + c.strip() for c in _SANDBOX_COLUMNS.split(','))}, s.template_id, "
    "m.id AS mount_id, m.config AS mount_config FROM sandboxes AS s "
    "LEFT JOIN mounts AS m ON m.sandbox_id = s.id WHERE s.id = ? AND s.state != ? "
    "ORDER BY m.created_ts"
)
_TEMPLATE_COLUMNS = "id, org_id, name, uri, digest, image_config, created_at"
_SORT_COLUMNS: Final = {"created_at": "created_ts", "state": "state"}
_SNAPSHOT_COLUMNS = (
    "id, org_id, name, template_name, vcpu, memory, disk, env_vars, network_policy, ready, "
    "size_bytes, created_at, created_ts"
)
_SNAPSHOT_SORT_COLUMNS: Final = {"created_at": "created_ts", "template_id": "template_name"}


class Store:
    """One connection, shared by the event loop and the worker threads behind a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file 0600 before sqlite opens it: it holds credentials.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for table, column, kind in _MIGRATIONS:
                have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write (the quota
        # check and the insert) cannot interleave with another writer, in this process or
        # in another one.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- Organizations and keys ---------------------------------------------------------------

    def create_api_key(self, org_name: str) -> str:
        """A new key for ``org_name``, creating the organization if needed. Returns the key."""
        key = new_api_key()
        now = iso(time.time())
        with self._transaction() as db:
            row = db.execute("SELECT id FROM orgs WHERE name = ?", (org_name,)).fetchone()
            if row is None:
                org_id = "org-" + uuid.uuid4().hex[:16]
                db.execute(
                    "INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)",
                    (org_id, org_name, now),
                )
            else:
                org_id = row["id"]
            db.execute(
                "INSERT INTO api_keys (key_hash, org_id, created_at) VALUES (?, ?, ?)",
                (hash_key(key), org_id, now),
            )
        return key

    def org_for_key_hash(self, key_hash: str) -> str | None:
        rows = self._query("SELECT org_id FROM api_keys WHERE key_hash = ?", (key_hash,))
        return str(rows[0]["org_id"]) if rows else None

    # --- Sandboxes ----------------------------------------------------------------------------

    def insert_sandbox(
        self,
        org_id: str,
        request: spec.SandboxCreateRequest,
        *,
        disk: int,
        limit: int = spec.MAX_SANDBOXES_PER_ORG,
        memory_capacity_mib: int | None = None,
        template_id: str | None = None,
    ) -> SandboxRecord:
        """Insert a new sandbox in ``starting``, unless the organization is at its limit
        (``QuotaExceeded``) or its memory does not fit in the capacity (``NoCapacity``).
        ``template_id``: its user template, which must still exist (``TemplateConflict``):
        in the same transaction as a template's delete checks for its sandboxes."""
        sandbox_id = new_sandbox_id()
        now = time.time()
        with self._transaction() as db:
            _admit(db, org_id, request.memory, limit=limit, capacity=memory_capacity_mib,
                   template_id=template_id)
            policy = request.network_policy
            db.execute(
                f"INSERT INTO sandboxes ({_SANDBOX_COLUMNS}, template_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sandbox_id, org_id, request.template_name, request.vcpu, request.memory,
                 disk, request.timeout, int(request.auto_pause), json.dumps(request.env_vars),
                 policy.model_dump_json() if policy else None,
                 spec.SandboxState.STARTING.value, iso(now), now, iso(now), None,
                 now + request.timeout, template_id),
            )
            for offset, mount in enumerate(request.mounts):
                db.execute(
                    "INSERT INTO mounts (id, sandbox_id, config, created_ts) VALUES (?, ?, ?, ?)",
                    (new_mount_id(), sandbox_id, mount.model_dump_json(), now + offset * 1e-6),
                )
        record = self.get_sandbox(sandbox_id)
        assert record is not None
        return record

    def get_sandbox(self, sandbox_id: str, org_id: str | None = None) -> SandboxRecord | None:
        """The sandbox (of ``org_id`` when given); ``None`` when unknown, foreign or deleted."""
        # One statement, the sandbox's columns repeated on each of its mounts' rows: the
        # status read is the API's hot path, and a second statement costs as much again.
        rows = self._query(_SANDBOX_WITH_MOUNTS, (sandbox_id, spec.SandboxState.DELETED.value))
        if not rows or (org_id is not None and rows[0]["org_id"] != org_id):
            return None
        row = rows[0]
        mounts = [(m["mount_id"], m["mount_config"]) for m in rows if m["mount_id"] is not None]
        return _sandbox(row, mounts)

    def list_sandboxes(
        self,
        org_id: str,
        *,
        state: spec.SandboxState | None,
        sort: str,
        descending: bool,
        page: int,
        page_size: int,
    ) -> tuple[list[SandboxRecord], int]:
        where = "org_id = ? AND state != ?"
        args: list[Any] = [org_id, spec.SandboxState.DELETED.value]
        if state is not None:
            where += " AND state = ?"
            args.append(state.value)
        direction = "DESC" if descending else "ASC"
        # Sort columns come from a fixed map, never from the request text.
        order = f"{_SORT_COLUMNS[sort]} {direction}, id {direction}"
        offset = (page - 1) * page_size
        with self._lock:
            (total,) = self._db.execute(
                f"SELECT COUNT(*) FROM sandboxes WHERE {where}", args
            ).fetchone()
            if offset >= total:
                # Past the last sandbox, and sqlite binds no integer past 2**63 - 1: the API
                # sets no largest page, so an empty page is the answer, not an overflow.
                return [], int(total)
            rows = self._db.execute(
                f"SELECT {_SANDBOX_COLUMNS}, template_id FROM sandboxes WHERE {where} "
                f"ORDER BY {order} "
                "LIMIT ? OFFSET ?",
                [*args, page_size, offset],
            ).fetchall()
        return [_sandbox(row, []) for row in rows], int(total)

    def all_live_sandboxes(self) -> list[SandboxRecord]:
        """Every sandbox not yet deleted, of every organization (startup and the reaper)."""
        rows = self._query(
            f"SELECT {_SANDBOX_COLUMNS}, template_id FROM sandboxes WHERE state != ?",
            (spec.SandboxState.DELETED.value,),
        )
        return [r for r in (self.get_sandbox(row["id"]) for row in rows) if r is not None]

    def due_sandboxes(self, now: float) -> list[str]:
        rows = self._query(
            "SELECT id FROM sandboxes WHERE state = ? AND deadline_ts <= ?",
            (spec.SandboxState.RUNNING.value, now),
        )
        return [str(row["id"]) for row in rows]

    def set_state(
        self,
        sandbox_id: str,
        state: spec.SandboxState,
        *,
        launched: bool = False,
        deadline_ts: float | None = None,
    ) -> None:
        now = time.time()
        sets = ["state = ?", "state_changed_at = ?"]
        args: list[Any] = [state.value, iso(now)]
        if launched:
            sets.append("launch_time = ?")
            args.append(iso(now))
        if deadline_ts is not None:
            sets.append("deadline_ts = ?")
            args.append(deadline_ts)
        with self._transaction() as db:
            db.execute(f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = ?", [*args, sandbox_id])

    def claim_start(self, sandbox_id: str, memory: int, memory_capacity_mib: int | None) -> None:
        """Move a stopped sandbox to ``starting`` if its memory fits (else ``NoCapacity``)."""
        with self._transaction() as db:
            _claim_memory(db, memory, memory_capacity_mib)
            db.execute(
                "UPDATE sandboxes SET state = ?, state_changed_at = ? WHERE id = ?",
                (spec.SandboxState.STARTING.value, iso(time.time()), sandbox_id),
            )

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Remove every trace of a deleted sandbox, credentials included."""
        with self._transaction() as db:
            db.execute("DELETE FROM mounts WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM presigned_urls WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    # --- Mounts -------------------------------------------------------------------------------

    def add_mount(self, sandbox_id: str, mount: spec.MountRequest) -> MountRecord:
        """Add a mount, unless the sandbox is at the mount limit or the path is taken."""
        record = MountRecord(id=new_mount_id(), config=mount)
        with self._transaction() as db:
            rows = db.execute(
                "SELECT config FROM mounts WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchall()
            if len(rows) >= spec.MAX_MOUNTS:
                raise MountConflict(f"the sandbox already has {spec.MAX_MOUNTS} mounts, the limit")
            paths = [spec.MountRequest.model_validate_json(r["config"]).mount_path for r in rows]
            if mount.mount_path in paths:
                raise MountConflict("another mount already uses this mount_path")
            db.execute(
                "INSERT INTO mounts (id, sandbox_id, config, created_ts) VALUES (?, ?, ?, ?)",
                (record.id, sandbox_id, mount.model_dump_json(), time.time()),
            )
        return record

    def replace_mount(self, sandbox_id: str, mount_id: str, mount: spec.MountRequest) -> None:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT config FROM mounts WHERE sandbox_id = ? AND id != ?",
                (sandbox_id, mount_id),
            ).fetchall()
            paths = [spec.MountRequest.model_validate_json(r["config"]).mount_path for r in rows]
            if mount.mount_path in paths:
                raise MountConflict("another mount already uses this mount_path")
            db.execute(
                "UPDATE mounts SET config = ? WHERE id = ? AND sandbox_id = ?",
                (mount.model_dump_json(), mount_id, sandbox_id),
            )

    def delete_mount(self, sandbox_id: str, mount_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM mounts WHERE id = ? AND sandbox_id = ?", (mount_id, sandbox_id))

    # --- Templates --------------------------------------------------------------------------

    def reserve_template(self, org_id: str, name: str, uri: str,
                         limit: int = spec.MAX_TEMPLATES_PER_ORG) -> str:
        """A template row without an image yet (its upload runs): the limit and the name
        are claimed in one transaction, so concurrent uploads cannot exceed or share them."""
        template_id = new_template_id()
        now = time.time()
        with self._transaction() as db:
            (existing,) = db.execute("SELECT COUNT(*) FROM templates WHERE org_id = ?",
                                     (org_id,)).fetchone()
            if existing >= limit:
                raise TemplateConflict(
                    f"template limit reached: an organization may have at most {limit} "
                    "templates; delete one first")
            if db.execute("SELECT 1 FROM templates WHERE org_id = ? AND name = ?",
                          (org_id, name)).fetchone():
                raise TemplateConflict("name: a template of this name already exists")
            db.execute(f"INSERT INTO templates ({_TEMPLATE_COLUMNS}, created_ts) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (template_id, org_id, name, uri, None, None, iso(now), now))
        return template_id

    def complete_template(self, template_id: str, digest: str,
                          image_config: spec.ImageConfig) -> TemplateRecord:
        with self._transaction() as db:
            db.execute("UPDATE templates SET digest = ?, image_config = ? WHERE id = ?",
                       (digest, image_config.model_dump_json(), template_id))
        record = self.get_template(template_id)
        assert record is not None
        return record

    def drop_template(self, template_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM templates WHERE id = ?", (template_id,))

    def drop_unfinished_templates(self) -> None:
        """Uploads a restart interrupted: nothing of them is left to finish."""
        with self._transaction() as db:
            db.execute("DELETE FROM templates WHERE digest IS NULL")

    def get_template(self, template_id: str, org_id: str | None = None) -> TemplateRecord | None:
        """A finished template (of ``org_id``, if given)."""
        rows = self._query(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE id = ? AND digest IS NOT NULL"
            + (" AND org_id = ?" if org_id is not None else ""),
            (template_id, org_id) if org_id is not None else (template_id,))
        return _template(rows[0]) if rows else None

    def template_named(self, org_id: str, name: str) -> TemplateRecord | None:
        rows = self._query(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates "
            "WHERE org_id = ? AND name = ? AND digest IS NOT NULL", (org_id, name))
        return _template(rows[0]) if rows else None

    def rename_template(self, template_id: str, name: str) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT org_id FROM templates WHERE id = ?",
                             (template_id,)).fetchone()
            if row is None:
                return
            taken = db.execute("SELECT 1 FROM templates WHERE org_id = ? AND name = ? "
                               "AND id != ?", (row["org_id"], name, template_id)).fetchone()
            if taken:
                raise TemplateConflict("name: a template of this name already exists")
            db.execute("UPDATE templates SET name = ? WHERE id = ?", (name, template_id))

    def delete_template(self, template_id: str) -> bool:
        """Delete the template unless a sandbox still uses it (``TemplateConflict`` naming
        them). Returns whether another template still holds its image."""
        with self._transaction() as db:
            users = [r["id"] for r in db.execute(
                "SELECT id FROM sandboxes WHERE template_id = ? AND state != ? ORDER BY id",
                (template_id, spec.SandboxState.DELETED.value))]
            if users:
                raise TemplateConflict(
                    "the template is in use by sandbox" + ("es " if len(users) > 1 else " ")
                    + ", ".join(users) + ": delete them first")
            row = db.execute("SELECT digest FROM templates WHERE id = ?",
                             (template_id,)).fetchone()
            db.execute("DELETE FROM templates WHERE id = ?", (template_id,))
            if row is None or row["digest"] is None:
                return False
            return db.execute("SELECT 1 FROM templates WHERE digest = ?",
                              (row["digest"],)).fetchone() is not None

    def template_digests(self) -> set[str]:
        return {r["digest"] for r in self._query(
            "SELECT DISTINCT digest FROM templates WHERE digest IS NOT NULL")}


    # --- Snapshots ----------------------------------------------------------------------------

    def insert_snapshot(self, sandbox: SandboxRecord, name: str | None,
                        limit: int = spec.MAX_SNAPSHOTS_PER_ORG) -> SnapshotRecord:
        """A snapshot of ``sandbox``'s configuration, not yet ready: the name and a place
        under the organization's limit are taken in the same transaction, so two creates
        cannot both get one name or overshoot the limit."""
        snapshot_id = new_snapshot_id()
        name = name or snapshot_id
        now = time.time()
        with self._transaction() as db:
            (existing,) = db.execute(
                "SELECT COUNT(*) FROM snapshots WHERE org_id = ?", (sandbox.org_id,)
            ).fetchone()
            if existing >= limit:
                raise SnapshotConflict(
                    f"snapshot limit reached: an organization may keep at most {limit} "
                    "snapshots; delete one first")
            if db.execute("SELECT 1 FROM snapshots WHERE org_id = ? AND name = ?",
                          (sandbox.org_id, name)).fetchone():
                raise SnapshotConflict("a snapshot of this name already exists")
            policy = sandbox.network_policy
            db.execute(
                f"INSERT INTO snapshots ({_SNAPSHOT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
                (snapshot_id, sandbox.org_id, name, sandbox.template_name, sandbox.vcpu,
                 sandbox.memory, sandbox.disk, json.dumps(sandbox.env_vars),
                 policy.model_dump_json() if policy else None, iso(now), now),
            )
        record = self.get_snapshot(snapshot_id, ready_only=False)
        assert record is not None
        return record

    def snapshot_ready(self, snapshot_id: str, size_bytes: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE snapshots SET ready = 1, size_bytes = ? WHERE id = ?",
                       (size_bytes, snapshot_id))

    def get_snapshot(self, snapshot_id: str, org_id: str | None = None, *,
                     ready_only: bool = True) -> SnapshotRecord | None:
        rows = self._query(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?",
                           (snapshot_id,))
        record = _snapshot(rows[0]) if rows else None
        if record is None or (org_id is not None and record.org_id != org_id) or (
                ready_only and not record.ready):
            return None
        return record

    def snapshot_by_name(self, org_id: str, name: str) -> SnapshotRecord | None:
        rows = self._query(
            f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE org_id = ? AND name = ? "
            "AND ready = 1", (org_id, name))
        return _snapshot(rows[0]) if rows else None

    def list_snapshots(self, org_id: str, *, query: str, sort: str, descending: bool,
                       page: int, page_size: int) -> tuple[list[SnapshotRecord], int]:
        # instr, not LIKE: a name's '%' and '_' are letters to the caller, not wildcards.
        where = "org_id = ? AND ready = 1 AND instr(lower(name), lower(?)) > 0"
        args: list[Any] = [org_id, query]
        direction = "DESC" if descending else "ASC"
        order = (f"{_SNAPSHOT_SORT_COLUMNS[sort]} {direction}, created_ts {direction}, "
                 f"id {direction}")
        offset = (page - 1) * page_size
        with self._lock:
            (total,) = self._db.execute(
                f"SELECT COUNT(*) FROM snapshots WHERE {where}", args).fetchone()
            if offset >= total:
                return [], int(total)
            rows = self._db.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE {where} ORDER BY {order} "
                "LIMIT ? OFFSET ?", [*args, page_size, offset]).fetchall()
        return [_snapshot(row) for row in rows], int(total)

    def all_snapshots(self) -> list[SnapshotRecord]:
        """Every snapshot of every organization, made or being made (startup)."""
        rows = self._query(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots")
        return [_snapshot(row) for row in rows]

    def forget_snapshot(self, snapshot_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # --- Presigned preview URLs ---------------------------------------------------------------

    def add_presigned_url(self, sandbox_id: str, port: int,
                          ttl_s: int) -> tuple[PresignedRecord, str]:
        """A new presigned URL and its token, which only its hash is kept of; unless the
        sandbox holds ``spec.MAX_PRESIGNED_URLS`` unexpired ones already."""
        token = secrets.token_hex(16)  # a DNS label: the URL's host is ``<token>.<domain>``
        now = time.time()
        record = PresignedRecord(id=spec.PRESIGNED_URL_ID_PREFIX + uuid.uuid4().hex[:16],
                                 sandbox_id=sandbox_id, port=port, created_ts=now,
                                 expires_ts=now + ttl_s)
        with self._transaction() as db:
            db.execute("DELETE FROM presigned_urls WHERE expires_ts <= ?", (now,))
            (count,) = db.execute("SELECT COUNT(*) FROM presigned_urls WHERE sandbox_id = ?",
                                  (sandbox_id,)).fetchone()
            if count >= spec.MAX_PRESIGNED_URLS:
                raise PresignedLimit(f"the sandbox already has {spec.MAX_PRESIGNED_URLS} "
                                     "presigned URLs, the limit: delete one first")
            db.execute(
                "INSERT INTO presigned_urls (id, sandbox_id, token_hash, port, created_ts, "
                "expires_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, sandbox_id, hash_key(token), port, now, record.expires_ts))
        return record, token

    def delete_presigned_url(self, sandbox_id: str, url_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM presigned_urls WHERE id = ? AND sandbox_id = ?",
                                (url_id, sandbox_id))
            return cursor.rowcount > 0

    def presigned_target(self, token: str, now: float) -> tuple[str, int] | None:
        """The sandbox and port an unexpired token opens, or None."""
        rows = self._query("SELECT sandbox_id, port FROM presigned_urls WHERE token_hash = ? "
                           "AND expires_ts > ?", (hash_key(token), now))
        return (rows[0]["sandbox_id"], rows[0]["port"]) if rows else None


@dataclass(frozen=True, slots=True)
class PresignedRecord:
    id: str
    sandbox_id: str
    port: int
    created_ts: float
    expires_ts: float


class PresignedLimit(Exception):
    pass


class MountConflict(Exception):
    pass


def _snapshot(row: sqlite3.Row) -> SnapshotRecord:
    policy = row["network_policy"]
    return SnapshotRecord(
        id=row["id"], org_id=row["org_id"], name=row["name"],
        template_name=row["template_name"], vcpu=row["vcpu"], memory=row["memory"],
        disk=row["disk"], env_vars=json.loads(row["env_vars"]),
        network_policy=spec.NetworkPolicy.model_validate_json(policy) if policy else None,
        ready=bool(row["ready"]), size_bytes=row["size_bytes"], created_at=row["created_at"],
        created_ts=row["created_ts"],
    )


def _admit(db: sqlite3.Connection, org_id: str, memory: int, *, limit: int,
           capacity: int | None, template_id: str | None) -> None:
    """Inside a write transaction: whether a new sandbox of ``org_id`` may be inserted:
    its user template still there (``TemplateConflict``), the organization under its
    limit (``QuotaExceeded``), its memory within the capacity (``NoCapacity``)."""
    if template_id is not None and db.execute(
            "SELECT 1 FROM templates WHERE id = ? AND digest IS NOT NULL",
            (template_id,)).fetchone() is None:
        raise TemplateConflict("the template was deleted meanwhile")
    (existing,) = db.execute(
        "SELECT COUNT(*) FROM sandboxes WHERE org_id = ? AND state != ?",
        (org_id, spec.SandboxState.DELETED.value),
    ).fetchone()
    if existing >= limit:
        raise QuotaExceeded(existing)
    _claim_memory(db, memory, capacity)


def _claim_memory(db: sqlite3.Connection, memory: int, capacity: int | None) -> None:
    """Inside a write transaction: ``NoCapacity`` unless ``memory`` more fits."""
    if capacity is None:
        return
    (held,) = db.execute(
        "SELECT COALESCE(SUM(memory), 0) FROM sandboxes WHERE state NOT IN (?, ?)",
        _HOLDS_NO_MEMORY,
    ).fetchone()
    if held + memory > capacity:
        raise NoCapacity()


def _template(row: sqlite3.Row) -> TemplateRecord:
    config = row["image_config"]
    return TemplateRecord(
        id=row["id"], org_id=row["org_id"], name=row["name"], uri=row["uri"],
        digest=row["digest"],
        image_config=spec.ImageConfig.model_validate_json(config) if config else None,
        created_at=row["created_at"],
    )


def _sandbox(row: sqlite3.Row, mounts: Sequence[tuple[str, str]]) -> SandboxRecord:
    """``mounts``: each mount's id and its configuration's JSON, in creation order."""
    policy = row["network_policy"]
    return SandboxRecord(
        id=row["id"],
        org_id=row["org_id"],
        template_name=row["template_name"],
        vcpu=row["vcpu"],
        memory=row["memory"],
        disk=row["disk"],
        timeout=row["timeout"],
        auto_pause=bool(row["auto_pause"]),
        env_vars=json.loads(row["env_vars"]),
        network_policy=spec.NetworkPolicy.model_validate_json(policy) if policy else None,
        state=spec.SandboxState(row["state"]),
        created_at=row["created_at"],
        created_ts=row["created_ts"],
        state_changed_at=row["state_changed_at"],
        launch_time=row["launch_time"],
        deadline_ts=row["deadline_ts"],
        mounts=tuple(
            MountRecord(id=mount_id, config=spec.MountRequest.model_validate_json(config))
            for mount_id, config in mounts
        ),
        template_id=row["template_id"],
    )
