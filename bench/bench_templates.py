"""Template upload: the time ``POST /v1/template`` takes for the tests' image, against the
floor of the same two tools run bare (``skopeo copy`` to an OCI layout, ``umoci unpack
--rootless``), side by side, the order alternated.

    python bench/bench_templates.py [--rounds 5]

Starts a plain-HTTP ``docker-registry`` on loopback holding the tests' busybox image
(``tests/fixtures/registry.py`` builds it, no download) and a real ``leap0-backend serve``
allowed to pull from it. Each round uploads under a fresh name and deletes the template
afterwards, so every upload pulls and unpacks the image anew (a second template of an
image already held only pulls its manifest).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.backend import BackendServer, free_port  # noqa: E402
from tests.fixtures.registry import _build_image, _push, _serve  # noqa: E402


def _bare(work: Path, uri: str) -> float:
    target = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                    f"docker://{uri}", f"oci:{target / 'oci'}:image"], check=True,
                   capture_output=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{target / 'oci'}:image",
                    str(target / "bundle")], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    return elapsed


def _upload(api: httpx.Client, uri: str) -> float:
    start = time.perf_counter()
    answer = api.post("/v1/template", json={"name": f"bench-{uuid.uuid4().hex[:8]}",
                                            "uri": uri})
    elapsed = time.perf_counter() - start
    answer.raise_for_status()
    api.delete(f"/v1/template/{answer.json()['id']}").raise_for_status()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make deps)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="leap0-bench-templates-"))
    work.chmod(0o711)
    registry = None
    server = None
    try:
        port = free_port()
        registry = _serve(work, "registry", port, None)
        _push(_build_image(work), "v1", f"127.0.0.1:{port}", None)
        uri = f"127.0.0.1:{port}/tests/busybox:v1"
        server = BackendServer(work / "backend",
                               extra_args=["--insecure-registry", f"127.0.0.1:{port}",
                                           "--log-level", "warning"])
        server.start()
        key = server.new_api_key()
        uploads: list[float] = []
        bare: list[float] = []
        with httpx.Client(base_url=server.base_url, timeout=700.0,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            _upload(api, uri)  # warm-up: imports, page cache
            for round_ in range(args.rounds):
                if round_ % 2 == 0:
                    uploads.append(_upload(api, uri))
                    bare.append(_bare(work, uri))
                else:
                    bare.append(_bare(work, uri))
                    uploads.append(_upload(api, uri))
        up, floor = statistics.median(uploads), statistics.median(bare)
        print(f"template upload (busybox test image, {args.rounds} rounds): "
              f"median {up * 1000:.0f} ms; skopeo copy + umoci unpack bare: median "
              f"{floor * 1000:.0f} ms; ratio {up / floor:.2f}x")
        return 0
    finally:
        if server is not None:
            server.stop()
        if registry is not None:
            registry.kill()
            registry.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
