"""A sandbox's mounts: the form outputs hold them in, and making a sandbox's mounts match.

The engine marks an output secret only when the input of the same name held a secret (a
list with one secret item becoming secret as a whole), so mount credentials are not kept in
outputs at all: each mount holds ``credentials_sha256``, a fingerprint of its key pair,
which is enough for diff and update to see a change of credentials. The fingerprint sits in
the ``mounts`` output, which the engine marks secret whenever the input held credentials, so
even the hash is encrypted in state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client, Leap0Error
from pulumi_leap0.provider import normal_form

#: In each mount's outputs, in place of its credentials.
FINGERPRINT = "credentials_sha256"
CREDENTIALS = ("access_key_id", "secret_access_key")


def credentials_fingerprint(mount: Mapping[str, Any]) -> str | None:
    return normal_form.fingerprint(
        "leap0-mount-credentials", *(mount.get(name) for name in CREDENTIALS)
    )


def mount_state(mount: Mapping[str, Any]) -> dict[str, Any]:
    """One mount as outputs hold it: normalized, credentials replaced by their fingerprint.

    Accepts inputs (with credentials) and old outputs (with a fingerprint, or, if written
    by an older provider, with credentials). A mount that no longer validates, such as one
    added out of band and seen by refresh without its endpoint, is kept as it is.
    """
    fingerprint = credentials_fingerprint(mount) or mount.get(FINGERPRINT)
    try:
        fields = spec.validate(spec.MountRequest, {"type": spec.MOUNT_TYPE, **mount}).wire()
    except spec.SpecError:
        fields = {k: v for k, v in mount.items() if v is not None}
    state = {k: v for k, v in fields.items() if k not in (*CREDENTIALS, FINGERPRINT, "id")}
    if fingerprint:
        state[FINGERPRINT] = fingerprint
    if mount.get("id"):
        state["id"] = mount["id"]
    return state


def mount_states(mounts: Any) -> list[dict[str, Any]]:
    """Every mount's state, in the canonical order (by mount_path)."""
    states = [mount_state(m) for m in mounts or [] if isinstance(m, Mapping)]
    return sorted(states, key=lambda m: str(m.get("mount_path")))


def comparable(mounts: Any) -> list[dict[str, Any]]:
    """What diff compares: ids are the API's, not the program's."""
    return [{k: v for k, v in m.items() if k != "id"} for m in mount_states(mounts)]


def outputs(requested: list[spec.MountRequest], sandbox: spec.Sandbox) -> list[dict[str, Any]]:
    """The mounts a program asked for, with the ids the sandbox gave them."""
    ids = {m.mount_path: m.id for m in sandbox.mounts}
    return [{**mount_state(m.wire()), "id": ids.get(m.mount_path, "")} for m in requested]


def refreshed(old_mounts: Any, current: Iterable[spec.Mount]) -> list[dict[str, Any]]:
    """What the sandbox has now; the API never returns endpoints and credentials, so those
    are kept from the old outputs of the mount with the same id."""
    known = {m["id"]: m for m in mount_states(old_mounts) if m.get("id")}
    return mount_states({**known.get(m.id, {}), **m.wire()} for m in current)


def apply(
    client: Leap0Client,
    sandbox_id: str,
    old_mounts: Any,
    new_mounts: list[spec.MountRequest],
    *,
    adopting: bool = False,
) -> list[dict[str, Any]]:
    """Make the sandbox's mounts match: remove, then change in place (ids kept), then add.

    When adopting, nothing about the existing mounts' endpoints or credentials is known
    (the API never returns them), so every kept mount is sent its full wanted state.
    """
    old = {m["mount_path"]: m for m in mount_states(old_mounts)}
    new = {m.mount_path: m for m in new_mounts}
    for path in old.keys() - new.keys():
        _remove(client, sandbox_id, old[path])
    result = {
        path: {**mount_state(mount.wire()), "id": _put(client, sandbox_id, old.get(path, {}),
                                                      mount, adopting)}
        for path, mount in new.items()
    }
    return [result[path] for path in sorted(result)]


def _remove(client: Leap0Client, sandbox_id: str, mount: Mapping[str, Any]) -> None:
    if not mount.get("id"):
        return
    try:
        client.delete_mount(sandbox_id, mount["id"])
    except Leap0Error as exc:
        if not exc.not_found:
            raise


def _put(
    client: Leap0Client,
    sandbox_id: str,
    current: Mapping[str, Any],
    mount: spec.MountRequest,
    adopting: bool,
) -> str:
    """Change the mount at ``mount.mount_path`` in place, or add it; return its id."""
    if not current.get("id"):
        return client.add_mount(sandbox_id, mount).id
    changes = _changes(current, mount, adopting)
    if changes:
        client.update_mount(
            sandbox_id, current["id"], spec.validate(spec.MountUpdateRequest, changes)
        )
    return str(current["id"])


def _changes(
    current: Mapping[str, Any], mount: spec.MountRequest, adopting: bool
) -> dict[str, Any]:
    changes = {
        k: v
        for k, v in mount.wire().items()
        if k not in ("type", *CREDENTIALS) and (adopting or current.get(k) != v)
    }
    if adopting or current.get(FINGERPRINT) != credentials_fingerprint(mount.wire()):
        # The API clears a credential with "".
        changes.update({k: getattr(mount, k) or "" for k in CREDENTIALS})
    return changes
