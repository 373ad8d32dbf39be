"""rclone, as the mounts run it: which binary, its command lines and its environment.

Pure functions of a mount's config and the host's checked addresses, so they are tested
without root or FUSE (tests/mounts/test_rclone_argv.py); ``mounts.py`` runs what they build.

The binary is the one ``make rclone`` (``tools/build-rclone.sh``) builds from the Go module
proxy, pinned by ``tools/rclone/go.mod``, or the one ``LEAP0_RCLONE`` names (a host that
runs the package outside a checkout). There is no fallback to a distribution's rclone: the
read flags below were chosen by bench/bench_mounts.py for this build, and Debian's 1.60
read at half the speed with them; a host without the build has no mounts, and says so
(``capabilities``), rather than mounts that behave otherwise than the ones tested.

The credentials reach rclone only through its environment (an env-defined remote), never
its arguments, a file or a mount option.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner import network
from pulumi_leap0.runner.types import MountConfig

BINARY_ENV = "LEAP0_RCLONE"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "build-rclone.sh"


def find_binary() -> str | None:
    """The rclone to run: ``$LEAP0_RCLONE``, else the build of ``make rclone``, else None."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if not BUILD_SCRIPT.is_file():
        return None
    try:
        done = subprocess.run(["sh", str(BUILD_SCRIPT), "--where"], capture_output=True,
                              text=True, timeout=30, check=False, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else None


BINARY = find_binary()
REMOTE = "LEAP0"  # the name of rclone's env-defined remote
# ``mount2`` (go-fuse), not ``mount`` (bazil): in bench/bench_mounts.py (a quiet machine,
# 64 MiB) it read 775 MiB/s, 71% of a direct GET, where ``mount`` read 521 (49%) and
# Debian's 1.60 ``mount`` 428 (41%); half the CPU per MiB of ``mount`` (0.5 ms against
# 1.2), equally lazy. go-fuse negotiates 1 MiB FUSE requests, bazil 128 KiB, and each
# request is a round trip through the kernel and rclone. rclone hides ``mount2`` from its
# help; tests/mounts/test_rclone_argv.py checks that this build has it, with these flags.
MOUNT_COMMAND = "mount2"
# Read tuning (bench/bench_mounts.py). The two things that mattered:
# - ``--no-checksum``: otherwise rclone MD5s every read that runs from the start of a file
#   to its end, to compare with the ETag, and that hash was 40% of rclone's CPU here. The
#   object still arrives over TCP (and TLS for https endpoints); an ETag is not even an MD5
#   for multipart uploads.
# - A large first range (128M, doubling): one GET per sequential read instead of one per
#   chunk. Laziness does not depend on it: rclone reads a response only as far as its
#   16 MiB ``--buffer-size`` ahead of the reader and drops the connection on close, so a
#   1 MiB read of a large object fetches about 10 MiB (tests/mounts/test_through_runner.py).
READ_FLAGS: tuple[str, ...] = ("--vfs-read-chunk-size", "128M", "--buffer-size", "16M",
                               "--max-read-ahead", "4M", "--no-checksum")
# The kernel reads ahead of a file on a new FUSE mount 128 KiB (the default of its bdi,
# whatever ``--max-read-ahead`` asks), so every 1 MiB read of a reader waits for its own
# request; with 1 MiB ahead, rclone serves the next request while the reader copies. More
# (16 MiB) was slower in bench/bench_mounts.py: the requests overtake each other and rclone
# seeks; 4 MiB gained nothing. ``mount`` (bazil) collapses with any of it (8 MiB/s). None
# leaves the kernel's default.
READ_AHEAD_KB: int | None = 1024
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def remote(config: MountConfig) -> str:
    return f"{REMOTE}:{config.bucket}/{config.prefix}"


def environment(config: MountConfig) -> dict[str, str]:
    # A clean environment: inherited AWS_* or proxy variables would change what rclone does.
    prefix = f"RCLONE_CONFIG_{REMOTE}_"
    env = {
        "PATH": HOST_PATH,
        "HOME": "/nonexistent",
        prefix + "TYPE": "s3",
        prefix + "PROVIDER": "Other",
        prefix + "ENDPOINT": config.endpoint,
        prefix + "ENV_AUTH": "false",
    }
    if config.access_key_id and config.secret_access_key:
        env[prefix + "ACCESS_KEY_ID"] = config.access_key_id
        env[prefix + "SECRET_ACCESS_KEY"] = config.secret_access_key
    return env


def mount_argv(binary: str, config: MountConfig, host_dir: Path, uid: int, gid: int
               ) -> list[str]:
    """``rclone mount2`` of the bucket and prefix at ``host_dir``, read-only and lazy (no VFS
    cache: reads become ranged GETs), its files ``uid``'s and nobody else's."""
    return [binary, MOUNT_COMMAND, "--config", "/dev/null", remote(config), str(host_dir),
            "--read-only", "--allow-other", "--default-permissions", "--vfs-cache-mode", "off",
            # The sandbox user's files (not nobody's), and nobody else's: the kernel checks.
            "--uid", str(uid), "--gid", str(gid), "--umask", "077",
            "--dir-cache-time", "5s", "--poll-interval", "0", *READ_FLAGS]


def list_argv(binary: str, config: MountConfig) -> list[str]:
    """A listing of the prefix that gives up quickly: does the endpoint answer, with this
    bucket and these credentials?"""
    return [binary, "lsf", "--config", "/dev/null", "--max-depth", "1", "--contimeout", "5s",
            "--timeout", "10s", "--retries", "1", "--low-level-retries", "1", remote(config)]


@dataclass(frozen=True)
class Target:
    """The host an endpoint names and the addresses of it that passed the check."""

    #: None when the endpoint is an address: nothing to resolve, nothing to pin.
    name: str | None
    addresses: tuple[str, ...]
    #: Every address passes the guard without the operator's exception.
    fenced: bool


# Runs as root in rclone's own mount namespace: the copies of the mounts holding /etc/hosts
# and /etc/nsswitch.conf become private, so the binds over them stay there.
_PIN = ('set -e; for f in /etc/hosts /etc/nsswitch.conf; do '
        'mount --make-private "$(findmnt -no TARGET -T "$f")"; done; '
        'mount --bind "$1" /etc/hosts; mount --bind "$2" /etc/nsswitch.conf; shift 2; '
        'exec "$@"')


def confinement(target: Target, hosts: Path, nsswitch: Path) -> list[str]:
    """The argv prefix that runs an rclone command pinned to ``target`` (``hosts`` and
    ``nsswitch`` are written for that) and, where it can be, fenced in (``mounts.py``)."""
    argv = []
    if target.fenced:
        argv += ["setpriv", f"--regid={network.FENCED_GID}", "--clear-groups", "--"]
    if target.name is not None:
        hosts.write_text("".join(f"{a} {target.name}\n" for a in target.addresses))
        nsswitch.write_text("hosts: files\n")
        argv += ["unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c",
                 _PIN, "leap0-pin", str(hosts), str(nsswitch)]
    return argv
