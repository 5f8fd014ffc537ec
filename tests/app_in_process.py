"""The real app and scorer on a bundle, in process, behind an httpx client (no server, no sockets): for
tests that patch something inside the service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from rmserve.service.process.state import ServiceState
from rmserve.service.settings import Settings
from rmserve.service.transports.http.app import create_app


@contextlib.asynccontextmanager
async def app_in_process(bundle: Path) -> AsyncIterator[tuple[ServiceState, Any]]:
    """The service's state, loaded, and its ASGI app."""
    state = ServiceState(Settings(bundle=bundle, device="cpu"))
    await state.load()
    try:
        yield state, create_app(state)
    finally:
        await state.close()


@contextlib.asynccontextmanager
async def app_client(bundle: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_in_process(bundle) as (_, app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rmserve") as client:
            yield client
