"""Object-storage mounts of a running sandbox, by its id: ``Runner.mounts``.

Each call finds the sandbox's record, takes its lifecycle lock (a mount changes what the
sandbox sees, as a start or a stop does) and hands ``mounts.py`` the sandbox's side of it:
the init whose mount namespace the mount joins, the staging directory it propagates
through, the host uid rclone runs as.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from pulumi_leap0.runner import layer, mounts
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.state import Records, SandboxState
from pulumi_leap0.runner.types import MountConfig


class SandboxMounts:
    def __init__(self, records: Records, egress: EgressSettings,
                 id_lock: Callable[[str], threading.Lock]) -> None:
        self._records = records
        self._egress = egress
        self._id_lock = id_lock

    def handle(self, box: SandboxState) -> mounts.SandboxHandle:
        return mounts.SandboxHandle(
            sandbox_id=box.id, init_pid=box.init_pid,
            state_dir=self._records.state_dir(box.id),
            staging_host=self._records.runtime(box.id) / "mnt",
            staging_sandbox=layer.STAGING_SANDBOX, uid=box.host_uid, gid=box.host_gid,
            egress=self._egress,
        )

    def attach(self, sandbox_id: str, mount: MountConfig) -> None:
        box = self._records.running(sandbox_id)
        with self._id_lock(box.id):
            mounts.attach(self.handle(box), mount)

    def detach(self, sandbox_id: str, mount_id: str) -> None:
        box = self._records.running(sandbox_id)
        with self._id_lock(box.id):
            mounts.detach(self.handle(box), mount_id)

    def reconcile(self, sandbox_id: str, configs: Sequence[MountConfig]) -> list[str]:
        """After a restart, serve exactly ``configs``: mounts not among them, or whose rclone
        died meanwhile, are detached, and the missing ones attached again. Returns the ids
        attached again."""
        box = self._records.running(sandbox_id)
        with self._id_lock(box.id):
            handle = self.handle(box)
            missing = mounts.reconcile(handle, [config.id for config in configs])
            for config in configs:
                if config.id in missing:
                    mounts.attach(handle, config)
            return missing
