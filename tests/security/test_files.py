"""File calls as the attack: a tenant with a sandbox of its own drives the file API.

A file call must see exactly what the sandbox user sees, with the sandbox user's rights:
no kernel address, memory map or stack that a program inside cannot read; no call that
blocks a worker of the backend; no work the sandbox does not pay for; and no 500 for a
path the sandbox made awkward. Every test goes through the real backend over HTTP.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer
from tests.support import require

MIB = 1024 * 1024


@pytest.fixture
def raw(backend: BackendServer, api_key: str) -> Iterator[httpx.Client]:
    require(os.geteuid() == 0, "file calls as the sandbox user need a root runner")
    with http(backend, api_key) as client:
        yield client


def _create(raw: httpx.Client, **body: object) -> str:
    created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE, **body})
    assert created.status_code == 201, created.text
    sandbox_id: str = created.json()["id"]
    return sandbox_id


@pytest.fixture
def box(raw: httpx.Client) -> Iterator[str]:
    sandbox_id = _create(raw)
    try:
        yield sandbox_id
    finally:
        raw.delete(f"/v1/sandbox/{sandbox_id}/")


def _exec(raw: httpx.Client, box: str, command: str) -> dict[str, object]:
    answer = raw.post(f"/v1/sandbox/{box}/process/execute",
                      json={"command": command, "timeout": 60})
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def _fs(raw: httpx.Client, box: str, call: str, **kwargs: object) -> httpx.Response:
    return raw.post(f"/v1/sandbox/{box}/filesystem/{call}", **kwargs)  # type: ignore[arg-type]


def _read(raw: httpx.Client, box: str, path: str, **options: object) -> httpx.Response:
    return _fs(raw, box, "read-file", json={"path": path, **options})


def _write(raw: httpx.Client, box: str, path: str, content: bytes) -> httpx.Response:
    return _fs(raw, box, "write-file", params={"path": path}, content=content)


# --- The sandbox user's view and rights ------------------------------------------------------


def test_kernel_addresses_stay_hidden_as_they_are_inside(raw: httpx.Client, box: str) -> None:
    inside = _exec(raw, box, "head -50 /proc/kallsyms; head -20 /proc/iomem")
    assert re.search(r"^0{16} ", str(inside["stdout"]), re.M), inside  # zeros inside
    symbols = _read(raw, box, "/proc/kallsyms", head=50)
    assert symbols.status_code == 200, symbols.text
    addresses = {line.split()[0] for line in symbols.text.splitlines()}
    assert addresses == {"0" * 16}, f"kernel addresses through the API: {sorted(addresses)[:3]}"
    iomem = _read(raw, box, "/proc/iomem", head=20)
    assert iomem.status_code == 200, iomem.text
    ranges = {line.split(" : ")[0].strip() for line in iomem.text.splitlines()}
    assert ranges == {"00000000-00000000"}, f"physical memory map: {sorted(ranges)[:3]}"


def test_a_kernel_stack_is_denied_as_it_is_inside(raw: httpx.Client, box: str) -> None:
    inside = _exec(raw, box, "cat /proc/1/stack")
    assert "Permission denied" in str(inside["stderr"]), inside
    answer = _read(raw, box, "/proc/1/stack")
    assert answer.status_code == 403, f"{answer.status_code}: {answer.text[:200]}"
    assert answer.json()["message"]


# --- Calls that would hold a worker, or burn a core ------------------------------------------


def test_a_fifo_is_refused_at_once_and_holds_no_worker(
    backend: BackendServer, api_key: str, raw: httpx.Client, box: str
) -> None:
    _exec(raw, box, "mkfifo /tmp/fifo")
    started = time.monotonic()
    try:
        answer = _read(raw, box, "/tmp/fifo", timeout=5.0)
    except httpx.ReadTimeout:
        pytest.fail("reading a FIFO through the API blocked")
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == "path"
    assert time.monotonic() - started < 5.0
    written = _write(raw, box, "/tmp/fifo", b"x")
    assert written.status_code == 400, written.text

    # More clients than the backend has worker threads, each leaving after a moment:
    # afterwards every call still answers at once.
    def read_and_leave(_: int) -> int:
        with http(backend, api_key) as client:
            try:
                return _read(client, box, "/tmp/fifo", timeout=2.0).status_code
            except httpx.TimeoutException:
                return 0

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        codes = list(pool.map(read_and_leave, range(48)))
    assert set(codes) == {400}, codes
    started = time.monotonic()
    try:
        assert _exec(raw, box, "echo alive")["stdout"] == "alive\n"
    except httpx.TimeoutException:
        pytest.fail("the backend's workers are still held by FIFO reads")
    assert time.monotonic() - started < 10.0


def test_thousands_of_exclude_patterns_are_refused(raw: httpx.Client, box: str) -> None:
    patterns = [f"*nomatch{i}*[!a]?*" for i in range(5000)]
    started = time.monotonic()
    try:
        answer = _fs(raw, box, "ls", json={"path": "/", "recursive": True, "exclude": patterns},
                     timeout=20.0)
    except httpx.ReadTimeout:
        pytest.fail("ls with 5000 exclude patterns ran for more than 20 s")
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["errors"][0]["field"] == "exclude"
    assert time.monotonic() - started < 5.0


def test_the_most_exclude_patterns_over_a_big_tree_answer_in_time(
    raw: httpx.Client, box: str
) -> None:
    patterns = [f"*nomatch{i}*[!a]?*" for i in range(spec.MAX_LS_EXCLUDE)]
    started = time.monotonic()
    try:
        answer = _fs(raw, box, "ls", json={"path": "/usr", "recursive": True,
                                            "exclude": patterns}, timeout=60.0)
    except httpx.ReadTimeout:
        pytest.fail("ls over /usr ran for more than 60 s")
    elapsed = time.monotonic() - started
    assert answer.status_code in (200, 400), answer.text[:300]
    if answer.status_code == 400:  # bounded in entries: the answer says so, on the path
        assert answer.json()["errors"][0]["field"] == "path"
    assert elapsed < 15.0, f"{elapsed:.1f}s"


# --- Memory: the sandbox pays, the backend streams ------------------------------------------


def _memory_cgroup(sandbox_id: str) -> Path:
    found = glob.glob(f"/sys/fs/cgroup/memory/leap0/*/{sandbox_id}") or glob.glob(
        f"/sys/fs/cgroup/leap0/*/{sandbox_id}")
    require(bool(found), "the sandbox's memory cgroup (root, cgroups)")
    return Path(found[0])


def _charged(cgroup: Path) -> int:
    for name in ("memory.usage_in_bytes", "memory.current"):
        if (cgroup / name).exists():
            return int((cgroup / name).read_text())
    raise AssertionError(f"no memory accounting in {cgroup}")


def test_a_written_file_is_charged_to_the_sandbox(raw: httpx.Client, box: str) -> None:
    cgroup = _memory_cgroup(box)
    before = _charged(cgroup)
    assert _write(raw, box, "/tmp/big", os.urandom(32 * MIB - 1)).status_code == 204
    grown = _charged(cgroup) - before
    assert grown >= 28 * MIB, f"the sandbox was charged {grown / MIB:.1f} MiB for 32 MiB"


def _backend_pid(backend: BackendServer) -> int:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and str(backend.data_dir).encode() in argv:
                return int(entry.name)
    raise AssertionError("backend process not found")


def _peak_rss_growth(pid: int, work: object) -> int:
    """How far the backend's resident memory rises above where it was during ``work``."""
    status = Path(f"/proc/{pid}/status")

    def kib(field: str) -> int:
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith(field))
        return int(line.split()[1]) * 1024

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    before = kib("VmRSS:")
    work()  # type: ignore[operator]
    return kib("VmHWM:") - before


def test_reads_and_writes_stream_through_the_backend(
    backend: BackendServer, raw: httpx.Client, box: str
) -> None:
    _exec(raw, box, "head -c 200M /dev/urandom > /tmp/large")
    pid = _backend_pid(backend)
    received: list[int] = []

    def read_large() -> None:
        with raw.stream("POST", f"/v1/sandbox/{box}/filesystem/read-file",
                        json={"path": "/tmp/large"}) as answer:
            assert answer.status_code == 200
            received.append(sum(len(chunk) for chunk in answer.iter_bytes()))

    grown = _peak_rss_growth(pid, read_large)
    assert received == [200 * MIB]
    assert grown < 64 * MIB, f"the backend grew by {grown / MIB:.0f} MiB to serve 200 MiB"

    payload = os.urandom(32 * MIB - 1)
    grown = _peak_rss_growth(pid, lambda: _write(raw, box, "/tmp/up", payload))
    assert grown < 16 * MIB, f"the backend grew by {grown / MIB:.0f} MiB to take 32 MiB"
    assert _exec(raw, box, "stat -c %s /tmp/up")["stdout"] == f"{32 * MIB - 1}\n"


def test_devices_are_not_read_or_written(raw: httpx.Client, box: str) -> None:
    started = time.monotonic()
    for path in ("/dev/zero", "/dev/urandom"):
        answer = _read(raw, box, path, timeout=30.0)
        assert answer.status_code == 400, f"{path}: {answer.status_code}"
        assert answer.json()["errors"][0]["field"] == "path"
    full = _write(raw, box, "/dev/full", b"x")
    assert full.status_code == 400, full.text
    assert time.monotonic() - started < 5.0


# --- 4xx, never 500 ---------------------------------------------------------------------------


def _assert_refused(answer: httpx.Response, what: str) -> None:
    assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:200]}"
    body = answer.json()
    assert body["message"], what
    if answer.status_code == 400:
        assert body["errors"][0]["field"] == "path", (what, body)


def test_awkward_paths_answer_4xx_naming_the_path(raw: httpx.Client, box: str) -> None:
    _exec(raw, box, "ln -s /proc/1/root ~/pr; ln -s /proc/1/root/etc ~/pretc")
    long_name = "/tmp/" + "n" * 300
    long_path = "/tmp/" + "/".join(["d" * 200] * 25)
    cases: list[tuple[str, httpx.Response]] = [
        ("write on /usr", _write(raw, box, "/usr/evil", b"x")),
        ("write over a read-only bind", _write(raw, box, "/etc/passwd", b"x")),
        ("mkdir on /usr", _fs(raw, box, "mkdir", json={"path": "/usr/newdir"})),
        ("mkdir -p on /usr", _fs(raw, box, "mkdir", json={"path": "/usr/a/b",
                                                          "recursive": True})),
        ("delete on /usr", _fs(raw, box, "delete", json={"path": "/usr/bin/env"})),
        ("delete -r on /usr", _fs(raw, box, "delete", json={"path": "/usr/share/doc",
                                                            "recursive": True})),
        ("a name over NAME_MAX", _write(raw, box, long_name, b"x")),
        ("a name over NAME_MAX (mkdir)", _fs(raw, box, "mkdir", json={"path": long_name})),
        ("a name over NAME_MAX (stat)", _fs(raw, box, "stat", json={"path": long_name})),
        ("a path over PATH_MAX", _read(raw, box, long_path)),
        ("a path over PATH_MAX (write)", _write(raw, box, long_path, b"x")),
        ("through /proc/1/root", _read(raw, box, "/home/user/pr/etc/hostname")),
        ("through /proc/1/root (ls)", _fs(raw, box, "ls", json={"path": "/home/user/pretc"})),
        ("through /proc/1/root (write)", _write(raw, box, "/home/user/pr/tmp/x", b"x")),
        ("read /proc/1/mem", _read(raw, box, "/proc/1/mem")),
        ("write /proc/1/mem", _write(raw, box, "/proc/1/mem", b"x")),
        ("write /dev/full", _write(raw, box, "/dev/full", b"x")),
    ]
    for what, answer in cases:
        _assert_refused(answer, what)
    # Not UTF-8: refused as JSON or as a path, either way a 400.
    answer = _fs(raw, box, "stat", content=b'{"path": "/tmp/\\udcff"}',
                 headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] in ("body", "path")
    assert _exec(raw, box, "cat /etc/hostname")["stdout"] == f"{box}\n"
    # A name that is not UTF-8 is listed (as U+FFFD), not a 500.
    _exec(raw, box, "mkdir /tmp/odd; touch \"$(printf '/tmp/odd/\\377')\"")
    listing = _fs(raw, box, "ls", json={"path": "/tmp/odd"})
    assert listing.status_code == 200, listing.text
    assert [item["name"] for item in listing.json()["items"]] == ["\ufffd"]


def test_a_full_disk_answers_4xx(raw: httpx.Client) -> None:
    sandbox_id = _create(raw, memory=2048)
    try:
        filled = _exec(raw, sandbox_id, "dd if=/dev/zero of=/tmp/fill bs=1M 2>&1")
        assert "No space left" in str(filled["stdout"]), filled
        _assert_refused(_write(raw, sandbox_id, "/tmp/more", b"y" * MIB), "write on a full disk")
    finally:
        raw.delete(f"/v1/sandbox/{sandbox_id}/")
