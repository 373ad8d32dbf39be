"""The runner as it was before a host uid per sandbox, for tests of old state and the bench."""

from __future__ import annotations

from pulumi_leap0.runner import TemplateRegistry, identity
from tests.runner.conftest import TEMPLATE


class SharedUids(identity.UidPool):
    """Every sandbox of a template as one host uid, nothing claimed (before #12)."""

    def claim(self, owner: str, keep: int | None = None) -> identity.HostIdentity:
        template = TemplateRegistry().get(TEMPLATE)
        assert template is not None
        return identity.legacy_identity(template)

    def release(self, owner: str) -> None:
        pass
