"""The seccomp filter every process of a sandbox runs under, and how it gets there.

The list is the usual container default: what Docker's default profile (moby
``profiles/seccomp/default.json``, which containerd's ``contrib/seccomp`` and crun's OCI
defaults follow) refuses a container without extra capabilities, as a deny list over an
allowing default. Denied calls answer EPERM instead of killing, so programs degrade politely
(``keyctl`` says "Operation not permitted", a library falls back). Where we part from Docker:

- ``ptrace`` (and ``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``) stay allowed,
  as in Docker on kernels >= 4.8: since 4.8 the kernel checks the filter again after a
  tracer changed a call, so tracing cannot bypass it; the sandbox's pid namespace and its
  own host uid leave only its own processes to trace; debuggers and strace are what a
  development sandbox is for.
- ``setns`` and ``chroot`` stay allowed: an exec's ``nsenter`` runs under the filter (see
  ``popen``) and needs both. The sandbox user holds no capability in any namespace, so the
  kernel refuses both to it anyway (CAP_SYS_ADMIN, CAP_SYS_CHROOT).
- ``io_uring_*`` are denied (Docker does since 25.0, as do ChromeOS, Android and Google's
  servers): io_uring was the most exploited kernel surface in Google's kCTF, and its
  operations (open, connect, ...) do not pass through system call entry, so no filter sees
  them.
- ``adjtimex``/``clock_adjtime`` are denied outright (Docker allows them for their read-only
  use): the filter cannot see the ``modes`` field inside the struct, and a sandbox has no use
  for the kernel's clock discipline.
- Every ABI but the native one is refused (Docker allows i386 and x32 with the same list):
  the compat entry points are a separate, historically buggy kernel surface (the x32
  ``recvmmsg`` and ``compat_alloc_user_space`` exploits), and no template ships 32-bit
  programs. ``vm86``/``vm86old`` exist only there.
- NUMA placement (``mbind``, ``set_mempolicy``, ``move_pages``...) stays allowed: Docker
  gates it on CAP_SYS_NICE, but on one's own memory it is harmless, and moving another
  process's pages needs that capability from the kernel anyway.

bubblewrap installs the filter (``--seccomp FD``) just before it executes the init, after
making the namespaces and mounts it needs ``unshare``, ``mount`` and ``pivot_root`` for; so
the init and all its descendants are filtered. An exec enters the namespaces with
``nsenter`` from the host and inherits nothing from the init: ``popen`` starts its chain from
a thread of this process that holds the same filter, and a child inherits its parent
thread's filter.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from typing import Any

try:
    import pyseccomp
except (ImportError, RuntimeError):  # RuntimeError: libseccomp itself is missing
    pyseccomp = None

#: Whether this host can build the filter (pyseccomp and Debian's libseccomp2).
AVAILABLE = pyseccomp is not None

DENIED = (
    # Kernel keys are per user and outlive processes: no tenant may hold any.
    "add_key", "keyctl", "request_key",
    # Tracing, BPF and performance counters: kernel attack surface and side channels.
    "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie",
    # Kernels, modules, the machine.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "reboot", "swapon", "swapoff",
    "acct", "syslog", "vhangup", "iopl", "ioperm",
    # The host's clock.
    "clock_settime", "clock_adjtime", "settimeofday", "adjtimex",
    # Mounts and namespaces, old and new mount API (bubblewrap needed them before the filter).
    "mount", "umount2", "pivot_root", "unshare", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    # Quotas and file handles (open_by_handle_at opens any inode of a file system: "Shocker").
    "quotactl", "quotactl_fd", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    # io_uring (see above).
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # Obsolete calls nothing uses.
    "sysfs", "ustat", "uselib", "_sysctl", "nfsservctl",
    # Only on the i386 ABI, which is refused whole; listed so that the list is Docker's.
    "vm86", "vm86old", "stime",
)

# personality(2): Linux (0), PER_LINUX32 (8), UNAME26 and both, and 0xffffffff, the query,
# as in Docker. Every other value sets a persona or flags such as ADDR_NO_RANDOMIZE or
# READ_IMPLIES_EXEC that only help exploits.
PERSONALITY_KEPT_BITS = 0x0008 | 0x0020000
PERSONALITY_QUERY = 0xFFFFFFFF

# clone(2) flags that make namespaces (Docker's 0x7E020000 mask): unshare by another name.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)

#: Threads that start exec chains, each under the filter (``popen``).
SPAWNER_THREADS = 4


def _deny_personalities(f: Any, deny: int) -> None:
    """EPERM unless the value is one of the five above. A libseccomp rule compares an
    argument once, and rules can only add denials to an allowing default, so "not in a set"
    is built from single masked comparisons: with F the bits outside PERSONALITY_KEPT_BITS
    (in the low 32, all the kernel reads), deny (p & (b | c)) == b for each bit b of F and
    the next one c. A value with some but not all of F has such a pair and is denied; no
    bit of F passes; all of F is the query or one of the three below, denied by name."""
    bits = [1 << i for i in range(32) if not (1 << i) & PERSONALITY_KEPT_BITS]
    for b, c in zip(bits, bits[1:] + bits[:1], strict=True):
        f.add_rule(deny, "personality", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, b | c, b))
    for value in (0xFFFFFFFF & ~0x0008, 0xFFFFFFFF & ~0x0020000,
                  0xFFFFFFFF & ~PERSONALITY_KEPT_BITS):
        f.add_rule(deny, "personality",
                   pyseccomp.Arg(0, pyseccomp.MASKED_EQ, 0xFFFFFFFF, value))


@functools.cache
def _filter() -> Any:
    assert pyseccomp is not None, "seccomp.AVAILABLE is false"
    deny = pyseccomp.ERRNO(errno.EPERM)
    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    f.set_attr(pyseccomp.Attr.ACT_BADARCH, deny)
    with contextlib.suppress(OSError):  # a binary tree of calls, on libseccomp >= 2.5
        f.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for name in DENIED:
        # Negative: not a call of this architecture (the i386-only ones on x86_64).
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0:
            f.add_rule(deny, name)
    _deny_personalities(f, deny)
    for flag in CLONE_NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    # ENOSYS, not EPERM: glibc then falls back to clone, whose flags the filter can read
    # (clone3's are in memory). Docker does the same.
    f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


@functools.cache
def program() -> bytes:
    """The compiled BPF program, once per process: what bubblewrap's ``--seccomp`` reads."""
    with tempfile.TemporaryFile() as fh:
        _filter().export_bpf(fh)
        fh.seek(0)
        return fh.read()


_load_lock = threading.Lock()


def _filter_this_thread() -> None:
    # libseccomp loads into the calling thread only (no TSYNC), setting no_new_privs there.
    with _load_lock:
        _filter().load()


_spawner_lock = threading.Lock()


@functools.cache
def _spawner() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=SPAWNER_THREADS, thread_name_prefix="leap0-seccomp",
                              initializer=_filter_this_thread)


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` started from a thread under the filter, so the child and all it
    executes (an exec's whole chain: ``sh``, ``nsenter``, the command) are filtered, while
    the runner's other threads are not. Unfiltered where the filter cannot be built."""
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, **kwargs)
    if not AVAILABLE:
        return start()
    with _spawner_lock:  # one pool per process, even when the first calls race
        spawner = _spawner()
    try:
        return spawner.submit(start).result()
    except BrokenExecutor as exc:  # the kernel refused the filter: fail closed
        raise OSError("the seccomp filter could not be applied") from exc
