"""The real app and scorer on a bundle, in process, behind an httpx client (no server, no sockets): for
tests that patch something inside the service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from rmserve.service.process.state import ServiceState
from rmserve.service.settings import Settings
from rmserve.service.transports.http.app import create_app


@contextlib.asynccontextmanager
async def app_client(bundle: Path) -> AsyncIterator[httpx.AsyncClient]:
    state = ServiceState(Settings(bundle=bundle, device="cpu"))
    await state.load()
    try:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://rmserve") as client:
            yield client
    finally:
        await state.close()
