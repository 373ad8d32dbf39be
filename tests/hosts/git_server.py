"""A git server for the test hosts: git's smart HTTP protocol (``git http-backend`` as a CGI
program) behind a small threaded WSGI server, with basic auth.

Run inside the test hosts' network namespace:
``python git_server.py ROOT PORT USER LOG``, the password on stdin (so no host argv or
environment holds it: the tests look for it there). Under ``/private/`` every request needs
``USER:PASSWORD`` (and may push); ``/public/`` needs nothing (read only); ``/stall/`` accepts
the request and never answers, for calls that must end at their own deadline. Each request
is logged as a JSON line with its path and whether it carried credentials (not their value).
"""

from __future__ import annotations

import base64
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT, PORT, USER, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PASSWORD = sys.stdin.readline().strip()
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
_log_lock = threading.Lock()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _authorized(environ: dict[str, Any]) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return header == f"Basic {expected}"


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    area, _, rest = path.lstrip("/").partition("/")
    with _log_lock, open(LOG, "a") as log:
        log.write(json.dumps({"path": path, "query": environ.get("QUERY_STRING", ""),
                              "auth": "HTTP_AUTHORIZATION" in environ}) + "\n")
    if area == "stall":
        time.sleep(3600)
    if area not in ("private", "public"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such area\n"]
    cgi = {
        "GIT_PROJECT_ROOT": ROOT, "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": f"/{rest}",
        "REQUEST_METHOD": environ["REQUEST_METHOD"],
        "QUERY_STRING": environ.get("QUERY_STRING", ""),
        "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
        "REMOTE_ADDR": environ.get("REMOTE_ADDR", ""),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    for name in ("HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
        if name in environ:
            cgi[name] = environ[name]
    if area == "private":
        if not _authorized(environ):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'),
                                                ("Content-Type", "text/plain")])
            return [b"authentication required\n"]
        cgi["REMOTE_USER"] = USER  # http-backend lets an authenticated user push
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if length:
        cgi["CONTENT_LENGTH"] = str(length)
    done = subprocess.run([HTTP_BACKEND], input=body, env=cgi, capture_output=True,
                          timeout=60)
    head, _, content = done.stdout.partition(b"\r\n\r\n")
    if not _:
        head, _, content = done.stdout.partition(b"\n\n")
    status, headers = "200 OK", []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = value.strip()
        elif name:
            headers.append((name.strip(), value.strip()))
    start_response(status, headers)
    return [content]


class Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


server = make_server("0.0.0.0", PORT, app, server_class=Threading, handler_class=Quiet)
print("ready", flush=True)
server.serve_forever()
