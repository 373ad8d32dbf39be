"""Attacks through object-storage mounts: a mount endpoint is dialled by rclone on the host,
outside every network policy, so a tenant tries to point it at the host itself; puts
credentials in the endpoint URL to see them echoed; and, as another user of the host, tries
to read the buckets mounted for sandboxes.

The session backend (tests/fixtures/backend.py) allows 127.0.0.1/32, where the tests' moto
S3 server listens; every other loopback address (127.0.0.2) is the host's, not allowed.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.types import MountConfig
from tests.backend.helpers import TEMPLATE, http, wait_for
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import S3, moto_server
from tests.hosts import TestHosts
from tests.mounts import conftest as mount_fixtures
from tests.runner.conftest import Sandboxes
from tests.security.listeners import Listener
from tests.support import REPO_ROOT, require

# The mount tests' fixtures: a Runner that can mount, sandboxes destroyed after each test.
runner = mount_fixtures.runner
sandboxes = mount_fixtures.sandboxes


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def canary() -> Iterator[Listener]:
    """Any connection it records is the host dialling itself for a tenant."""
    server = Listener(NOT_FOUND, read_first=True)
    try:
        yield server
    finally:
        server.close()


def own_address() -> str:
    """This host's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))
        address: str = probe.getsockname()[0]
        return address


def mount_body(endpoint: str, path: str = "/mnt/host", **extra: Any) -> dict[str, Any]:
    return {"type": "object-storage", "bucket": "host-private", "mount_path": path,
            "endpoint": endpoint, **extra}


@pytest.fixture
def deny_all_box(backend: BackendServer, api_key: str) -> Iterator[tuple[httpx.Client, str]]:
    """A running deny-all sandbox of a fresh organization, and a client of that org."""
    with http(backend, api_key) as raw:
        made = raw.post("/v1/sandbox", json={"template_name": TEMPLATE,
                                             "network_policy": {"mode": "deny-all"}})
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["id"]
        try:
            wait_for(lambda: raw.get(f"/v1/sandbox/{sandbox_id}").json()["state"] == "running",
                     what="the sandbox to run")
            yield raw, sandbox_id
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")


def _mounts_available(backend: BackendServer) -> None:
    caps = httpx.get(f"{backend.base_url}/healthz").json()["capabilities"]
    require(bool(caps.get("object_storage_mounts")), "the backend cannot mount buckets here")


# --- SSRF: the host dials what the tenant names -------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.2:{port}",  # the host's loopback, beside the allowed 127.0.0.1
    "http://[::1]:{port}",  # the same over IPv6
    "http://0.0.0.0:{port}",  # "this host"
    "http://2130706434:{port}",  # 127.0.0.2 spelled as one number
    "http://{own}:{port}",  # the host's own address on its network
    "http://169.254.169.254:{port}",  # cloud metadata (no canary there: refused unasked)
    "http://10.201.0.2:{port}",  # a sandbox network
])
def test_a_deny_all_sandbox_cannot_have_the_host_dial_itself(
    backend: BackendServer, deny_all_box: tuple[httpx.Client, str], canary: Listener,
    endpoint: str,
) -> None:
    _mounts_available(backend)
    raw, sandbox_id = deny_all_box
    url = endpoint.format(port=canary.port, own=own_address())
    answer = raw.post(f"/v1/sandbox/{sandbox_id}/mounts", json=mount_body(url))
    assert canary.peers == []
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == "endpoint"
    assert "may not reach" in answer.text  # refused for where it leads, not for failing


@pytest.fixture
def host_s3() -> Iterator[str]:
    """An S3 server of the host's own on 127.0.0.2, with something private in it."""
    import boto3

    with moto_server("127.0.0.2") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="host", aws_secret_access_key="host")
        client.create_bucket(Bucket="host-private")
        client.put_object(Bucket="host-private", Key="root-token.txt",
                          Body=b"host-only-7a3c\n")
        yield endpoint


def test_a_deny_all_sandbox_cannot_list_an_s3_server_on_host_loopback(
    backend: BackendServer, deny_all_box: tuple[httpx.Client, str], host_s3: str
) -> None:
    _mounts_available(backend)
    raw, sandbox_id = deny_all_box
    answer = raw.post(f"/v1/sandbox/{sandbox_id}/mounts", json=mount_body(host_s3))
    seen = raw.post(f"/v1/sandbox/{sandbox_id}/process/execute",
                    json={"command": "cat /mnt/host/root-token.txt"}).json()
    assert "host-only-7a3c" not in seen.get("stdout", "")
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == "endpoint"


# --- Credentials in the URL ----------------------------------------------------------------

URL_SECRET = "url-secret-7d1e"
USERINFO = f"http://AKIAURLUSER:{URL_SECRET}@127.0.0.1:9"


def test_credentials_in_an_endpoint_are_refused_and_never_echoed(
    backend: BackendServer, api_key: str, deny_all_box: tuple[httpx.Client, str]
) -> None:
    raw, sandbox_id = deny_all_box
    added = raw.post(f"/v1/sandbox/{sandbox_id}/mounts", json=mount_body(USERINFO))
    created = raw.post("/v1/sandbox", json={"template_name": TEMPLATE,
                                            "mounts": [mount_body(USERINFO)]})
    with pytest.raises(spec.SpecError) as checked:  # what the provider's check runs
        spec.validate(spec.MountRequest, mount_body(USERINFO))
    for answer in (added, created):
        assert answer.status_code == 400, answer.text
        assert URL_SECRET not in answer.text and "AKIAURLUSER" not in answer.text
    assert added.json()["errors"][0]["field"] == "endpoint"
    assert created.json()["errors"][0]["field"] == "mounts[0].endpoint"
    assert [e.field for e in checked.value.errors] == ["endpoint"]
    assert "user-info" in checked.value.errors[0].error
    assert URL_SECRET not in str(checked.value)
    assert URL_SECRET not in backend.log()


def test_a_failing_endpoint_is_not_echoed_in_errors_or_logs(
    backend: BackendServer, deny_all_box: tuple[httpx.Client, str]
) -> None:
    _mounts_available(backend)
    raw, sandbox_id = deny_all_box
    marker = "leap0-echo-4b9e"
    # Allowed (127.0.0.1/32) but nothing listens on the discard port: the mount fails.
    for endpoint in (f"http://127.0.0.1:9/{marker}", f"http://127.0.0.1:9/?token={marker}"):
        answer = raw.post(f"/v1/sandbox/{sandbox_id}/mounts", json=mount_body(endpoint))
        assert answer.status_code == 400, answer.text
        assert marker not in answer.text
    assert marker not in backend.log()


# --- Redirects and rebinding: where rclone goes after the check ----------------------------

REDIRECTOR = textwrap.dedent("""
    import http.server, sys
    address, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.end_headers()
        do_HEAD = do_GET
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer((address, port), Redirect)
    print("ready", flush=True)
    server.serve_forever()
""")


@contextlib.contextmanager
def redirector(hosts: TestHosts, target: str) -> Iterator[str]:
    """An HTTP server out on the test hosts' network (an address the guard allows) that
    redirects every request to ``target``."""
    address, port = hosts.address("allowed"), 18088
    process = subprocess.Popen(["ip", "netns", "exec", hosts.netns, sys.executable, "-c",
                                REDIRECTOR, address, str(port), target],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        yield f"http://{address}:{port}"
    finally:
        process.kill()
        process.wait()


def test_a_redirect_does_not_take_rclone_to_the_host(
    runner: Runner, sandboxes: Sandboxes, hosts: TestHosts, canary: Listener
) -> None:
    """The endpoint passes the check (a server out there), then answers every request with
    a redirect to the host's loopback; rclone follows redirects."""
    box = sandboxes.start()
    with redirector(hosts, f"http://127.0.0.2:{canary.port}") as endpoint:
        config = MountConfig(id="mnt-redirect", bucket="host-private", mount_path="/mnt/x",
                             endpoint=endpoint)
        with pytest.raises(RunnerError):
            runner.mounts.attach(box, config)
    assert canary.peers == []
    assert list((runner.root_dir / box / "mounts").glob("*")) == []  # nothing half-made


@pytest.fixture
def rebinding_runner(tmp_path_factory: pytest.TempPathFactory, hosts: TestHosts,
                     runner: Runner) -> Iterator[Runner]:
    """A runner whose endpoint names resolve with the test hosts' DNS server, which the
    test can make answer what it likes."""
    from pulumi_leap0.runner.network import EgressSettings

    yield Runner(tmp_path_factory.mktemp("rebind") / "sandboxes",
                 egress=EgressSettings(resolver=hosts.resolver,
                                       allow_mount_endpoints=("127.0.0.1/32",)))


def test_a_name_rebound_after_the_check_still_leads_to_the_checked_address(
    rebinding_runner: Runner, hosts: TestHosts, s3: S3
) -> None:
    name = "leap0rebind"  # one label: moto reads the bucket from the path, not the name
    port = int(s3.endpoint.rsplit(":", 1)[1])
    hosts.addresses[name] = "127.0.0.1"
    # The same port, on an address nobody allowed.
    elsewhere = Listener(NOT_FOUND, "127.0.0.2", port, read_first=True)
    boxes = Sandboxes(rebinding_runner)
    try:
        box = boxes.start(mounts=(MountConfig(
            id="mnt-rebind", bucket=s3.bucket, mount_path="/mnt/models", prefix="release/",
            endpoint=f"http://{name}:{port}", access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key),))
        hosts.addresses[name] = "127.0.0.2"
        time.sleep(6)  # past the mount's directory cache: the next listing asks again
        listed = rebinding_runner.exec(box, "ls /mnt/models; cat /mnt/models/readme.txt",
                                       timeout=60)
        assert "weights for release" in listed.stdout, listed.stderr
        assert elsewhere.peers == []
    finally:
        boxes.cleanup()
        elsewhere.close()
        hosts.addresses.pop(name, None)


# --- Other users of the host ---------------------------------------------------------------


def as_user(uid: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "--", "sh", "-c", command], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("uid", [65534, 3_999_999])  # nobody, and a uid no account has
def test_host_users_cannot_read_a_mounted_bucket(
    runner: Runner, sandboxes: Sandboxes, s3: S3, uid: int
) -> None:
    box = sandboxes.start(mounts=(MountConfig(
        id="mnt-private", bucket=s3.bucket, mount_path="/mnt/models", prefix="release/",
        endpoint=s3.endpoint, access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key),))
    inside = runner.exec(box, "cat /mnt/models/readme.txt").stdout
    assert inside == "weights for release\n"  # the sandbox reads it
    staging = runner.runtime_dir / box / "mnt"
    init = runner._records.get(box).init_pid  # type: ignore[union-attr]
    attempts = {
        "list the staging dir": f"ls {staging}",
        "list the mount": f"ls {staging}/mnt-private",
        "read a file": f"cat {staging}/mnt-private/readme.txt",
        "stat a file": f"stat {staging}/mnt-private/readme.txt",
        "through the sandbox's root": f"cat /proc/{init}/root/mnt/models/readme.txt",
    }
    got = {what: as_user(uid, command) for what, command in attempts.items()}
    leaked = {what: done.stdout for what, done in got.items()
              if done.returncode == 0 or "weights" in done.stdout}
    assert leaked == {}
    assert Path(staging).is_dir()  # the attempts failed on permissions, not on a typo


def test_the_operators_exception_must_be_a_cidr() -> None:
    done = subprocess.run([sys.executable, "-m", "pulumi_leap0.backend.cli", "serve",
                           "--allow-mount-endpoint", "localhost"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO_ROOT)
    assert done.returncode == 2 and "not a CIDR" in done.stderr, done.stderr
