"""The admin endpoint: POST /admin/reload, behind its own keys (`admin_api_keys`; closed when none is
set). The reload itself (verify, swap, retire) is the process's `Reloader` (service/process/reload.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.process.reload import Reloader
from rmserve.service.transports.schemas import ModelRef


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(None, min_length=1, max_length=4096,
                               description="Bundle directory as the server sees it; omitted: the configured one.")


class ReloadResponse(BaseModel):
    model: ModelRef = Field(description="The bundle now serving.")
    bundle_path: str
    previous: ModelRef = Field(description="The bundle it replaced.")


async def admin_authorized(request: Request) -> None:
    reloader: Reloader = request.app.state.service.reloader
    if not reloader.admin_keys.enabled:
        raise ScoringError(ErrorKind.UNAUTHENTICATED, "the admin endpoint is closed: no admin key is configured "
                           "(admin_api_keys)", "authorization")
    reloader.admin_keys.check(request.headers.get("authorization"))


router = APIRouter(tags=["admin"], dependencies=[Depends(admin_authorized)])


@router.post("/admin/reload", response_model=ReloadResponse)
async def reload_bundle(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load a bundle, verify it (format, hashes, golden set) and swap it in between batches; a bundle that
    fails verification is refused (422) and the old one keeps serving."""
    reloader: Reloader = request.app.state.service.reloader
    old, new = await reloader.reload(Path(body.bundle) if body and body.bundle else None)
    return ReloadResponse(model=ModelRef.of(new.manifest), bundle_path=str(new.bundle.path),
                          previous=ModelRef.of(old.manifest))
