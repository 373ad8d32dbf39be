"""What isolation this host can actually give, in words an operator can act on."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pulumi_leap0.runner import mounts, sysutil
from pulumi_leap0.runner.cgroups import Cgroups


@dataclass(frozen=True)
class Capabilities:
    """The runner's guarantees on this host. ``missing`` says, one sentence each, which
    guarantee a sandbox does not get here; empty means every guarantee holds."""

    root: bool
    bubblewrap: bool
    bubblewrap_version: str | None
    namespaces: bool
    cgroup_version: int | None
    cpu: bool
    memory: bool
    pids: bool
    freezer: bool
    cpuacct: bool
    disk_limit: bool
    network_namespaces: bool
    nftables: bool
    network_policy: bool
    fuse: bool
    object_storage_mounts: bool
    safe_file_access: bool
    #: Every sandbox runs as a host uid of its own (keyrings, per-user limits apart).
    host_uid_per_sandbox: bool
    #: Every process of every sandbox runs under the seccomp filter (``seccomp.py``).
    seccomp: bool
    #: A snapshot could hold the sandbox's processes too (CRIU works here). Snapshots hold
    #: the writable layer and the configuration either way; processes are not captured by
    #: this runner yet, so this is what ``criu check`` says, and why, in ``..._detail``.
    snapshot_processes: bool = False
    snapshot_processes_detail: str = ""
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None


def _seccomp_works(program: bytes | None, bwrap: str | None) -> bool:
    """The filter compiled, and a process bubblewrap starts with it really runs under it."""
    if program is None or bwrap is None:
        return False
    r, w = os.pipe()
    try:
        os.write(w, program)
    finally:
        os.close(w)
    try:
        out = subprocess.run(
            [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/",
             "--proc", "/proc", "--seccomp", str(r), "--", "/bin/grep", "-x", "Seccomp:.*2",
             "/proc/self/status"],
            capture_output=True, timeout=10, check=False, pass_fds=(r,),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        os.close(r)
    return out.returncode == 0


def _criu() -> tuple[bool, str]:
    """Whether CRIU can checkpoint processes on this kernel, and the reason in words."""
    criu = shutil.which("criu", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if criu is None:
        return False, "criu is not installed (Debian package criu)"
    out = _run([criu, "check"])
    if out is None:
        return False, "criu check did not finish"
    if out.returncode == 0:
        return True, "criu check passes"
    lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    last = lines[-1].rstrip(".") if lines else "no output"
    return False, f"criu check fails on this kernel: {last}"


def probe(cgroups: Cgroups, scope: str, *, own_uids: bool = False,
          seccomp_program: bytes | None = None) -> Capabilities:
    root = os.geteuid() == 0
    bwrap = shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")
    version: str | None = None
    namespaces = False
    if bwrap:
        out = _run([bwrap, "--version"])
        version = out.stdout.strip().removeprefix("bubblewrap ") if out else None
        trial = _run([bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc",
                      "--unshare-uts", "--unshare-net", "--ro-bind", "/usr", "/usr",
                      "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                      "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
                      "--", "/bin/true"])
        namespaces = trial is not None and trial.returncode == 0
    writable = cgroups.probe_writable(f"leap0/{scope}/probe-{os.getpid()}") if root else {}
    netns = root and shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None \
        and shutil.which("nsenter", path="/usr/bin:/bin") is not None
    nft = shutil.which("nft", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None
    fuse = Path("/dev/fuse").exists() and shutil.which("fusermount3") is not None
    safe_files = sysutil.openat2_supported()

    caps = Capabilities(
        root=root,
        bubblewrap=bwrap is not None,
        bubblewrap_version=version,
        namespaces=namespaces,
        cgroup_version=cgroups.version,
        cpu=writable.get("cpu", False),
        memory=writable.get("memory", False),
        pids=writable.get("pids", False),
        freezer=writable.get("freezer", False),
        cpuacct=writable.get("cpuacct", False),
        disk_limit=root,
        network_namespaces=netns,
        nftables=nft,
        network_policy=netns and nft,
        fuse=fuse,
        object_storage_mounts=mounts.AVAILABLE,
        safe_file_access=safe_files,
        host_uid_per_sandbox=root and own_uids,
        seccomp=_seccomp_works(seccomp_program, bwrap),
    )
    processes, detail = _criu()
    caps = Capabilities(**{**caps.__dict__, "snapshot_processes": False,
                           "snapshot_processes_detail": detail if not processes else
                           f"{detail}, but this runner does not capture processes yet"})
    missing: list[str] = []
    if not caps.bubblewrap:
        missing.append("bubblewrap (bwrap) is not installed: sandboxes cannot start.")
    elif not caps.namespaces:
        missing.append("bubblewrap cannot create namespaces here (user namespaces disabled?): "
                       "sandboxes cannot start.")
    if caps.cgroup_version is None:
        missing.append("no usable cgroup hierarchy: no CPU, memory or process limits.")
    else:
        for ctl, words in (("cpu", "vcpu is not enforced (no CPU quota)"),
                           ("memory", "memory is not limited"),
                           ("pids", "fork bombs are not contained (no pids limit)"),
                           ("freezer", "pause/resume cannot freeze processes")):
            if not writable.get(ctl, False):
                missing.append(f"cgroup {ctl} controller not writable: {words}.")
    if not root:
        missing.append("not running as root: the writable layer has no size limit and "
                       "sandbox processes run under the runner's own uid, not one each.")
    if not caps.network_namespaces:
        missing.append("ip/nsenter unavailable or not root: sandboxes get a private "
                       "loopback-only network from bubblewrap instead of a named netns.")
    if caps.network_namespaces and not caps.network_policy:
        missing.append("nftables (nft) is not installed: sandboxes under allow-all or custom "
                       "network policies fail to start (deny-all still works).")
    if not caps.object_storage_mounts:
        missing.append("object-storage mounts need root, rclone (make rclone), fusermount3 "
                       "and /dev/fuse: sandboxes with mounts fail to start.")
    elif not caps.fuse:
        missing.append("FUSE (/dev/fuse, fusermount3) unavailable: no object-storage mounts.")
    if not caps.seccomp:
        missing.append("no seccomp filter (pyseccomp and libseccomp2 are needed, and a kernel "
                       "with seccomp): sandboxes may call add_key, keyctl, bpf, io_uring and "
                       "the rest of the container default deny list.")
    missing.append(f"snapshots hold files and configuration, not processes: "
                   f"{caps.snapshot_processes_detail}.")
    if not caps.safe_file_access:
        missing.append("openat2 unsupported (Linux < 5.6): the filesystem API is disabled.")
    return Capabilities(**{**caps.__dict__, "missing": missing})
