"""API keys: ``Authorization: Bearer KEY`` or ``leap0-authorization: KEY``.

Keys are stored as sha256 hashes only. A key's organization is cached after the first
lookup: keys are never revoked while the server runs, and the lookup is on every request.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from pulumi_leap0.backend.errors import ApiError
from pulumi_leap0.backend.store import Store, hash_key

UNAUTHORIZED = "invalid or missing API key"


def presented_key(request: HTTPConnection) -> str | None:
    headers = request.headers
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    value = headers.get("leap0-authorization")
    if value:
        value = value.strip()
        # The SDK sends "Bearer KEY" in whichever header it is told to use.
        if value.lower().startswith("bearer "):
            value = value[7:].strip()
        return value or None
    return None


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._orgs: dict[str, str] = {}

    def org_of(self, request: HTTPConnection) -> str:
        """The organization of the request's key, or a 401."""
        key = presented_key(request)
        if key is None:
            raise ApiError(401, UNAUTHORIZED)
        digest = hash_key(key)
        org = self._orgs.get(digest)
        if org is None:
            org = self._store.org_for_key_hash(digest)
            if org is None:
                raise ApiError(401, UNAUTHORIZED)
            self._orgs[digest] = org
        return org
