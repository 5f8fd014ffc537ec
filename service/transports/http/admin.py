"""The admin endpoint: POST /admin/reload, behind its own keys (`admin_api_keys`, `admin_api_keys_file`;
closed when none is set), checked by the request guard before the body is read. The reload itself (confine
the path to `bundle_root`, verify, swap, retire) is the process's `Reloader` (service/process/reload.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.process.reload import Reloader
from rmserve.service.transports.http.common import ParsedBodyRoute
from rmserve.service.transports.schemas import ModelRef


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(None, min_length=1, max_length=4096,
                               description="Bundle directory inside the server's bundle_root (relative to it, or "
                               "absolute); omitted: the configured bundle.")


class ReloadResponse(BaseModel):
    model: ModelRef = Field(description="The bundle now serving.")
    previous: ModelRef = Field(description="The bundle it replaced.")


router = APIRouter(tags=["admin"], route_class=ParsedBodyRoute)


@router.post("/admin/reload", response_model=ReloadResponse)
async def reload_bundle(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load a bundle, verify it (format, hashes, golden set) and swap it in between batches; a bundle that
    fails verification, or lies outside bundle_root, is refused (422) and the old one keeps serving."""
    state = request.app.state.service
    reloader: Reloader = state.reloader
    old, new = await reloader.reload(body.bundle if body and body.bundle else None)
    state.metrics.requests.labels("/admin/reload", "http", "ok").inc()  # refusals: the guard and the error handler
    return ReloadResponse(model=ModelRef.of(new.manifest), previous=ModelRef.of(old.manifest))
