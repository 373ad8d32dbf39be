"""The quota holds under concurrent creates: one sqlite write transaction per create."""

from __future__ import annotations

import asyncio

import httpx

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer

CONCURRENT_CREATES = 20


async def _create_all(base_url: str, key: str) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120.0) as client:
        return await asyncio.gather(
            *(
                client.post("/v1/sandbox/", json={"template_name": TEMPLATE})
                for _ in range(CONCURRENT_CREATES)
            )
        )


def test_twenty_concurrent_creates_make_exactly_three(
    backend: BackendServer, api_key: str
) -> None:
    answers = asyncio.run(_create_all(backend.base_url, api_key))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * spec.MAX_SANDBOXES_PER_ORG + [409] * (
        CONCURRENT_CREATES - spec.MAX_SANDBOXES_PER_ORG
    ), [a.text for a in answers if a.status_code not in (201, 409)]
    created = {a.json()["id"] for a in answers if a.status_code == 201}
    with http(backend, api_key) as raw:
        listing = raw.get("/v1/sandboxes").json()
        assert {i["id"] for i in listing["items"]} == created
        assert listing["total_items"] == spec.MAX_SANDBOXES_PER_ORG
        assert all(i["state"] == "running" for i in listing["items"])
        for sandbox_id in created:
            assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
