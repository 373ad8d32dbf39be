"""Preview URLs: ``{id}-{port}.<domain>`` with the API key, presigned ``{token}.<domain>``.

A server in a ``deny-all`` sandbox is reached through the backend (ingress), while the
sandbox still cannot dial out; Host tricks never reach the host or the API; another
organization's sandbox or token, an expired or deleted token, are 404.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.backend.helpers import TEMPLATE, http, sdk, wait_for
from tests.fixtures.backend import BackendServer, free_port
from tests.hosts import TestHosts

PORT = 8000
#: A server in the sandbox that answers every request with what it received, as JSON.
ECHO_SERVER = r"""
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        size = int(self.headers.get("content-length") or 0)
        body = json.dumps({"marker": "in-the-sandbox", "method": self.command,
                           "path": self.path, "headers": dict(self.headers.items()),
                           "body": self.rfile.read(size).decode()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.fixture
def served(backend: BackendServer, api_key: str) -> Iterator[Any]:
    """A deny-all sandbox with the echo server on ``PORT``, its SDK told the backend's
    sandbox domain (``LEAP0_SANDBOX_DOMAIN``; the server's default ``localhost:PORT``)."""
    with sdk(backend, api_key, sandbox_domain=f"localhost:{backend.port}") as leap0:
        sandbox = leap0.sandboxes.create(template_name=TEMPLATE,
                                         network_policy={"mode": "deny-all"})
        try:
            sandbox.filesystem.write_file(path="/tmp/echo.py", content=ECHO_SERVER)
            sandbox.process.execute(
                command=f"nohup python3 /tmp/echo.py {PORT} >/dev/null 2>&1 &")
            wait_for(lambda: "LISTEN" in sandbox.process.execute(command=(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
                f"{PORT}), 1)\" && echo LISTEN")).stdout, what="the echo server")
            yield sandbox
        finally:
            leap0.sandboxes.delete(sandbox.id)


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def get(backend: BackendServer, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=backend.base_url, timeout=30) as raw:
        return raw.get(path, headers={"host": host, **kwargs.pop("headers", {})}, **kwargs)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def raw_request(backend: BackendServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", backend.port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
        return answer


def test_invoke_url_reaches_the_port_with_the_api_key_which_the_sandbox_never_sees(
        served: Any, backend: BackendServer, api_key: str) -> None:
    url = served.invoke_url("/some/path?q=1", port=PORT)
    assert url.startswith("https://") and host_of(url) == (
        f"{served.id}-{PORT}.localhost:{backend.port}")  # the SDK's own form
    answer = get(backend, host_of(url), "/some/path?q=1",
                 headers={"authorization": f"Bearer {api_key}", "x-app": "1"})
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["marker"] == "in-the-sandbox" and seen["path"] == "/some/path?q=1"
    assert seen["headers"]["x-app"] == "1"
    assert seen["headers"]["host"] == host_of(url)
    assert api_key not in json.dumps(seen) and "authorization" not in {
        k.lower() for k in seen["headers"]}
    with httpx.Client(base_url=backend.base_url, timeout=30) as raw:
        posted = raw.post("/form", content=b"x" * 100_000, headers={
            "host": host_of(url), "authorization": f"Bearer {api_key}"})
    assert posted.status_code == 200 and len(posted.json()["body"]) == 100_000
    assert get(backend, host_of(url)).status_code == 401
    stranger = backend.new_api_key()
    refused = get(backend, host_of(url), headers={"authorization": f"Bearer {stranger}"})
    assert refused.status_code == 404 and "in-the-sandbox" not in refused.text


def test_presigned_url_works_until_deleted_or_expired(
        served: Any, backend: BackendServer, api_key: str) -> None:
    presigned = served.create_presigned_url(port=PORT, expires_in=600)
    assert presigned.sandbox_id == served.id and presigned.port == PORT
    assert presigned.id.startswith("psu-") and presigned.token in presigned.url
    answer = get(backend, host_of(presigned.url), "/p")  # no API key: the token is the key
    assert answer.status_code == 200 and answer.json()["path"] == "/p"
    # Stored hashed: the token is nowhere in the server's files.
    raw_db = b"".join(p.read_bytes() for p in backend.data_dir.glob("leap0.db*"))
    assert presigned.token.encode() not in raw_db
    stranger = backend.new_api_key()
    with http(backend, stranger) as raw:
        assert raw.delete(
            f"/v1/sandbox/{served.id}/presigned-url/{presigned.id}").status_code == 404
        assert raw.post(f"/v1/sandbox/{served.id}/presigned-url",
                        json={"port": PORT}).status_code == 404
    assert get(backend, host_of(presigned.url), "/p").status_code == 200
    served.delete_presigned_url(presigned.id)
    gone = get(backend, host_of(presigned.url), "/p")
    assert gone.status_code == 404 and "in-the-sandbox" not in gone.text
    with http(backend, api_key) as raw:
        again = raw.delete(f"/v1/sandbox/{served.id}/presigned-url/{presigned.id}")
        assert again.status_code == 404
        bad = raw.post(f"/v1/sandbox/{served.id}/presigned-url", json={"port": 0})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "port"
    short = served.create_presigned_url(port=PORT, expires_in=1)
    time.sleep(1.5)
    assert get(backend, host_of(short.url)).status_code == 404
    made_up = get(backend, f"{'0' * 32}.localhost:{backend.port}")
    assert made_up.status_code == 404


def test_host_tricks_never_reach_the_host_or_the_api(
        served: Any, backend: BackendServer, api_key: str) -> None:
    auth = {"authorization": f"Bearer {api_key}"}
    domain = f"localhost:{backend.port}"
    # A server on the host's loopback, and the backend's own port: neither is in the sandbox.
    host_port = free_port()
    host_server = subprocess.Popen([sys.executable, "-m", "http.server", str(host_port),
                                    "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: listening(host_port), what="the host's server")
        for port in (host_port, backend.port):
            answer = get(backend, f"{served.id}-{port}.{domain}", "/v1/sandboxes", headers=auth)
            assert answer.status_code == 502, answer.text
            assert "Directory listing" not in answer.text and "items" not in answer.text
    finally:
        host_server.kill()
        host_server.wait()
    target = f"{served.id}-{PORT}.{domain}".encode()
    key = f"Bearer {api_key}".encode()
    # An absolute-form target naming the API goes to the sandbox (the Host decides) ...
    answer = raw_request(backend, b"GET http://127.0.0.1:%d/v1/sandboxes HTTP/1.1\r\nHost: %s"
                         b"\r\nAuthorization: %s\r\nConnection: close\r\n\r\n"
                         % (backend.port, target, key))
    assert b"in-the-sandbox" in answer and b'"items"' not in answer
    # ... and one naming the sandbox, under the API's own Host, goes to the API's 404.
    answer = raw_request(backend, b"GET http://%s/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         b"Authorization: %s\r\nConnection: close\r\n\r\n"
                         % (target, backend.port, key))
    assert b"in-the-sandbox" not in answer and answer.startswith(b"HTTP/1.1 404")
    # Two Host headers: refused, whichever comes first.
    for first, second in [(target, b"127.0.0.1"), (b"127.0.0.1", target)]:
        answer = raw_request(backend, b"GET / HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n"
                             b"Authorization: %s\r\nConnection: close\r\n\r\n"
                             % (first, second, key))
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"in-the-sandbox" not in answer
    # Names that only look like a preview host are not one.
    for host in [f"{served.id}-{PORT}.{domain}@evil.example", f"{served.id}-{PORT}.{domain}.evil",
                 f"x.{served.id}-{PORT}.{domain}", f"{served.id}-99999.{domain}",
                 f"{served.id}-{PORT}.localhost:1"]:
        answer = get(backend, host, headers=auth)
        assert "in-the-sandbox" not in answer.text, host
        assert answer.status_code in (400, 404), (host, answer.status_code)


def test_a_deny_all_sandbox_gets_ingress_but_still_cannot_dial_out(
        served: Any, backend: BackendServer, api_key: str, hosts: TestHosts) -> None:
    before = len(hosts.requests())
    answer = get(backend, f"{served.id}-{PORT}.localhost:{backend.port}",
                 headers={"authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200, answer.text
    probe = served.process.execute(command=(
        "python3 -c \"import socket,sys; socket.create_connection((sys.argv[1], 80), 3)\" "
        f"{hosts.address('allowed')} && echo DIALLED || echo REFUSED"))
    assert "REFUSED" in probe.stdout and "DIALLED" not in probe.stdout
    assert served.process.execute(command="ip -o route show").stdout.strip() == ""
    assert len(hosts.requests()) == before


def test_nothing_listening_is_a_502_and_a_stopped_sandbox_a_409(
        backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0:
        sandbox = leap0.sandboxes.create(template_name=TEMPLATE,
                                         network_policy={"mode": "deny-all"})
        try:
            host = f"{sandbox.id}-9.localhost:{backend.port}"
            auth = {"authorization": f"Bearer {api_key}"}
            assert get(backend, host, headers=auth).status_code == 502
            with http(backend, api_key) as raw:
                assert raw.post(f"/v1/sandbox/{sandbox.id}/stop").status_code == 200
            assert get(backend, host, headers=auth).status_code == 409
        finally:
            leap0.sandboxes.delete(sandbox.id)


def test_the_sdk_over_https_reaches_the_sandbox_through_its_own_invoke_url(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --sandbox-domain --tls-cert --tls-key``: the SDK's ``https://`` URLs as they are
    (only the name's resolution is done here, since ``*.sandbox.localhost`` need not resolve
    on this host: the connection goes to 127.0.0.1 with the URL's name as Host and SNI)."""
    import trustme

    from tests.fixtures.backend import running_backend

    ca = trustme.CA()
    port = free_port()
    domain = f"sandbox.localhost:{port}"
    cert = ca.issue_cert("*.sandbox.localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the SDK's httpx too
    with running_backend(["--sandbox-domain", domain, "--tls-cert", str(tmp_path / "server.pem"),
                          "--tls-key", str(tmp_path / "key.pem")], port=port,
                         scheme="https") as server:
        key = server.new_api_key()
        from leap0 import Leap0Client

        verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with Leap0Client(api_key=key, base_url=server.base_url, sandbox_domain=domain,
                         sdk_otel_enabled=False) as leap0:
            sandbox = leap0.sandboxes.create(template_name=TEMPLATE,
                                             network_policy={"mode": "deny-all"})
            try:
                sandbox.filesystem.write_file(path="/tmp/echo.py", content=ECHO_SERVER)
                sandbox.process.execute(
                    command=f"nohup python3 /tmp/echo.py {PORT} >/dev/null 2>&1 &")
                url = sandbox.invoke_url("/tls", port=PORT)
                presigned = sandbox.create_presigned_url(port=PORT)
                assert presigned.url.startswith(f"https://{presigned.token}.{domain}")
                for target, headers in [(url, {"authorization": f"Bearer {key}"}),
                                        (presigned.url, {})]:
                    parts = urlsplit(target)
                    name = parts.hostname
                    assert name is not None
                    with httpx.Client(verify=verify, timeout=30) as tls:
                        def fetch(parts: Any = parts, name: str = name,
                                  headers: dict[str, str] = headers) -> httpx.Response:
                            return tls.get(f"https://127.0.0.1:{port}{parts.path or '/'}",
                                           headers={"host": parts.netloc, **headers},
                                           extensions={"sni_hostname": name})
                        wait_for(lambda fetch=fetch: fetch().status_code == 200,
                                 what="the echo server over TLS")
                        assert fetch().json()["marker"] == "in-the-sandbox"
            finally:
                leap0.sandboxes.delete(sandbox.id)
