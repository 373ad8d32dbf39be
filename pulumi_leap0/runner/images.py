"""Container images as template root file systems: pulled by skopeo, unpacked by umoci.

``ImageStore.pull`` copies ``docker://<uri>`` into an OCI layout (skopeo) and unpacks it
into a root file system (``umoci unpack --rootless``), both in a private scratch directory
(0700; as root, a tmpfs of ``max_mib``, so an image too large fails with ENOSPC instead of
filling the host's disk), then moves the root into ``<store>/<hex of the manifest digest>/``:
content-addressed, so two templates of one image share one root, read-only to every
sandbox (``layer.py`` puts each sandbox's writes in an overlay above it).

Why these tools and not code of ours: registries speak several auth schemes, manifest
lists and media types, and layers carry whiteouts and hard links; skopeo and umoci are
the containers project's own implementations of exactly that. ``--rootless`` because the
root must not hold the image's owners as host uids (a uid 1000 file would be a host
user's): every file is the runner's, and the store is 0700, so no host user reaches a
setuid binary of an image either; sandboxes see the root through an overlay mounted
``nosuid,nodev``.

Credentials reach skopeo only through an auth file (0600, in the 0700 scratch directory,
removed with it), never its command line or environment; skopeo is told never to read
the host's own auth files, registries.conf or signature policy.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pulumi_leap0.runner import network, sysutil
from pulumi_leap0.runner.errors import RunnerError

log = logging.getLogger("leap0.runner.images")

#: Images run as this user when theirs is root: see ``resolve_user``.
FALLBACK_USER, FALLBACK_UID = "user", 1000
_META = "image.json"


class PullError(RunnerError):
    """An image that could not be pulled; ``field`` names the request's input at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class BasicCredentials:
    username: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class Image:
    """An unpacked image. ``config`` is the image's own (entrypoint, cmd, working_dir, user,
    env as the API shows them); ``uid``/``gid``/``home``/``env`` are what its processes run
    with, the user resolved in the image's /etc/passwd by umoci."""

    digest: str
    rootfs: Path
    config: dict[str, object]
    user: str
    uid: int
    gid: int
    home: str
    workdir: str
    env: dict[str, str]


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef"
                                                            for c in value):
        raise RunnerError("an image digest is sha256:<64 hex digits>")
    return value


class ImageStore:
    """Unpacked images under ``directory`` (0700), one per manifest digest.

    ``insecure_registries`` (``host:port``) are the registries reached over plain HTTP or
    unverified TLS; every other one over verified TLS only."""

    def __init__(self, directory: Path, insecure_registries: Iterable[str] = ()) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.insecure = frozenset(r.lower() for r in insecure_registries)
        self._privileged = os.geteuid() == 0
        # Scratch of uploads a crash interrupted: nothing half-made outlives a restart.
        for leftover in self.directory.glob(".pull-*"):
            _remove_scratch(leftover)

    def get(self, digest: str) -> Image | None:
        path = self.directory / _hex(digest)
        try:
            raw = json.loads((path / _META).read_text())
        except (OSError, ValueError):
            return None
        return Image(**{**raw, "rootfs": path / "rootfs"})

    def remove(self, digest: str) -> None:
        path = self.directory / _hex(digest)
        with contextlib.suppress(FileNotFoundError):
            (path / _META).unlink()  # first: a root without it is never used again
        shutil.rmtree(path, ignore_errors=True)

    def pull(self, uri: str, registry: str, *, credentials: BasicCredentials | None,
             timeout_s: float, max_mib: int) -> Image:
        deadline = time.monotonic() + timeout_s
        scratch = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.directory))
        try:
            if self._privileged:
                sysutil.mount("leap0-pull", scratch, "tmpfs",
                              sysutil.MS_NOSUID | sysutil.MS_NODEV, f"size={max_mib}m,mode=0700")
            digest = self._copy(uri, registry, scratch, credentials, deadline, max_mib)
            existing = self.get(digest)
            if existing is not None:
                return existing
            _run(["umoci", "unpack", "--rootless", "--image", f"{scratch / 'oci'}:image",
                  str(scratch / "bundle")], scratch, deadline, timeout_s, max_mib, "unpack")
            return self._keep(digest, scratch, deadline, timeout_s)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            # What the image's JSON (its config, umoci's reading of it) may be like.
            log.warning("an image could not be read: %s: %s", type(exc).__name__, exc)
            raise PullError("uri", "the image's configuration could not be read") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise PullError("uri", f"the image is larger than {max_mib} MiB") from None
            raise RunnerError(f"the image could not be stored: {exc.strerror}") from None
        finally:
            _remove_scratch(scratch)

    def _copy(self, uri: str, registry: str, scratch: Path,
              credentials: BasicCredentials | None, deadline: float, max_mib: int) -> str:
        home = scratch / "home"
        home.mkdir(mode=0o700)
        # Empty: no mirrors, no short-name aliases, no search registries of the host's.
        (scratch / "registries.conf").write_text("")
        auth = ["--src-no-creds"]
        if credentials is not None:
            token = base64.b64encode(
                f"{credentials.username}:{credentials.password}".encode()).decode()
            fd = os.open(scratch / "auth.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": {registry: {"auth": token}}}, fh)
            auth = ["--src-authfile", str(scratch / "auth.json")]
        tls = ["--src-tls-verify=false"] if registry in self.insecure else []
        # --insecure-policy: no signature policy of the host's applies; trust is the
        # registry's TLS (and the digest the answer reports).
        argv = [*self._fence(registry), "skopeo", "--insecure-policy", "--tmpdir", str(scratch),
                "copy",
                "--retry-times", "0", *auth, *tls, "--digestfile", str(scratch / "digest"),
                f"docker://{uri}", f"oci:{scratch / 'oci'}:image"]
        _run(argv, scratch, deadline, deadline - time.monotonic(), max_mib, "pull",
             env={"HOME": str(home), "XDG_RUNTIME_DIR": str(home),
                  "CONTAINERS_REGISTRIES_CONF": str(scratch / "registries.conf"),
                  "REGISTRY_AUTH_FILE": str(scratch / "none.json"),
                  "TMPDIR": str(scratch)})
        with contextlib.suppress(FileNotFoundError):
            (scratch / "auth.json").unlink()  # at once, not only with the scratch
        digest = (scratch / "digest").read_text().strip()
        _hex(digest)
        return digest

    def _fence(self, registry: str) -> list[str]:
        """skopeo dials the host a tenant named, from the host, as root: run it with the
        fenced group (``network.FENCED_GID``, as rclone), whose packets the host table refuses
        to this host's own addresses and to what the egress guard refuses (link-local
        metadata, the sandbox networks). The registries an operator named with
        ``--insecure-registry`` are theirs to reach, so they are not fenced."""
        if registry in self.insecure or os.geteuid() != 0:
            return []  # not root: no fence to set, and no host service reachable as root
        network.install_host_rules()
        return ["setpriv", f"--regid={network.FENCED_GID}", "--clear-groups", "--"]

    def _keep(self, digest: str, scratch: Path, deadline: float, timeout_s: float) -> Image:
        bundle = scratch / "bundle"
        runtime = json.loads((bundle / "config.json").read_text())
        process = runtime.get("process") or {}
        rootfs = bundle / "rootfs"
        if not _in_root(rootfs, "/bin/sh"):
            raise PullError("uri", "the image has no /bin/sh, which every sandbox process "
                            "starts from")
        config = _image_config(scratch / "oci")
        env = dict(item.split("=", 1) for item in process.get("env", []) if "=" in item)
        uid, gid = int(process["user"]["uid"]), int(process["user"]["gid"])
        user, home = resolve_user(rootfs, uid, env.get("HOME"))
        if uid == 0:
            uid = gid = FALLBACK_UID
        env.update({"HOME": home, "USER": user, "LOGNAME": user})
        workdir = "/" + str(process.get("cwd") or "/").lstrip("/")
        target = self.directory / _hex(digest)
        staging = self.directory / f".pull-{_hex(digest)[:12]}-{os.getpid()}-{time.time_ns()}"
        try:
            if time.monotonic() > deadline:
                raise PullError("uri", f"could not be pulled within {timeout_s:g} s")
            # Out of the size-bounded scratch tmpfs onto the store's disk; a rename makes it
            # appear whole (a concurrent pull of the same image may have won meanwhile).
            staging.mkdir(mode=0o700)
            shutil.copytree(rootfs, staging / "rootfs", symlinks=True)
            image = Image(digest=digest, rootfs=target / "rootfs", config=config, user=user,
                          uid=uid, gid=gid, home=home, workdir=workdir, env=env)
            meta = {k: v for k, v in asdict(image).items() if k != "rootfs"}
            (staging / _META).write_text(json.dumps(meta))
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        kept = self.get(digest)
        if kept is None:
            raise RunnerError("the unpacked image could not be stored")
        return kept


def resolve_user(rootfs: Path, uid: int, home: str | None) -> tuple[str, str]:
    """The name and home of ``uid`` in the image's /etc/passwd. An image whose user is root
    runs as ``FALLBACK_USER`` instead: the sandbox user never is uid 0 inside its user
    namespace, because an exec enters that namespace with nsenter, and a process entering a
    user namespace as its uid 0 holds every capability in it through the command it runs
    (the kernel resets the bounding set and securebits on setns), and the image has no
    setpriv to drop them with. So the sandbox user holds no capability, as on every
    template."""
    if uid == 0:
        return FALLBACK_USER, f"/home/{FALLBACK_USER}"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        fd = _open_in_root(rootfs, "/etc/passwd")
        with os.fdopen(fd, "r") as fh:
            for line in fh.read(1 << 20).splitlines():
                parts = line.split(":")
                if len(parts) >= 7 and parts[2] == str(uid) and parts[0]:
                    return parts[0], parts[5] or home or "/"
    return FALLBACK_USER, home or f"/home/{FALLBACK_USER}"


def _open_in_root(rootfs: Path, path: str) -> int:
    """``path`` of the image, its symlinks resolved inside ``rootfs`` (an image's
    ``/etc/passwd`` may be a link to anywhere on the host otherwise)."""
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sysutil.openat2(root, path.lstrip("/"), os.O_RDONLY | os.O_CLOEXEC,
                               resolve=sysutil.RESOLVE_IN_ROOT | sysutil.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(root)


def _in_root(rootfs: Path, path: str) -> bool:
    try:
        os.close(_open_in_root(rootfs, path))
    except OSError:
        return False
    return True


def _image_config(layout: Path) -> dict[str, object]:
    """The image's config blob (index -> manifest -> config), as the API's ``image_config``."""
    def blob(digest: str) -> dict[str, object]:
        value: dict[str, object] = json.loads(
            (layout / "blobs" / "sha256" / _hex(digest)).read_text())
        return value

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config_ref = manifest["config"]
    assert isinstance(config_ref, dict)
    raw = blob(str(config_ref["digest"])).get("config") or {}
    assert isinstance(raw, dict)
    env_list = raw.get("Env") or []
    return {
        "entrypoint": raw.get("Entrypoint"),
        "cmd": raw.get("Cmd"),
        "working_dir": raw.get("WorkingDir") or "",
        "user": raw.get("User") or "",
        "env": dict(e.split("=", 1) for e in env_list if "=" in e) or None,
    }


_STDERR_MAX = 64 * 1024


def _run(argv: list[str], scratch: Path, deadline: float, timeout_s: float, max_mib: int,
         step: str, env: Mapping[str, str] | None = None) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise PullError("uri", f"could not be pulled within {timeout_s:g} s")
    with tempfile.TemporaryFile(dir=scratch) as err:
        proc = subprocess.Popen(argv, env={**sysutil.HOST_ENV, **(env or {})}, cwd=scratch,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise PullError("uri", f"could not be pulled within {timeout_s:g} s") from None
        if proc.returncode == 0:
            return
        err.seek(0)
        text = err.read(_STDERR_MAX).decode("utf-8", "replace")
    log.warning("%s of an image failed (%d): %s", step, proc.returncode, text[-2000:])
    raise _explain(text, max_mib)


def _explain(stderr: str, max_mib: int) -> PullError:
    """skopeo's and umoci's complaints in the API's words; their text itself never goes
    back (it may name hosts the caller must not learn about, or echo a header)."""
    text = stderr.lower()
    if "no space left" in text or "file too large" in text:
        return PullError("uri", f"the image is larger than {max_mib} MiB")
    if any(s in text for s in ("unauthorized", "authentication required", "denied",
                               "invalid username/password")):
        return PullError("credentials", "the registry refused the credentials, or the image "
                         "needs credentials")
    if "http response to https client" in text:
        return PullError("uri", "the registry does not speak TLS: an operator may allow it "
                         "with leap0-backend serve --insecure-registry HOST:PORT")
    if any(s in text for s in ("manifest unknown", "name unknown", "not found")):
        return PullError("uri", "no such image in the registry")
    if any(s in text for s in ("x509", "certificate", "tls:")):
        return PullError("uri", "the registry's TLS certificate could not be verified")
    if any(s in text for s in ("no such host", "connection refused", "i/o timeout",
                               "network is unreachable", "dial tcp", "lookup ")):
        return PullError("uri", "the registry could not be reached")
    return PullError("uri", "the image could not be pulled or unpacked")


def _remove_scratch(scratch: Path) -> None:
    with contextlib.suppress(OSError):
        if sysutil.is_mountpoint(scratch):
            sysutil.umount(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
