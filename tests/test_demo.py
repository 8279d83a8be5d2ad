"""The built-in demo served by ./scripts/demo."""

from __future__ import annotations

import httpx

from tidings.demo import app

from .server._helpers import serve


async def test_demo_page_and_api() -> None:
    async with serve(app) as srv, httpx.AsyncClient() as client:
        page = await client.get(srv.url + "/")
        api = await client.get(srv.url + "/api/time")
        missing = await client.get(srv.url + "/nope")
    assert page.status_code == 200
    assert "Tidings is running" in page.text
    assert isinstance(api.json()["time"], float)
    assert missing.status_code == 404
