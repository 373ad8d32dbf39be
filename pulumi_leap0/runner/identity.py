"""Who a sandbox's user is: inside (the template's user) and on the host (a uid of its own).

Inside, the sandbox user is ``template.uid`` in its own user namespace; bubblewrap maps it to
the host uid the init chain drops to (``setpriv``), which holds no capabilities anywhere.
The kernel keeps keyrings, inotify instances, RLIMIT_NPROC, mqueue bytes, locked memory
and the user namespace count per host uid, so every sandbox gets a host uid (and gid) of
its own from a ``UidPool``: claimed at its first start, kept across ``stop`` and ``start``
(its kept layer's files are owned by it), released at ``destroy`` once its directories are
gone. Without root it is the runner's own uid. The sandbox sees generated ``/etc`` identity
files naming only its own user, root and nobody, never the host's accounts.

Before per-sandbox uids every sandbox of a template ran as ``SANDBOX_HOST_UID_BASE +
template.uid``; state recorded then still recovers, and such a sandbox moves to a uid of
its own (its layer re-owned) when it next starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.state import SANDBOX_ID, Records
from pulumi_leap0.runner.templates import Template, TemplateRegistry
from pulumi_leap0.runner.types import SandboxIdentity

SANDBOX_HOST_UID_BASE = 2_000_000_000
#: Per-sandbox host uids: far above the host's users and subordinate ranges, and above
#: every shared uid of the old scheme (a template uid is below 65536).
HOST_UID_FIRST = SANDBOX_HOST_UID_BASE + 65_536
HOST_UID_COUNT = 1_000_000
#: bubblewrap reads uids as signed ints: its uid map refuses anything above.
MAX_HOST_UID = 2**31 - 1
#: Generated per sandbox under ``<runtime dir>/etc`` and bound over the template's.
ETC_FILES = ("passwd", "group", "hostname", "hosts")


@dataclass(frozen=True)
class HostIdentity:
    uid: int
    gid: int
    #: Whether ``uid``/``gid`` are the sandbox's own (root runner) or the runner's.
    dedicated: bool


def runner_identity() -> HostIdentity:
    """Without root there is no other uid to run as."""
    return HostIdentity(uid=os.geteuid(), gid=os.getegid(), dedicated=False)


def legacy_identity(template: Template) -> HostIdentity:
    """The one host uid every sandbox of ``template`` shared before ``UidPool``."""
    host = SANDBOX_HOST_UID_BASE + template.uid
    return HostIdentity(uid=host, gid=host, dedicated=True)


class UidPool:
    """Host uids ``first .. first + count - 1``, one per sandbox, for every runner on the host.

    ``directory`` (``/run/leap0/uids``, root's) holds a claim file per uid in use, named by
    the uid and holding its owner (the sandbox's state directory), and ``next``, a counter
    of uids handed out. Each claim runs under an exclusive ``flock``, so concurrent starts,
    in one process or several, never get the same uid. The counter only grows, so a
    released uid comes back only after ``count`` others: and then only if nothing of it
    lives, no process with it as real, effective, saved or file-system uid, and no kernel
    keys of it. Where /run is a tmpfs a reboot empties the directory, when nothing of any
    uid is left either (the layers are tmpfs mounts); a new counter starts above every uid
    of the range a process holds. Where /run is kept, so are the claims, with the stopped
    sandboxes they name.
    """

    def __init__(self, directory: Path, first: int = HOST_UID_FIRST,
                 count: int = HOST_UID_COUNT) -> None:
        if first <= 0 or count <= 0 or first + count > MAX_HOST_UID + 1:
            raise ValueError(f"host uids must lie in 1..{MAX_HOST_UID}")
        self.directory, self.first, self.count = directory, first, count

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid < self.first + self.count

    def claim(self, owner: str, keep: int | None = None) -> HostIdentity:
        """A uid for ``owner``: ``keep`` (its uid so far) if that is still or again its, else
        the next free one."""
        with self._locked():
            if keep in self:
                assert keep is not None
                holder = self._holder(keep)
                if holder == owner or (holder is None and keep not in _living_uids()):
                    self._write_claim(keep, owner)
                    return HostIdentity(uid=keep, gid=keep, dedicated=True)
            uid = self._next_free()
            self._write_claim(uid, owner)
            return HostIdentity(uid=uid, gid=uid, dedicated=True)

    def release(self, owner: str) -> None:
        """Every uid ``owner`` holds. Call once nothing of the sandbox is left."""
        with self._locked():
            for uid, holder in self._claims():
                if holder == owner:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.directory / str(uid))

    def owners(self) -> dict[int, str]:
        with self._locked():
            return dict(self._claims())

    def release_lost(self, records: Records) -> None:
        """Uids of ``records``' sandboxes that died between removing their directories and
        releasing their uid (a crash of the backend in ``destroy``)."""
        for owner in set(self.owners().values()):
            path = Path(owner)
            if path.parent == records.root_dir and SANDBOX_ID.match(path.name) and not (
                    path.exists() or records.runtime(path.name).exists()):
                self.release(owner)

    # --- Under the lock ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _next_free(self) -> int:
        try:
            handed_out = int((self.directory / "next").read_text())
        except FileNotFoundError:  # a new directory: above every uid a process holds
            living = [u - self.first for u in _living_uids() if u in self]
            handed_out = max(living, default=-1) + 1
        except (OSError, ValueError):  # a damaged counter: from now on, check every uid
            handed_out = self.count
        living_now: set[int] | None = None
        for _ in range(self.count):
            uid = self.first + handed_out % self.count
            handed_out += 1
            if self._holder(uid) is not None:
                continue
            if handed_out > self.count:  # the counter went round: this uid was used before
                if living_now is None:
                    living_now = _living_uids()
                if uid in living_now:
                    continue
            self._write_counter(handed_out)
            return uid
        raise RunnerError("no free host uid for another sandbox: every uid of the range is "
                          "in use or still held by a process of a destroyed sandbox")

    def _write_counter(self, handed_out: int) -> None:
        # In place, not by rename: ext4 flushes a file renamed over another at once, which
        # cost milliseconds per start; a counter of a few bytes is written whole anyway.
        fd = os.open(self.directory / "next", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = str(handed_out).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _holder(self, uid: int) -> str | None:
        try:
            return (self.directory / str(uid)).read_text()
        except FileNotFoundError:
            return None

    def _write_claim(self, uid: int, owner: str) -> None:
        path = self.directory / str(uid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(owner)

    def _claims(self) -> Iterator[tuple[int, str]]:
        for entry in os.scandir(self.directory):
            if entry.name.isdigit():
                holder = self._holder(int(entry.name))
                if holder is not None:
                    yield int(entry.name), holder


def _living_uids() -> set[int]:
    """Every uid a process holds (as real, effective, saved or fs uid) or that owns kernel
    keys. /proc/<pid>'s owner would not do: a non-dumpable process shows as root."""
    uids: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/status", os.O_RDONLY | os.O_CLOEXEC)
            try:
                status = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue  # exited meanwhile
        at = status.find(b"\nUid:")
        if at >= 0:
            uids.update(int(u) for u in status[at + 5:status.index(b"\n", at + 5)].split())
    with contextlib.suppress(OSError):
        for line in Path("/proc/key-users").read_text().splitlines():
            uids.add(int(line.split(":")[0]))
    return uids


def reown(tree: Path, old: HostIdentity, new: HostIdentity) -> None:
    """Give ``new`` what ``old`` owns below ``tree`` (a kept layer moving to another uid),
    never following a symlink the sandbox made."""
    for top, dirs, files in os.walk(tree):
        for path in (top, *(os.path.join(top, n) for n in dirs + files)):
            st = os.lstat(path)
            uid = new.uid if st.st_uid == old.uid else -1
            gid = new.gid if st.st_gid == old.gid else -1
            if uid != -1 or gid != -1:
                os.chown(path, uid, gid, follow_symlinks=False)


def write_etc(runtime_dir: Path, sandbox_id: str, template: Template) -> Path:
    etc = runtime_dir / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    u, name, home = template.uid, template.user, template.home
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        f"{name}:x:{u}:{u}:{name}:{home}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{u}:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text(f"{sandbox_id}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost {sandbox_id}\n::1\tlocalhost\n")
    for f in etc.iterdir():
        os.chmod(f, 0o644)
    return etc


class Identities:
    """Who a sandbox's processes are (``Runner.identities``): the user, its home and the
    working directory of its commands, as its template set them (the one place that reads
    them, for the ``system/`` calls)."""

    def __init__(self, records: Records, templates: TemplateRegistry) -> None:
        self._records, self._templates = records, templates

    def of(self, sandbox_id: str) -> SandboxIdentity:
        box = self._records.known(sandbox_id)
        template = self._templates.get(box.template)
        # A template gone since the sandbox started: the default home of its user.
        home = template.home if template is not None else f"/home/{box.user}"
        return SandboxIdentity(user=box.user, uid=box.uid, home=home, workdir=box.workdir)
