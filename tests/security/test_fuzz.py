"""Two organizations over every served route: no 5xx, and no effect on each other (#12).

Two tests against the real session backend, with a real bucket (moto) behind the mounts:

* A sweep, deterministic: organization B calls every route the application serves
  (``app.ROUTERS``, both spellings of each path) with organization A's sandbox and mount
  ids and a body that would be valid; every answer is 404, and A's sandbox, mount and file
  are as A left them. Then A calls every route on its own sandbox: no answer is a 5xx.
* A Hypothesis state machine: both organizations create, pause, stop, start and delete
  sandboxes, run commands with environment variables, write, read, list and delete files,
  attach, change and remove mounts and read through them, and send arbitrary JSON to
  every served route, aiming each call at their own sandboxes, at the other's and at ids
  nobody has. A model says what each organization's calls made of its sandboxes. After
  every step no answer was a 5xx, every call with an id not the caller's was 404, and each
  organization's sandboxes, states and mounts are the model's; files are read back by a
  rule and at the end of each run.

Bounded for CI: a few runs of a few dozen steps, derandomized, so each run of the suite
plays the same sequences. No shrinking: every step is real HTTP and real sandboxes, and a
shrink would replay hundreds of them; a failure prints the steps as they ran.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pulumi_leap0 import spec
from pulumi_leap0.backend.app import ROUTERS
from tests.backend.helpers import TEMPLATE
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import OBJECTS, S3

ORGS = ("a", "b")
#: Who calls about a sandbox: mostly its owner, often the other organization.
WHO = st.sampled_from(["owner", "owner", "owner", "other"])
FILES = ("/tmp/fz-a", "/tmp/fz-b", "/home/user/fz-c")
DIRS = ("/tmp/fz-dir",)
MOUNT_PATHS = ("/mnt/fz1", "/mnt/fz2")
#: A bucket prefix, and what one file under the mount holds with it.
PREFIXES = {"release/": ("readme.txt", OBJECTS["release/readme.txt"]),
            "release/v1/": ("config.json", OBJECTS["release/v1/config.json"])}
NOBODYS = "sbx-" + "0" * 20
NO_MOUNT = "mnt-" + "0" * 16
#: What every git route would accept: a repository path and each operation's own fields.
GIT_BODY = {"path": "/tmp/swept-repo", "url": "/tmp/swept-origin.git", "target": "HEAD",
            "revision": "HEAD", "name": "swept", "branch": "swept", "files": ["swept"],
            "message": "swept"}
#: A's PTY session in the sweep, and a presigned URL id that is nobody's.
SESSION = "fz-session"
NO_URL = "psu-" + "0" * 16

#: Every (method, path) the application serves, both spellings of each.
SERVED = sorted(
    (method, route.path)
    for router in ROUTERS for route in router.routes
    for method in getattr(route, "methods", ()) or ()
)


def _mount_body(s3: S3, path: str, prefix: str = "release/") -> dict[str, Any]:
    return {"type": "object-storage", "bucket": s3.bucket, "mount_path": path,
            "endpoint": s3.endpoint, "prefix": prefix, "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key}


def _path(template: str, sandbox_id: str, mount_id: str = NO_MOUNT,
          url_id: str = NO_URL) -> str:
    return (template.replace("{sandbox_id}", sandbox_id).replace("{mount_id}", mount_id)
            .replace("{session_id}", SESSION).replace("{id}", url_id))


def _valid_body(s3: S3, method: str, template: str) -> dict[str, Any]:
    """What a route would accept (a change of prefix, a command, a path), for the sweep."""
    route = template.rstrip("/")
    if route.endswith("/mounts"):
        return {"json": _mount_body(s3, "/mnt/sweep")}
    if "/mounts/" in route and method == "PATCH":
        return {"json": {"prefix": "release/v1/"}}
    if route.endswith("/process/execute"):
        return {"json": {"command": "echo swept > /tmp/swept"}}
    if route.endswith("/write-file"):
        return {"params": {"path": "/tmp/swept"}, "content": b"swept"}
    if route.endswith("/mkdir"):
        return {"json": {"path": "/tmp/swept-dir"}}
    if route.endswith("/write-files"):
        return {"files": [("/tmp/swept", b"swept")]}
    if route.endswith("/read-files"):
        return {"json": {"paths": [FILES[0]]}}
    if route.endswith("/set-permissions"):
        return {"json": {"path": FILES[0], "mode": "600"}}
    if route.endswith(("/glob", "/grep")):
        return {"json": {"path": "/tmp", "pattern": "fz"}}
    if route.endswith("/edit-file"):
        return {"json": {"path": FILES[0], "edits": [{"find": "A", "replace": "swept"}]}}
    if route.endswith("/edit-files"):
        return {"json": {"files": [FILES[0]], "find": "A", "replace": "swept"}}
    if route.endswith("/move"):
        return {"json": {"src_path": FILES[0], "dst_path": "/tmp/swept"}}
    if route.endswith("/copy"):
        return {"json": {"src_path": FILES[0], "dst_path": "/tmp/swept"}}
    if "/filesystem/" in route:
        return {"json": {"path": FILES[0]}}
    if "/git/" in route:
        return {"json": GIT_BODY}
    if route.endswith("/pty/{session_id}/resize"):
        return {"json": {"cols": 90, "rows": 30}}
    if route.endswith("/pty") and method == "POST":
        return {"json": {"lazy_start": True}}
    if route.endswith("/presigned-url"):
        return {"json": {"port": 8000}}
    if route == "/v1/sandbox" and method == "POST":
        return {"json": {"template_name": TEMPLATE, "network_policy": {"mode": "deny-all"}}}
    return {}


def _clients(backend: BackendServer) -> dict[str, httpx.Client]:
    return {org: httpx.Client(base_url=backend.base_url, timeout=60, headers={
        "Authorization": f"Bearer {backend.new_api_key(f'fuzz-{org}-{uuid.uuid4().hex[:8]}')}"})
        for org in ORGS}


def _no_5xx(answer: httpx.Response) -> httpx.Response:
    request = answer.request
    assert answer.status_code < 500, (request.method, request.url.path, answer.status_code,
                                      answer.text[:300])
    return answer


def _not_found(answer: httpx.Response) -> None:
    assert answer.status_code == 404, (answer.request.method, answer.request.url.path,
                                       answer.status_code, answer.text[:300])
    assert set(answer.json()) == {"message"}


def _delete_everything(clients: dict[str, httpx.Client]) -> None:
    for client in clients.values():
        for item in client.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]:
            client.delete(f"/v1/sandbox/{item['id']}/")
        for item in client.get("/v1/snapshots", params={"page-size": 100}).json()["items"]:
            client.delete(f"/v1/snapshot/{item['id']}")
        client.close()


# --- The sweep --------------------------------------------------------------------------------


def _sandbox_of(client: httpx.Client, s3: S3) -> tuple[str, str]:
    created = client.post("/v1/sandbox/", json={
        "template_name": TEMPLATE, "network_policy": {"mode": "deny-all"},
        "mounts": [_mount_body(s3, MOUNT_PATHS[0])]})
    assert created.status_code == 201, created.text
    box = created.json()
    assert client.post(f"/v1/sandbox/{box['id']}/filesystem/write-file",
                       params={"path": FILES[0]}, content=b"A's").status_code == 204
    assert client.post(f"/v1/sandbox/{box['id']}/pty", json={"id": SESSION}).status_code == 201
    return box["id"], box["mounts"][0]["id"]


def _as_a_sees_it(client: httpx.Client, box: str) -> tuple[Any, ...]:
    got = client.get(f"/v1/sandbox/{box}/").json()
    content = client.post(f"/v1/sandbox/{box}/filesystem/read-file", json={"path": FILES[0]})
    swept = client.post(f"/v1/sandbox/{box}/filesystem/exists", json={"path": "/tmp/swept"})
    terminals = client.get(f"/v1/sandbox/{box}/pty").json()
    return got["state"], got["mounts"], content.content, swept.json(), terminals


def test_every_served_route_answers_another_organization_404_and_changes_nothing(
    backend: BackendServer, s3: S3
) -> None:
    clients = _clients(backend)
    a, b = clients["a"], clients["b"]
    try:
        box, mount = _sandbox_of(a, s3)
        url = a.post(f"/v1/sandbox/{box}/presigned-url", json={"port": 8000}).json()
        before = _as_a_sees_it(a, box)
        sandbox_routes = [(m, t) for m, t in SERVED if "{sandbox_id}" in t]
        assert len(sandbox_routes) >= 30, SERVED  # every route, both spellings
        for method, template in sandbox_routes:
            answer = b.request(method, _path(template, box, mount, url["id"]),
                               **_valid_body(s3, method, template))
            _not_found(answer)
        for method, template in SERVED:
            if "{sandbox_id}" not in template:
                answer = _no_5xx(b.request(method, template, **_valid_body(s3, method, template)))
                if template.startswith("/v1/sandboxes"):
                    assert box not in answer.text
        assert _as_a_sees_it(a, box) == before
        # A itself on every route of its own sandbox, deletes last: no answer is a 5xx.
        last = ("DELETE", "start", "stop", "pause")
        ordered = sorted(sandbox_routes, key=lambda r: (
            r[0] == "DELETE", any(r[1].rstrip("/").endswith(w) for w in last[1:])))
        for method, template in ordered:
            _no_5xx(a.request(method, _path(template, box, mount, url["id"]),
                              **_valid_body(s3, method, template)))
    finally:
        _delete_everything(clients)


# --- The state machine ------------------------------------------------------------------------


@dataclass
class Box:
    """One sandbox as its organization's calls made it."""

    owner: str
    env: dict[str, str]
    state: str = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    #: mount id -> (mount_path, prefix)
    mounts: dict[str, tuple[str, str]] = field(default_factory=dict)


_NAME = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)
ENVS = st.dictionaries(st.one_of(_NAME, _NAME, st.text(max_size=4)), st.text(max_size=12),
                       max_size=3)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
#: Bodies for any route: arbitrary JSON, a path somewhere, or bytes that are no JSON at all.
ANY_BODY = st.one_of(
    JSON.map(lambda body: {"json": body}),
    st.fixed_dictionaries({"path": st.sampled_from([*FILES, "/", "/etc", "x"])}).map(
        lambda body: {"json": body}),
    st.binary(max_size=16).map(lambda raw: {"content": raw}),
)
READ_ONLY = re.compile(r"^/v1/sandbox/\{sandbox_id\}(/|/filesystem/(ls|stat|exists|read-file)/?"
                       r"|/filesystem/(read-files|glob|grep|tree)/?"
                       r"|/system/(user-home-dir|workdir)/?"
                       r")?$")


class TwoOrganizations(RuleBasedStateMachine):
    backend: BackendServer
    s3: S3

    sandboxes = Bundle("sandboxes")

    def __init__(self) -> None:
        super().__init__()
        self.clients = _clients(self.backend)
        self.boxes: dict[str, Box] = {}
        #: Who made each sandbox, deleted ones too (nobody made NOBODYS).
        self.owners: dict[str, str] = {}

    def teardown(self) -> None:
        try:
            for box_id, box in self.boxes.items():
                if box.state != "stopped":
                    self._check_files(box_id, box)
        finally:
            _delete_everything(self.clients)

    # --- Helpers ---------------------------------------------------------------------------

    def _call(self, org: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _no_5xx(self.clients[org].request(method, path, **kwargs))

    def _org(self, box_id: str, who: str) -> str:
        owner = self.owners.get(box_id, "a")
        return owner if who == "owner" else ORGS[1 - ORGS.index(owner)]

    def _mine(self, org: str, box_id: str) -> Box | None:
        box = self.boxes.get(box_id)
        return box if box is not None and box.owner == org else None

    def _reach(self, who: str, box_id: str, method: str, tail: str, *, valid: bool = True,
               **kwargs: Any) -> tuple[httpx.Response, Box | None]:
        """A call into a sandbox, and the sandbox if the call reached it (a paused one is
        resumed by it). None when there is no more to check: the sandbox is not the
        caller's (answered 404), the input breaks a rule of spec.py (400), or the sandbox
        is stopped (409)."""
        org = self._org(box_id, who)
        answer = self._call(org, method, f"/v1/sandbox/{box_id}/{tail}", **kwargs)
        box = self._mine(org, box_id)
        if box is None:
            _not_found(answer)
            return answer, None
        if not valid:
            assert answer.status_code == 400, answer.text
            return answer, None
        if box.state == "stopped":
            assert answer.status_code == 409, answer.text
            return answer, None
        box.state = "running"
        return answer, box

    def _check_files(self, box_id: str, box: Box) -> None:
        for path in FILES:
            answer = self._call(box.owner, "POST", f"/v1/sandbox/{box_id}/filesystem/read-file",
                                json={"path": path})
            if path in box.files:
                assert (answer.status_code, answer.content) == (200, box.files[path]), path
            else:
                assert answer.status_code == 404, (path, answer.text)
        box.state = "running"

    # --- Sandboxes -------------------------------------------------------------------------

    @initialize(target=sandboxes)
    def nobodys(self) -> str:
        return NOBODYS

    @initialize(target=sandboxes)
    def first_sandboxes(self) -> Any:
        """One sandbox per organization from the start (A's with a mount), so the runs
        spend their steps on sandboxes rather than waiting for a create."""
        made = []
        for org in ORGS:
            mounts = [_mount_body(self.s3, MOUNT_PATHS[0])] if org == "a" else []
            answer = self._call(org, "POST", "/v1/sandbox/", json={
                "template_name": TEMPLATE, "memory": 512, "timeout": 3600, "mounts": mounts,
                "network_policy": {"mode": "deny-all"}})
            assert answer.status_code == 201, answer.text
            box = Box(owner=org, env={})
            box.mounts = {m["id"]: (m["mount_path"], m["prefix"]) for m in answer.json()["mounts"]}
            self.boxes[answer.json()["id"]] = box
            self.owners[answer.json()["id"]] = org
            made.append(answer.json()["id"])
        return multiple(*made)

    @rule(target=sandboxes, org=st.sampled_from(ORGS), env=ENVS)
    def create(self, org: str, env: dict[str, str]) -> Any:
        body = {"template_name": TEMPLATE, "env_vars": env, "memory": 512, "timeout": 3600,
                "network_policy": {"mode": "deny-all"}}
        answer = self._call(org, "POST", "/v1/sandbox/", json=body)
        try:
            spec.validate_create(body)
        except spec.SpecError:
            assert answer.status_code == 400, answer.text
            return multiple()
        if sum(box.owner == org for box in self.boxes.values()) >= spec.MAX_SANDBOXES_PER_ORG:
            assert answer.status_code == 409, answer.text
            return multiple()
        assert answer.status_code == 201, answer.text
        box_id: str = answer.json()["id"]
        self.boxes[box_id] = Box(owner=org, env=dict(env))
        self.owners[box_id] = org
        return box_id

    @rule(who=WHO, box_id=sandboxes, slash=st.booleans())
    def get(self, who: str, box_id: str, slash: bool) -> None:
        org = self._org(box_id, who)
        answer = self._call(org, "GET", f"/v1/sandbox/{box_id}" + "/" * slash)
        box = self._mine(org, box_id)
        if box is None:
            return _not_found(answer)
        assert (answer.status_code, answer.json()["state"]) == (200, box.state)
        return None

    @rule(who=WHO, box_id=sandboxes,
          action=st.sampled_from(["pause", "stop", "start"]))
    def transition(self, who: str, box_id: str, action: str) -> None:
        org = self._org(box_id, who)
        answer = self._call(org, "POST", f"/v1/sandbox/{box_id}/{action}")
        box = self._mine(org, box_id)
        if box is None:
            return _not_found(answer)
        moves = {("pause", "running"): (201, "paused"), ("stop", "running"): (200, "stopped"),
                 ("stop", "paused"): (200, "stopped"), ("start", "stopped"): (200, "running")}
        expected = moves.get((action, box.state))
        if expected is None:
            assert answer.status_code == 409, answer.text
            return None
        assert (answer.status_code, answer.json()["state"]) == expected, answer.text
        box.state = expected[1]
        return None

    # Deletes fill the bundle with ids of sandboxes that are gone: only with a few alive.
    @precondition(lambda self: len(self.boxes) >= 4)
    @rule(who=WHO, box_id=sandboxes)
    def delete(self, who: str, box_id: str) -> None:
        org = self._org(box_id, who)
        answer = self._call(org, "DELETE", f"/v1/sandbox/{box_id}/")
        if self._mine(org, box_id) is None:
            return _not_found(answer)
        assert answer.status_code == 204, answer.text
        del self.boxes[box_id]
        return None

    # --- Processes ---------------------------------------------------------------------------

    @rule(who=WHO, box_id=sandboxes, text=st.text(max_size=24), envs=ENVS)
    def execute(self, who: str, box_id: str, text: str, envs: dict[str, str]) -> None:
        body = {"command": 'printf %s "$FUZZ"; printf "|%s" "$FUZZ_ENV"',
                "envs": {**envs, "FUZZ": text}}
        try:
            spec.validate(spec.ExecuteRequest, body)
            valid = True
        except spec.SpecError:
            valid = False
        answer, box = self._reach(who, box_id, "POST", "process/execute", valid=valid,
                                  json=body)
        if box is not None:
            assert answer.status_code == 200, answer.text
            merged = {**box.env, **body["envs"]}
            assert answer.json()["stdout"] == f"{merged['FUZZ']}|{merged.get('FUZZ_ENV', '')}"

    # --- Files -----------------------------------------------------------------------------

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(FILES),
          content=st.binary(max_size=64))
    def write_file(self, who: str, box_id: str, path: str, content: bytes) -> None:
        answer, box = self._reach(who, box_id, "POST", "filesystem/write-file",
                                  params={"path": path}, content=content)
        if box is not None:
            assert answer.status_code == 204, answer.text
            box.files[path] = content

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(FILES))
    def read_file(self, who: str, box_id: str, path: str) -> None:
        answer, box = self._reach(who, box_id, "POST", "filesystem/read-file",
                                  json={"path": path})
        if box is not None and path in box.files:
            assert (answer.status_code, answer.content) == (200, box.files[path])
        elif box is not None:
            assert answer.status_code == 404, answer.text

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(FILES + DIRS))
    def delete_file(self, who: str, box_id: str, path: str) -> None:
        answer, box = self._reach(who, box_id, "POST", "filesystem/delete", json={"path": path})
        if box is not None:
            known = path in box.files or path in box.dirs
            assert answer.status_code == (204 if known else 404), answer.text
            box.files.pop(path, None)
            box.dirs.discard(path)

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(DIRS))
    def mkdir(self, who: str, box_id: str, path: str) -> None:
        answer, box = self._reach(who, box_id, "POST", "filesystem/mkdir", json={"path": path})
        if box is not None:
            assert answer.status_code == (409 if path in box.dirs else 204), answer.text
            box.dirs.add(path)

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(FILES + DIRS),
          call=st.sampled_from(["exists", "stat"]))
    def look(self, who: str, box_id: str, path: str, call: str) -> None:
        answer, box = self._reach(who, box_id, "POST", f"filesystem/{call}", json={"path": path})
        if box is None:
            return
        there = path in box.files or path in box.dirs
        if call == "exists":
            assert answer.json() == {"exists": there}
        elif there:
            info = answer.json()
            assert info["is_dir"] == (path in box.dirs)
            assert path in box.dirs or info["size"] == len(box.files[path])
        else:
            assert answer.status_code == 404, answer.text

    @rule(who=WHO, box_id=sandboxes)
    def list_tmp(self, who: str, box_id: str) -> None:
        answer, box = self._reach(who, box_id, "POST", "filesystem/ls", json={"path": "/tmp"})
        if box is not None:
            names = {i["path"] for i in answer.json()["items"] if "/fz-" in i["path"]}
            assert names == {p for p in [*box.files, *box.dirs] if p.startswith("/tmp/")}

    @rule(who=WHO, box_id=sandboxes)
    def verify_files(self, who: str, box_id: str) -> None:
        box = self._mine(self._org(box_id, who), box_id)
        if box is not None and box.state != "stopped":
            self._check_files(box_id, box)

    # --- Mounts ----------------------------------------------------------------------------

    def _mount_id(self, box_id: str, slot: int) -> str:
        owner = self.boxes.get(box_id)
        ids = sorted(owner.mounts) if owner else []
        return ids[slot % len(ids)] if ids else NO_MOUNT

    @rule(who=WHO, box_id=sandboxes, path=st.sampled_from(MOUNT_PATHS))
    def add_mount(self, who: str, box_id: str, path: str) -> None:
        answer, box = self._reach(who, box_id, "POST", "mounts",
                                  json=_mount_body(self.s3, path))
        if box is not None and path in {p for p, _ in box.mounts.values()}:
            assert answer.status_code == 409, answer.text
        elif box is not None:
            assert answer.status_code == 201, answer.text
            box.mounts[answer.json()["id"]] = (path, "release/")

    @rule(who=WHO, box_id=sandboxes, slot=st.integers(0, 1),
          prefix=st.sampled_from(sorted(PREFIXES)))
    def update_mount(self, who: str, box_id: str, slot: int, prefix: str) -> None:
        mount_id = self._mount_id(box_id, slot)
        answer, box = self._reach(who, box_id, "PATCH", f"mounts/{mount_id}",
                                  json={"prefix": prefix})
        if box is not None and mount_id not in box.mounts:
            _not_found(answer)
        elif box is not None:
            assert answer.status_code == 200, answer.text
            box.mounts[mount_id] = (box.mounts[mount_id][0], prefix)

    @rule(who=WHO, box_id=sandboxes, slot=st.integers(0, 1))
    def delete_mount(self, who: str, box_id: str, slot: int) -> None:
        mount_id = self._mount_id(box_id, slot)
        answer, box = self._reach(who, box_id, "DELETE", f"mounts/{mount_id}")
        if box is not None and mount_id not in box.mounts:
            _not_found(answer)
        elif box is not None:
            assert answer.status_code == 204, answer.text
            del box.mounts[mount_id]

    @precondition(lambda self: any(box.mounts for box in self.boxes.values()))
    @rule(who=WHO, box_id=sandboxes, slot=st.integers(0, 1))
    def read_through_mount(self, who: str, box_id: str, slot: int) -> None:
        owner = self.boxes.get(box_id)
        if owner is None or not owner.mounts:
            return
        path, prefix = owner.mounts[self._mount_id(box_id, slot)]
        name, content = PREFIXES[prefix]
        answer, box = self._reach(who, box_id, "POST", "filesystem/read-file",
                                  json={"path": f"{path}/{name}"})
        if box is not None:
            assert (answer.status_code, answer.content) == (200, content), answer.text

    # --- Anything, anywhere ------------------------------------------------------------------

    @rule(who=WHO, box_id=sandboxes, route=st.sampled_from(SERVED),
          body=ANY_BODY, query=st.dictionaries(st.sampled_from(
              ["path", "page", "page-size", "state", "sort", "order-by"]), st.text(max_size=8),
              max_size=2))
    def anything(self, who: str, box_id: str, route: tuple[str, str], body: dict[str, Any],
                 query: dict[str, str]) -> None:
        """Arbitrary input on any served route. With an id not the caller's, it is 404 and
        nothing else; with the caller's own, only routes that change nothing are aimed at
        it; elsewhere (create, list, health) the answer is no 5xx."""
        org = self._org(box_id, who)
        method, template = route
        box = self._mine(org, box_id)
        if "{sandbox_id}" in template and box is not None and not (
                method in ("GET", "POST") and READ_ONLY.match(template)):
            return
        answer = self._call(org, method, _path(template, box_id), params=query, **body)
        if "{sandbox_id}" not in template:
            if answer.status_code == 201:  # arbitrary input that makes a sandbox is one
                created = answer.json()
                self.boxes[created["id"]] = Box(owner=org, env={})
                self._call(org, "DELETE", f"/v1/sandbox/{created['id']}/")
                del self.boxes[created["id"]]
            return
        if box is None:
            return _not_found(answer)
        if box.state == "paused" and "filesystem" in template:
            # A call that reached the sandbox resumed it, whatever it answered (a directory
            # read as a file is a 400 from inside): the one change such a call may make.
            now = self._call(org, "GET", f"/v1/sandbox/{box_id}/").json()["state"]
            box.state = "running" if now == "running" else box.state
        return None

    # --- What must always hold -----------------------------------------------------------

    @invariant()
    def each_organization_sees_exactly_its_own(self) -> None:
        for org in ORGS:
            listing = self._call(org, "GET", "/v1/sandboxes", params={"page-size": 100}).json()
            seen = {item["id"]: item["state"] for item in listing["items"]}
            mine = {box_id: box.state for box_id, box in self.boxes.items() if box.owner == org}
            assert seen == mine
            for box_id, box in self.boxes.items():
                if box.owner != org:
                    continue
                got = self._call(org, "GET", f"/v1/sandbox/{box_id}/").json()
                mounts = {m["id"]: (m["mount_path"], m["prefix"]) for m in got["mounts"]}
                assert mounts == box.mounts, box_id


TwoOrganizations.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def test_two_organizations_fuzzed_over_every_route(backend: BackendServer, s3: S3) -> None:
    machine = type("Fuzzed", (TwoOrganizations,), {"backend": backend, "s3": s3})
    run_state_machine_as_test(machine, settings=TwoOrganizations.TestCase.settings)
