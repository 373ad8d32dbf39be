"""Templates from container images, through the official SDK and plain HTTP, against real
registries on loopback (``tests/fixtures/registry.py``) and the reference backend."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from pulumi_leap0 import spec
from tests.backend.helpers import http, sdk
from tests.fixtures.backend import BackendServer, running_backend
from tests.fixtures.registry import GREETING, IMAGE_UID, Registries


def fields(answer: Any) -> list[str]:
    """The fields a template call's 400 names: ``Invalid request: f: rule; g: rule`` (the
    document's ``oneOf`` for these calls admits only ``{"message"}``)."""
    message: str = answer.json()["message"]
    assert message.startswith("Invalid request: "), message
    return [part.split(": ", 1)[0] for part in message.removeprefix(
        "Invalid request: ").split("; ")]


def _name(prefix: str = "tpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _images(backend: BackendServer) -> set[str]:
    root = backend.data_dir / "images"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _pull_mounts() -> list[str]:
    return [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if "leap0-pull" in ln]


def test_upload_then_a_sandbox_runs_on_the_image(backend: BackendServer, api_key: str,
                                                 registries: Registries) -> None:
    with sdk(backend, api_key) as leap0:
        name = _name()
        template = leap0.templates.create(name=name, uri=registries.uri())
        assert template.id.startswith(spec.TEMPLATE_ID_PREFIX)
        assert template.name == name and template.is_system is False
        assert template.digest.startswith("sha256:") and len(template.digest) == 71
        config = template.image_config
        assert (config.user, config.working_dir, config.cmd) == ("app", "/app", ["/bin/sh"])
        assert config.env is not None and config.env["FOO"] == "bar"

        box = leap0.sandboxes.create(template_name=name)
        try:
            run = box.process.execute(command='id -u; id -g; pwd; echo "$FOO $HOME $USER"; '
                                      "cat /app/greeting")
            assert run.exit_code == 0, run.stderr
            assert run.stdout.splitlines() == [str(IMAGE_UID), str(IMAGE_UID), "/app",
                                               "bar /home/app app", GREETING.strip()]
            # The file calls are the image user's too, relative to its working directory.
            assert box.filesystem.read_file(path="greeting") == GREETING
            # The root is writable through the overlay: the working directory is the user's.
            box.filesystem.write_file(path="notes.txt", content="mine")
            assert box.process.execute(command="cat /app/notes.txt").stdout == "mine"
        finally:
            leap0.sandboxes.delete(box.id)
        # What one sandbox wrote is in its own layer, never in the shared image.
        rootfs = backend.data_dir / "images" / template.digest.split(":")[1] / "rootfs"
        assert (rootfs / "app" / "greeting").read_text() == GREETING
        assert not (rootfs / "app" / "notes.txt").exists()
        leap0.templates.delete(template.id)
    assert template.digest.split(":")[1] not in _images(backend)


def test_two_templates_of_one_image_share_its_root(backend: BackendServer, api_key: str,
                                                   registries: Registries) -> None:
    with sdk(backend, api_key) as leap0:
        first = leap0.templates.create(name=_name(), uri=registries.uri())
        second = leap0.templates.create(name=_name(), uri=registries.uri())
        assert first.digest == second.digest and first.id != second.id
        leap0.templates.delete(first.id)
        assert second.digest.split(":")[1] in _images(backend)  # still the second's
        leap0.templates.delete(second.id)
        assert second.digest.split(":")[1] not in _images(backend)


def test_basic_auth_registry(backend: BackendServer, api_key: str,
                             registries: Registries) -> None:
    uri = registries.uri(auth=True)
    good = {"type": "basic", "username": registries.username, "password": registries.password}
    with http(backend, api_key) as api:
        anonymous = api.post("/v1/template", json={"name": _name(), "uri": uri})
        assert anonymous.status_code == 400
        assert fields(anonymous) == ["credentials"]

        wrong = "wrong-" + registries.password
        refused = api.post("/v1/template", json={
            "name": _name(), "uri": uri, "credentials": {**good, "password": wrong}})
        assert refused.status_code == 400, refused.text
        assert fields(refused) == ["credentials"]
        assert wrong not in refused.text and registries.username not in refused.text

        made = api.post("/v1/template", json={"name": _name(), "uri": uri,
                                              "credentials": good})
        assert made.status_code == 201, made.text
        assert registries.password not in made.text
        assert api.delete(f"/v1/template/{made.json()['id']}").status_code == 204
    # Neither password is anywhere the backend keeps or says things.
    for secret in (registries.password, wrong):
        assert secret not in backend.log()
        for path in backend.data_dir.glob("leap0.db*"):
            assert secret.encode() not in path.read_bytes()
    assert not list((backend.data_dir / "images").glob(".pull-*"))  # no auth file left


def test_a_failed_upload_leaves_nothing(backend: BackendServer, api_key: str,
                                        registries: Registries) -> None:
    before = _images(backend)
    name = _name()
    with http(backend, api_key) as api:
        missing = api.post("/v1/template", json={
            "name": name, "uri": f"{registries.open_host}/tests/busybox:no-such-tag"})
        assert missing.status_code == 400, missing.text
        assert missing.json() == {
            "message": "Invalid request: uri: no such image in the registry"}
        # TLS is the default: a registry not named --insecure-registry is refused as such.
        plain = api.post("/v1/template", json={
            "name": name, "uri": f"localhost:{registries.open_host.split(':')[1]}/tests/x:v1"})
        assert plain.status_code == 400, plain.text
        assert fields(plain) == ["uri"]
        # The name was never taken: the failed uploads left no row behind.
        made = api.post("/v1/template", json={"name": name, "uri": registries.uri()})
        assert made.status_code == 201, made.text
        api.delete(f"/v1/template/{made.json()['id']}")
    assert _images(backend) == before
    assert not _pull_mounts()


@pytest.mark.parametrize(("body", "field"), [
    ({"uri": "busybox"}, "name"),
    ({"name": "a b", "uri": "busybox"}, "name"),
    ({"name": "system/mine", "uri": "busybox"}, "name"),
    ({"name": "x" * 65, "uri": "busybox"}, "name"),
    ({"name": "ok"}, "uri"),
    ({"name": "ok", "uri": "https://example.com/image"}, "uri"),
    ({"name": "ok", "uri": "Upper/Case"}, "uri"),
    ({"name": "ok", "uri": "a" * 501}, "uri"),
    ({"name": "ok", "uri": "busybox", "credentials": {"type": "basic", "username": "u"}},
     "credentials"),
    ({"name": "ok", "uri": "busybox", "credentials": {"type": "token"}}, "credentials.type"),
    ({"name": "ok", "uri": "busybox", "credentials": {
        "type": "aws", "aws_access_key_id": "AKIA", "aws_secret_access_key": "s3cr3t-aws"}},
     "credentials.type"),
])
def test_bad_uploads_name_the_field(backend: BackendServer, api_key: str,
                                    body: dict[str, Any], field: str) -> None:
    with http(backend, api_key) as api:
        answer = api.post("/v1/template", json=body)
    assert answer.status_code == 400, answer.text
    assert fields(answer) == [field]
    assert "s3cr3t-aws" not in answer.text


def test_rename_in_place(backend: BackendServer, api_key: str, registries: Registries) -> None:
    with sdk(backend, api_key) as leap0, http(backend, api_key) as api:
        old, new, other = _name(), _name(), _name()
        template = leap0.templates.create(name=old, uri=registries.uri())
        taken = leap0.templates.create(name=other, uri=registries.uri())
        leap0.templates.rename(template.id, name=new)
        refused = api.post("/v1/sandbox/", json={"template_name": old})
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["field"] == "template_name"
        box = leap0.sandboxes.create(template_name=new)
        leap0.sandboxes.delete(box.id)
        clash = api.patch(f"/v1/template/{template.id}", json={"name": other})
        assert clash.status_code == 409
        bad = api.patch(f"/v1/template/{template.id}", json={"name": "has space"})
        assert bad.status_code == 400 and fields(bad) == ["name"]
        same = api.post("/v1/template", json={"name": new, "uri": registries.uri()})
        assert same.status_code == 409 and "name" in same.json()["message"]
        for t in (template, taken):
            leap0.templates.delete(t.id)


def test_delete_in_use_is_409_naming_the_sandboxes(backend: BackendServer, api_key: str,
                                                   registries: Registries) -> None:
    with sdk(backend, api_key) as leap0, http(backend, api_key) as api:
        name = _name()
        template = leap0.templates.create(name=name, uri=registries.uri())
        box = leap0.sandboxes.create(template_name=name)
        try:
            answer = api.delete(f"/v1/template/{template.id}")
            assert answer.status_code == 409
            assert box.id in answer.json()["message"]
            # A stopped sandbox still needs its template to start again.
            assert api.post(f"/v1/sandbox/{box.id}/stop").status_code == 200
            assert api.delete(f"/v1/template/{template.id}").status_code == 409
            assert api.post(f"/v1/sandbox/{box.id}/start").status_code == 200
            again = api.post(f"/v1/sandbox/{box.id}/process/execute",
                             json={"command": "cat greeting"})
            assert again.json()["stdout"] == GREETING
        finally:
            leap0.sandboxes.delete(box.id)
        assert api.delete(f"/v1/template/{template.id}").status_code == 204
        assert api.delete(f"/v1/template/{template.id}").status_code == 404


def test_the_26th_template_is_409(backend: BackendServer, api_key: str,
                                  registries: Registries) -> None:
    from pulumi_leap0.backend.store import Store

    with sdk(backend, api_key) as leap0, http(backend, api_key) as api:
        first = leap0.templates.create(name=_name(), uri=registries.uri())
        org = Store(backend.data_dir / "leap0.db")
        try:
            # 23 more as the upload leaves them (through the server's own store, which
            # saves 23 pulls of the same image), then two real uploads: the 25th and 26th.
            owner = org.get_template(first.id)
            assert owner is not None
            for _ in range(spec.MAX_TEMPLATES_PER_ORG - 2):
                made = org.reserve_template(owner.org_id, _name(), registries.uri())
                org.complete_template(made, first.digest, spec.ImageConfig())
        finally:
            org.close()
        last = api.post("/v1/template", json={"name": _name(), "uri": registries.uri()})
        assert last.status_code == 201, last.text
        over = api.post("/v1/template", json={"name": _name(), "uri": registries.uri()})
        assert over.status_code == 409
        assert str(spec.MAX_TEMPLATES_PER_ORG) in over.json()["message"]


def test_another_organizations_template_is_404(backend: BackendServer, api_key: str,
                                               registries: Registries) -> None:
    stranger = backend.new_api_key()
    with sdk(backend, api_key) as leap0, http(backend, stranger) as api:
        name = _name()
        template = leap0.templates.create(name=name, uri=registries.uri())
        assert api.patch(f"/v1/template/{template.id}", json={"name": "mine"}).status_code == 404
        assert api.delete(f"/v1/template/{template.id}").status_code == 404
        # Its name resolves among the caller's own templates and the system ones only.
        create = api.post("/v1/sandbox/", json={"template_name": name})
        assert create.status_code == 400
        assert create.json()["errors"][0]["field"] == "template_name"
        # And the stranger may use the same name for a template of its own.
        own = api.post("/v1/template", json={"name": name, "uri": registries.uri()})
        assert own.status_code == 201, own.text
        api.delete(f"/v1/template/{own.json()['id']}")
        leap0.templates.delete(template.id)


def test_an_image_that_runs_as_root_runs_as_the_sandbox_user(
        backend: BackendServer, api_key: str, registries: Registries) -> None:
    with sdk(backend, api_key) as leap0:
        name = _name()
        template = leap0.templates.create(name=name, uri=registries.uri("root"))
        assert template.image_config.user == "root"  # what the image says
        box = leap0.sandboxes.create(template_name=name)
        try:
            # Never uid 0 inside: an exec entering the namespace as 0 would hold every
            # capability in it (runner/images.py, resolve_user).
            run = box.process.execute(command="id -u; echo $HOME; cat /proc/self/status")
            lines = run.stdout.splitlines()
            assert lines[:2] == ["1000", "/home/user"], run
            caps = [ln for ln in lines if ln.startswith(("CapEff:", "CapPrm:"))]
            assert caps and all(int(ln.split()[1], 16) == 0 for ln in caps), caps
        finally:
            leap0.sandboxes.delete(box.id)
        leap0.templates.delete(template.id)


def test_a_sandbox_of_a_template_starts_again_after_a_restart(registries: Registries) -> None:
    with running_backend() as server:
        key = server.new_api_key()
        with http(server, key) as api:
            made = api.post("/v1/template", json={"name": _name(), "uri": registries.uri()})
            assert made.status_code == 201, made.text
            box = api.post("/v1/sandbox/", json={"template_name": made.json()["name"]}).json()
            written = api.post(f"/v1/sandbox/{box['id']}/process/execute",
                               json={"command": "echo kept > /app/kept"})
            assert written.json()["exit_code"] == 0
            assert api.post(f"/v1/sandbox/{box['id']}/stop").status_code == 200
        server.restart()
        with http(server, key) as api:
            assert api.post(f"/v1/sandbox/{box['id']}/start").status_code == 200
            again = api.post(f"/v1/sandbox/{box['id']}/process/execute",
                             json={"command": "cat /app/kept /app/greeting; id -u"})
            assert again.json()["stdout"] == f"kept\n{GREETING}{IMAGE_UID}\n"
            assert api.delete(f"/v1/sandbox/{box['id']}/").status_code == 204
            assert api.delete(f"/v1/template/{made.json()['id']}").status_code == 204


def test_a_snapshot_of_an_image_sandbox_restores_on_the_image_with_its_changes(
        backend: BackendServer, api_key: str, registries: Registries) -> None:
    with sdk(backend, api_key) as leap0:
        name = _name()
        template = leap0.templates.create(name=name, uri=registries.uri())
        box = leap0.sandboxes.create(template_name=name, network_policy={"mode": "deny-all"})
        restored = None
        try:
            # One change in the image's own tree (its working dir, the overlay's upper
            # layer), one in home.
            setup = box.process.execute(command="set -e; echo added > /app/added; "
                                        "echo kept > $HOME/notes")
            assert setup.exit_code == 0, setup.stderr
            snapshot = box.create_snapshot(name=_name("snap"))
            restored = leap0.snapshots.restore(snapshot_name=snapshot.name)
            run = restored.process.execute(command="id -u; pwd; cat /app/greeting /app/added "
                                           "$HOME/notes")
            assert run.exit_code == 0, run.stderr
            assert run.stdout.splitlines() == [str(IMAGE_UID), "/app", GREETING.strip(),
                                               "added", "kept"]
            leap0.sandboxes.delete(restored.id)
            restored = None
            leap0.snapshots.delete(snapshot.id)
        finally:
            if restored is not None:
                leap0.sandboxes.delete(restored.id)
            leap0.sandboxes.delete(box.id)
        # The shared image never saw either change.
        rootfs = backend.data_dir / "images" / template.digest.split(":")[1] / "rootfs"
        assert not (rootfs / "app" / "added").exists()
        leap0.templates.delete(template.id)


def test_a_pull_never_reaches_the_hosts_own_services(backend: BackendServer,
                                                     api_key: str) -> None:
    # The attack: "a registry" at a service of the host's own (a listener on loopback, as a
    # database or a metadata service would be). skopeo dials from the host, as root; the
    # listener must not even see a connection, let alone a TLS hello.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with http(backend, api_key) as api:
            answer = api.post("/v1/template", json={"name": _name(),
                                                    "uri": f"127.0.0.1:{port}/tests/x:v1"})
        assert answer.status_code == 400, answer.text
        assert fields(answer) == ["uri"]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
