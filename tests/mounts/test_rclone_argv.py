"""rclone's command lines and environment as the mounts build them (no root, no FUSE), and
which rclone runs: the one ``make rclone`` builds, so the tests test what ships."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pulumi_leap0.runner import network, rclone
from pulumi_leap0.runner.types import MountConfig
from tests.support import require

SECRET = "s3cr3t-never-in-argv"
KEY_ID = "AKIANEVERINARGV"


def config(endpoint: str = "https://s3.example.test") -> MountConfig:
    return MountConfig(id="m1", bucket="models", mount_path="/models", endpoint=endpoint,
                       prefix="release/", access_key_id=KEY_ID, secret_access_key=SECRET)


def test_the_credentials_and_the_endpoint_are_in_the_environment_only(tmp_path: Path) -> None:
    argvs = [rclone.mount_argv("/bin/rclone", config(), tmp_path / "m1", 1000, 1000),
             rclone.list_argv("/bin/rclone", config())]
    for argv in argvs:
        joined = "\0".join(argv)
        assert SECRET not in joined and KEY_ID not in joined
        assert "s3.example.test" not in joined  # an endpoint may carry a token in its path
        assert "LEAP0:models/release/" in argv
        assert argv[argv.index("--config") + 1] == "/dev/null"  # no config file is read
    env = rclone.environment(config())
    assert env["RCLONE_CONFIG_LEAP0_SECRET_ACCESS_KEY"] == SECRET
    assert env["RCLONE_CONFIG_LEAP0_ACCESS_KEY_ID"] == KEY_ID
    assert env["RCLONE_CONFIG_LEAP0_ENV_AUTH"] == "false"
    # Nothing inherited: AWS_* or proxy variables of the backend would change what rclone does.
    assert not [k for k in env if k.startswith(("AWS_", "HTTP", "http"))]
    assert set(env) >= {"PATH", "HOME"} and len(env) == 8


def test_anonymous_mounts_send_no_keys() -> None:
    env = rclone.environment(MountConfig(id="m1", bucket="b", mount_path="/b",
                                         endpoint="https://s3.example.test"))
    assert not [k for k in env if k.endswith(("ACCESS_KEY_ID", "SECRET_ACCESS_KEY"))]


def test_the_mount_is_read_only_lazy_and_the_sandbox_users(tmp_path: Path) -> None:
    argv = rclone.mount_argv("/bin/rclone", config(), tmp_path / "m1", 1234, 5678)
    assert argv[:2] == ["/bin/rclone", rclone.MOUNT_COMMAND]
    assert argv[4:6] == ["LEAP0:models/release/", str(tmp_path / "m1")]
    assert "--read-only" in argv and "--default-permissions" in argv
    assert argv[argv.index("--vfs-cache-mode") + 1] == "off"  # nothing kept, reads are GETs
    assert (argv[argv.index("--uid") + 1], argv[argv.index("--gid") + 1]) == ("1234", "5678")
    assert argv[argv.index("--umask") + 1] == "077"
    assert argv[-len(rclone.READ_FLAGS):] == list(rclone.READ_FLAGS)


def test_a_name_is_pinned_and_a_guarded_target_fenced(tmp_path: Path) -> None:
    hosts, nsswitch = tmp_path / "h", tmp_path / "n"
    argv = rclone.confinement(rclone.Target("s3.example.test", ("192.0.2.7",), True),
                              hosts, nsswitch)
    assert argv[:2] == ["setpriv", f"--regid={network.FENCED_GID}"]
    assert argv[argv.index("leap0-pin") + 1:] == [str(hosts), str(nsswitch)]
    assert hosts.read_text() == "192.0.2.7 s3.example.test\n"
    assert nsswitch.read_text() == "hosts: files\n"
    # An address needs no pin; an operator's exception is not fenced.
    assert rclone.confinement(rclone.Target(None, ("10.9.0.1",), False), hosts, nsswitch) == []


def test_leap0_rclone_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "rclone"
    monkeypatch.setenv(rclone.BINARY_ENV, str(fake))
    assert rclone.find_binary() is None  # not there: no mounts, rather than another rclone
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert rclone.find_binary() == str(fake)


def test_the_runner_runs_the_rclone_make_rclone_built() -> None:
    done = subprocess.run(["sh", str(rclone.BUILD_SCRIPT), "--where"], capture_output=True,
                          text=True, check=False)
    require(done.returncode == 0, "make rclone has not been run")
    built = done.stdout.split()[-1]
    if not os.environ.get(rclone.BINARY_ENV):
        assert built == rclone.BINARY
    version = subprocess.run([built, "version"], capture_output=True, text=True, check=True,
                             env={"PATH": rclone.HOST_PATH, "HOME": "/nonexistent"})
    pinned = (Path(rclone.BUILD_SCRIPT).parent / "rclone" / "go.mod").read_text()
    assert f"github.com/rclone/rclone {version.stdout.split()[1]}\n" in pinned
    # mount2 is hidden from rclone's help, but it is there, with the flags the runner passes.
    help_ = subprocess.run([built, rclone.MOUNT_COMMAND, "--help"], capture_output=True,
                           text=True, check=True, env={"PATH": rclone.HOST_PATH})
    for flag in rclone.READ_FLAGS[::2]:
        assert flag in help_.stdout, flag
