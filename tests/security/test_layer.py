"""A sandbox's storage, attacked from the host and from inside (issue #12).

From the host, as ``nobody``: every directory and file the runner keeps for a sandbox (its
state, its runtime directory, its writable layer with what the sandbox wrote to /tmp, the
egress filter's CA bundle, the mount staging) must be out of reach: not listed, not read,
nothing created in it. From inside: nothing writable may lie outside the disk limit
(``/dev`` was a tmpfs of its own), and ``/proc/self/mountinfo`` must not tell where on the
host the sandbox's files are (the runner's directories, its scope, its own id as a path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer
from tests.runner.conftest import Sandboxes
from tests.support import require

NOBODY = 65534
MIB = 1024 * 1024

# Run as nobody with the paths (JSON) on stdin: what it could list, read or create there.
TRY = r'''
import json, os, sys
done = []
for path in json.load(sys.stdin):
    try:
        os.listdir(path)
        done.append(f"listed {path}")
    except OSError:
        pass
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        done.append(f"read {path}")
    except OSError:
        pass
    try:
        fd = os.open(os.path.join(path, "planted-by-nobody"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        done.append(f"created in {path}")
    except OSError:
        pass
print(json.dumps(done))
'''


def as_nobody(paths: list[str]) -> list[str]:
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-I", "-S", "-c", TRY], input=json.dumps(paths),
        capture_output=True, text=True, timeout=60, check=True, cwd="/")
    found: list[str] = json.loads(done.stdout)
    return found


def everything_under(*roots: Path) -> list[str]:
    """Each directory and file below ``roots`` as root sees them, the roots included."""
    paths: list[str] = []
    for root in roots:
        paths.append(str(root))
        for dirpath, dirs, files in os.walk(root):
            paths += [os.path.join(dirpath, name) for name in dirs + files]
    return paths


def filtered_policy() -> spec.NetworkPolicy:
    """A custom policy with a transform: an egress filter, its record and a CA bundle."""
    return spec.NetworkPolicy.model_validate({
        "mode": "custom", "allow_domains": ["example.leap0.test"],
        "transforms": [{"domain": "example.leap0.test", "inject_headers": {"x-k": "v"}}]})


def _root() -> None:
    require(os.geteuid() == 0, "host users and a sandbox's files need a root runner")


# --- Host users and a sandbox's files -------------------------------------------------------


def test_host_users_cannot_list_read_or_plant_anything_of_a_sandbox(
        runner: Runner, sandboxes: Sandboxes) -> None:
    _root()
    sandbox_id = sandboxes.start(network_policy=filtered_policy())
    written = runner.exec(sandbox_id, "for d in /tmp /var/tmp /dev/shm ~; do "
                                      "echo tenant-data > $d/private; done")
    assert written.exit_code == 0, written
    state, runtime = runner.root_dir / sandbox_id, runner.runtime_dir / sandbox_id
    paths = everything_under(state, runtime)
    layer_files = [p for p in paths if p.endswith("/private")]
    assert len(layer_files) == 4, paths
    assert any(p.endswith("egress-ca.crt") for p in paths), paths
    done = as_nobody([*paths, str(runner.root_dir), str(runner.runtime_dir), "/run/leap0"])
    assert done == [], done
    # Nothing was planted where the sandbox would find it.
    assert runner.exec(sandbox_id, "ls -A /tmp /var/tmp /dev/shm ~ | grep planted; true"
                       ).stdout == ""
    # The sandbox itself still works in its own files.
    assert runner.exec(sandbox_id, "cat /tmp/private").stdout == "tenant-data\n"


# --- Nothing writable outside the disk limit ------------------------------------------------

# Inside: every mount point, and whether the sandbox user can create a file in it.
WRITABLE_MOUNTS = r'''
import json, os
found = {}
for line in open("/proc/self/mountinfo"):
    left, _, right = line.partition(" - ")
    point, source = left.split()[4], right.split()[1]
    if not os.path.isdir(point) or os.path.islink(point):
        continue
    probe = os.path.join(point, ".leap0-probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        continue
    os.unlink(probe)
    found[point] = source
print(json.dumps(found))
'''


def test_nothing_writable_lies_outside_the_disk_limit(runner: Runner,
                                                       sandboxes: Sandboxes) -> None:
    _root()
    disk = 64
    sandbox_id = sandboxes.start(disk_mib=disk, memory_mib=512)
    places = runner.exec(sandbox_id, f"python3 -c '{WRITABLE_MOUNTS}'")
    assert places.exit_code == 0, places
    writable = json.loads(places.stdout)
    assert set(writable.values()) == {"leap0-layer"}, writable
    # /dev: no new node, file or directory.
    for command in ("touch /dev/planted", "mkdir /dev/planted", "ln -s /tmp /dev/planted"):
        refused = runner.exec(sandbox_id, command)
        assert refused.exit_code != 0 and "Read-only" in refused.stderr, (command, refused)
    # Filling each place in turn: together they hold the disk, and not a MiB more.
    fill = runner.exec(sandbox_id, "for d in /dev /dev/shm /tmp /var/tmp ~; do "
                                   f"dd if=/dev/zero of=$d/fill bs=1M count={2 * disk} "
                                   "2>/dev/null; done; "
                                   "du -bc /dev/fill /dev/shm/fill /tmp/fill /var/tmp/fill "
                                   "~/fill 2>/dev/null | tail -1", timeout=60)
    total = int(fill.stdout.split()[0])
    assert total <= disk * MIB, (total, fill)
    assert runner.exec(sandbox_id, "test -e /dev/fill").exit_code != 0
    # The devices still work as devices.
    devices = runner.exec(sandbox_id, "echo x > /dev/null && head -c 4 /dev/zero | wc -c "
                                      "&& head -c 4 /dev/urandom | wc -c && "
                                      "python3 -c 'import os, pty; pty.openpty()'")
    assert devices.exit_code == 0 and devices.stdout.split() == ["4", "4"], devices


# --- What mountinfo tells -------------------------------------------------------------------


def test_mountinfo_names_no_host_path(runner: Runner, sandboxes: Sandboxes) -> None:
    _root()
    other = sandboxes.start()
    sandbox_id = sandboxes.start(network_policy=filtered_policy())
    info = runner.exec(sandbox_id, "cat /proc/self/mountinfo /proc/self/mounts "
                                   "/proc/1/mountinfo")
    assert info.exit_code == 0, info
    for secret in (str(runner.runtime_dir), str(runner.root_dir), runner.scope, other,
                   f"/{sandbox_id}/", "/run/leap0/" + runner.scope):
        lines = [ln for ln in info.stdout.splitlines() if secret in ln]
        assert not lines, (secret, lines)
    # What the binds are still there for.
    assert runner.exec(sandbox_id, "cat /etc/hostname").stdout == f"{sandbox_id}\n"
    assert runner.exec(sandbox_id, "grep -c CERTIFICATE /run/leap0/ca-certificates.crt"
                       ).stdout.strip() != "0"


def test_the_file_api_on_the_read_only_dev_answers_4xx_naming_the_path(
        backend: BackendServer, api_key: str) -> None:
    require(os.geteuid() == 0, "file calls as the sandbox user need a root runner")
    with http(backend, api_key) as raw:
        created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE})
        assert created.status_code == 201, created.text
        box = created.json()["id"]
        try:
            calls = {
                "write": raw.post(f"/v1/sandbox/{box}/filesystem/write-file",
                                  params={"path": "/dev/planted"}, content=b"x"),
                "mkdir": raw.post(f"/v1/sandbox/{box}/filesystem/mkdir",
                                  json={"path": "/dev/planted"}),
                "delete": raw.post(f"/v1/sandbox/{box}/filesystem/delete",
                                   json={"path": "/dev/null"}),
            }
            for what, answer in calls.items():
                assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text)
                body = answer.json()
                assert body["message"], (what, body)
                if answer.status_code == 400:
                    assert body["errors"][0]["field"] == "path", (what, body)
            # The shm on it is the layer's, and writable.
            ok = raw.post(f"/v1/sandbox/{box}/filesystem/write-file",
                          params={"path": "/dev/shm/ok"}, content=b"x")
            assert ok.status_code in (200, 201, 204), ok.text
        finally:
            raw.delete(f"/v1/sandbox/{box}/")
