"""A sandbox sees only itself: processes, files, network, and cannot get out."""

from __future__ import annotations

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner

from .conftest import Sandboxes


def sh(runner: Runner, sandbox_id: str, command: str) -> tuple[int, str, str]:
    result = runner.exec(sandbox_id, command, timeout=20)
    return result.exit_code, result.stdout, result.stderr


def test_ps_sees_only_the_sandbox(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    sandboxes.start()  # a neighbour whose processes must stay invisible
    code, out, _ = sh(runner, a, "ps -eo pid,args --no-headers")
    assert code == 0
    lines = [ln.strip() for ln in out.strip().splitlines()]
    # init, its sleep, the exec's shell and ps itself: nothing of the host.
    assert len(lines) <= 4, lines
    assert lines[0].startswith("1 ")
    assert not any("pytest" in ln or "python" in ln for ln in lines)
    assert not any(str(runner.root_dir) in ln for ln in lines)


def test_hostname_is_the_sandbox_id(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    assert sh(runner, a, "hostname")[1].strip() == a


@pytest.mark.parametrize("path", ["/etc/leap0-test", "/usr/leap0-test", "/usr/bin/leap0-test",
                                  "/leap0-test", "/var/leap0-test"])
def test_read_only_root(runner: Runner, sandboxes: Sandboxes, path: str) -> None:
    a = sandboxes.start()
    code, _, err = sh(runner, a, f"echo x > {path}")
    assert code != 0
    assert "Read-only" in err or "Permission denied" in err


def test_writable_layer(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    code, out, err = sh(runner, a, "echo ok > /tmp/t && echo ok > ~/h && echo ok > /var/tmp/v "
                        "&& echo ok > /dev/shm/s && cat /tmp/t ~/h /var/tmp/v /dev/shm/s && pwd")
    assert code == 0, err
    assert out.split() == ["ok"] * 4 + ["/home/user"]


def test_host_files_are_invisible(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    for path in (str(runner.root_dir), "/root", "/home/root", "/work", "/var/lib",
                 "/run/netns", "/sys/fs/cgroup"):
        code, out, _ = sh(runner, a, f"ls -A {path} 2>/dev/null")
        assert code != 0 or out.strip() == "", f"{path} is visible: {out!r}"
    _, out, _ = sh(runner, a, "cat /etc/shadow; cat /etc/machine-id")
    assert out.strip() == ""
    assert sh(runner, a, "test -e /etc/ssh/ssh_host_rsa_key")[0] != 0


def test_other_sandboxes_tmp_is_invisible(runner: Runner, sandboxes: Sandboxes) -> None:
    a, b = sandboxes.start(), sandboxes.start()
    assert sh(runner, a, "echo secret-a > /tmp/mine")[0] == 0
    _, out, _ = sh(runner, b, "cat /tmp/mine; ls -A /tmp")
    assert "secret-a" not in out
    _code, out, _ = sh(runner, b, "find / -xdev -name mine 2>/dev/null; ls /proc | grep -c .")
    assert "mine" not in out


def test_user_is_unprivileged(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    _code, out, _ = sh(runner, a, "id -u; grep CapEff /proc/self/status")
    uid, cap = out.split("\n")[0], out.split("\n")[1]
    assert uid == "1000"
    assert cap.split()[1] == "0000000000000000"


@pytest.mark.parametrize("attempt", [
    "echo b > /proc/sysrq-trigger",
    "echo 1 > /proc/sys/kernel/sysrq",
    "mount -t tmpfs none /tmp",
    "mount --bind /tmp /home/user",
    "nsenter -t 1 -m -p true",
    "unshare -U -r true",
    "unshare -m true",
    "chroot / true",
    "ip link add dummy0 type dummy",
    "ip link set lo down",
    "cat /proc/kcore > /dev/null",
])
def test_escape_attempts_fail(runner: Runner, sandboxes: Sandboxes, attempt: str) -> None:
    a = sandboxes.start()
    code, _, _ = sh(runner, a, attempt)
    assert code != 0, attempt
    assert runner.is_alive(a)
    assert sh(runner, a, "echo still-here")[1].strip() == "still-here"


def test_deny_all_is_loopback_only(limited_runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start(network_policy=spec.NetworkPolicy(mode="deny-all"))
    _, out, _ = sh(limited_runner, a, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
    assert "lo" in out
    assert "eth" not in out and "ens" not in out
    _code, out, _ = sh(limited_runner, a, "ip -o addr 2>/dev/null | awk '{print $2}' | sort -u")
    assert set(out.split()) <= {"lo"}


def test_killing_init_from_inside_is_ignored(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    sh(runner, a, "kill -9 1; kill -9 -1")
    assert runner.is_alive(a)
    assert sh(runner, a, "echo still-here")[1].strip() == "still-here"
