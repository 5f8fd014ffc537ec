"""What every HTTP route shares: the error table (`HTTP_STATUS`, one status per core error kind) and
error body, the FastAPI dependencies (state, scorer, metrics, API key), the departed-client watch that
drops a request's rows before inference, and the per-request timing headers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.metrics import Metrics
from rmserve.service.core.scoring import Scorer, Scores
from rmserve.service.process.state import ServiceState

T = TypeVar("T")

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.VALIDATION: 422,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.INTERNAL: 500,
}


def error_response(error: ScoringError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE) else None
    return JSONResponse(status_code=HTTP_STATUS[error.kind], content={"error": error.to_dict()}, headers=headers)


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, a
# thread hop per dependency per request that costs more than the work they do.
def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_scorer(request: Request) -> Scorer:
    return get_state(request).require_scorer()


async def get_metrics(request: Request) -> Metrics:
    return get_state(request).metrics


async def authorized(request: Request) -> None:
    get_state(request).api_keys.check(request.headers.get("authorization"))


ScorerDep = Annotated[Scorer, Depends(get_scorer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, but cancel it when the client disconnects, so that its queued rows are dropped
    before inference instead of costing the engine (uvicorn does not cancel a handler by itself)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


def timing_headers(response: Response, scores: Scores) -> None:
    response.headers["X-Tokenize-Time-Ms"] = f"{scores.tokenize_seconds * 1000:.2f}"
    response.headers["X-Queue-Time-Ms"] = f"{scores.queue_seconds * 1000:.2f}"
    response.headers["X-Inference-Time-Ms"] = f"{scores.inference_seconds * 1000:.2f}"


