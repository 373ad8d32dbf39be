"""The launch chain and the exec chain as argv: checked without root, and the cgroup-join
link run for real against plain files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import launch, sysutil
from pulumi_leap0.runner.exec import exec_argv, exec_script
from pulumi_leap0.runner.identity import HostIdentity, write_etc
from pulumi_leap0.runner.layer import PARTS
from pulumi_leap0.runner.network import NetworkHandle
from pulumi_leap0.runner.templates import Template

SANDBOX_UID = HostIdentity(uid=2_000_001_000, gid=2_000_001_000, dedicated=True)
RUNNER_UID = HostIdentity(uid=os.geteuid(), gid=os.getegid(), dedicated=False)


def test_the_chain_enters_and_drops_then_runs_bubblewrap() -> None:
    argv = launch.init_argv(netns_path=Path("/run/netns/leap0-s-x"), identity=SANDBOX_UID,
                            args_fd=7)
    assert argv == [
        "nsenter", "--net=/run/netns/leap0-s-x", "--setuid=2000001000", "--setgid=2000001000",
        "--", "bwrap", "--args", "7", "--", "/bin/sh", "-c", launch.INIT,
    ]


def test_without_a_netns_the_chain_drops_with_setpriv() -> None:
    argv = launch.init_argv(netns_path=None, identity=SANDBOX_UID, args_fd=7)
    assert argv == [
        "setpriv", "--reuid=2000001000", "--regid=2000001000", "--clear-groups", "--",
        "bwrap", "--args", "7", "--", "/bin/sh", "-c", launch.INIT,
    ]


def test_without_a_netns_or_root_the_chain_is_bubblewrap_alone() -> None:
    argv = launch.init_argv(netns_path=None, identity=RUNNER_UID, args_fd=3)
    assert argv == ["bwrap", "--args", "3", "--", "/bin/sh", "-c", launch.INIT]


def test_join_writes_the_pid_into_every_cgroup(tmp_path: Path) -> None:
    procs = [tmp_path / "cpu.procs", tmp_path / "memory.procs"]
    for p in procs:
        p.write_text("")
    launch.join(4242, procs)
    assert [p.read_text() for p in procs] == ["4242", "4242"]
    with pytest.raises(OSError):
        launch.join(4242, [tmp_path / "missing" / "cgroup.procs"])


def test_join_puts_the_command_itself_into_every_cgroup(tmp_path: Path) -> None:
    # Plain files stand in for cgroup.procs: what matters is which pid is written, and
    # that it is the pid of the command that then runs (exec, not a child).
    procs = [tmp_path / "cpu.procs", tmp_path / "memory.procs"]
    done = subprocess.run([*launch.join_cgroups(procs), "/bin/sh", "-c", "echo $$"],
                          capture_output=True, text=True, timeout=10, check=True)
    pid = done.stdout.strip()
    assert pid.isdigit()
    assert [p.read_text().strip() for p in procs] == [pid, pid]


def test_join_runs_nothing_when_a_cgroup_cannot_be_joined(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = subprocess.run([*launch.join_cgroups([tmp_path / "missing" / "cgroup.procs"]),
                           "/bin/sh", "-c", f"touch {marker}"],
                          capture_output=True, timeout=10, check=False)
    assert done.returncode == 121
    assert not marker.exists()


def test_the_args_hold_each_option_whole() -> None:
    data = launch.encode_args(["--setenv", "GREETING", "hello world\nsecond line", "--chdir", "/"])
    assert data == b"--setenv\0GREETING\0hello world\nsecond line\0--chdir\0/\0"


def _inputs(tmp_path: Path) -> tuple[Template, Path, Path]:
    """A template root with a symlinked /bin, a secret and a hidden directory in /etc and
    room under /opt; a layer; the generated /etc files. Returns (template, layer, etc)."""
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "shadow").write_text("root:*:1::::::\n")
    (root / "opt" / "leap0").mkdir(parents=True)
    template = Template(name="test/fake", rootfs=root)
    layer = tmp_path / "layer"
    for part, _mode in PARTS:
        (layer / part).mkdir(parents=True)
    return template, layer, write_etc(tmp_path, "sbx-1", template)


def _fd_targets(options: list[str]) -> dict[str, str]:
    """Sandbox path -> the host path its fd names, for every ``--*-fd`` option."""
    found = {}
    for i, option in enumerate(options):
        if option.endswith("-fd") and option != "--info-fd":
            found[options[i + 2]] = os.readlink(f"/proc/self/fd/{options[i + 1]}")
    return found


def test_bwrap_options_build_the_root_from_the_template_and_the_layer(tmp_path: Path) -> None:
    template, layer, etc = _inputs(tmp_path)
    root = template.rootfs
    with launch.HostFds() as fds:
        options = launch.bwrap_options(
            sandbox_id="sbx-1", template=template, etc_dir=etc, layer=layer, staging=None,
            env={"GREETING": "hello world"}, network=None, runner_dir=root / "opt" / "leap0",
            fd=fds)
        targets = _fd_targets(options)
        opened = list(fds.fds)
    assert options[:options.index("--hostname") + 2] == [
        "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns", "--as-pid-1",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--new-session", "--hostname", "sbx-1"]
    assert "--unshare-net" in options  # no named netns: bubblewrap makes an empty one
    joined = " ".join(options)
    assert "--symlink usr/bin /bin" in joined
    assert "--ro-bind /dev/null /etc/shadow" in joined
    assert "--tmpfs /etc/ssh --remount-ro /etc/ssh" in joined
    assert "--tmpfs /opt/leap0" in joined  # the runner's own state, hidden
    assert "/run/leap0/mounts" not in joined  # no staging: no object-storage mounts
    assert targets == {
        "/usr": str(root / "usr"), "/etc": str(root / "etc"), "/opt": str(root / "opt"),
        "/dev/shm": str(layer / "shm"), "/tmp": str(layer / "tmp"),
        "/var/tmp": str(layer / "vartmp"), "/home/user": str(layer / "home"),
        "/etc/passwd": str(etc / "passwd"), "/etc/group": str(etc / "group"),
        "/etc/hostname": str(etc / "hostname"), "/etc/hosts": str(etc / "hosts"),
    }
    assert options[-8:] == ["--remount-ro", "/", "--chdir", "/home/user", "--clearenv",
                            "--setenv", "GREETING", "hello world"]
    for fd in opened:  # HostFds closed them on exit
        with pytest.raises(OSError):
            os.fstat(fd)


def test_bwrap_options_bind_the_network_files_only_where_they_can_land(tmp_path: Path) -> None:
    template, layer, etc = _inputs(tmp_path)
    bundle, staging = tmp_path / "egress-ca.crt", tmp_path / "mnt"
    bundle.write_text("")
    staging.mkdir()
    net = NetworkHandle(netns_name="leap0-s-sbx-1", netns_path=Path("/run/netns/leap0-s-sbx-1"),
                        extra_ro_binds=[(bundle, "/run/leap0/ca-certificates.crt"),
                                        (bundle, "/etc/ssl/certs/ca-certificates.crt")])
    with launch.HostFds() as fds:
        options = launch.bwrap_options(
            sandbox_id="sbx-1", template=template, etc_dir=etc, layer=layer, staging=staging,
            env={}, network=net, runner_dir=tmp_path / "elsewhere", fd=fds)
        targets = _fd_targets(options)
    assert "--unshare-net" not in options  # the chain joined the named netns already
    assert targets["/run/leap0/ca-certificates.crt"] == str(bundle)
    # The template has no system bundle to cover, and its /etc is read-only: no bind there.
    assert "/etc/ssl/certs/ca-certificates.crt" not in targets
    assert targets["/run/leap0/mounts"] == str(staging)


def test_exec_joins_its_own_cgroup_then_enters_the_sandbox_as_its_user() -> None:
    argv = exec_argv(cgroup_procs=[Path("/cg/x/x-1/cgroup.procs")], init_pid=4242, uid=1000)
    assert argv == [
        "/bin/sh", "-c", launch.JOIN, "leap0-join", "/cg/x/x-1/cgroup.procs", "--",
        "nsenter", "--target=4242", "--user", "--mount", "--uts", "--ipc", "--net", "--pid",
        "--cgroup", "--root", "--wd", "--setuid=1000", "--setgid=1000", "--", "/bin/sh", "-s",
    ]


def test_the_exec_script_sets_exactly_the_environment_then_runs_the_command() -> None:
    """Run by a real shell: values arrive as they are, none expanded, stdin is emptied."""
    env = {"A": "1", "B": "two words", "Q": "it's $HOME `id` \"x\"\nline"}
    # The largest command the contract takes, longer than the shell reads from a pipe at once.
    padding = "# " + "z" * (spec.MAX_COMMAND_BYTES - 100) + "\n"
    script = exec_script(env, padding + 'printf "%s|" "$A" "$B" "$Q" "$PWD"; cat; env -0',
                         "/tmp")
    # As the chain starts it: with the host's variables, in another directory.
    done = subprocess.run(["/bin/sh", "-s"], input=script, env=sysutil.HOST_ENV, cwd="/",
                          capture_output=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    shown, _, environ = done.stdout.decode().rpartition("|")
    assert shown == "1|two words|it's $HOME `id` \"x\"\nline|/tmp"
    names = {item.split("=")[0] for item in environ.split("\0") if item}
    assert names == {*env, "PWD"}, names
    missing = subprocess.run(["/bin/sh", "-s"], input=exec_script({}, "echo ran", "/none"),
                             env=sysutil.HOST_ENV, capture_output=True, timeout=10, check=False)
    assert (missing.returncode, missing.stdout) == (125, b"")
