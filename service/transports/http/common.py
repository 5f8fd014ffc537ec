"""What every HTTP route shares: the error table (`HTTP_STATUS`, one status per core error kind) and
error body, the FastAPI dependencies (state, scorer, metrics), the route class that reads the
JSON body the request guard already parsed, the answer serialized once, the departed-client watch that
drops a request's rows before inference, and the per-request timing headers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.metrics import Metrics
from rmserve.service.core.scoring import Scorer, Scores
from rmserve.service.process.state import ServiceState
from rmserve.service.transports.http.body import PARSED_JSON

T = TypeVar("T")
# A scoring route's function as the scoring front calls it: (validated body, scorer, request) -> answer.
Endpoint = Callable[[Any, Scorer, Request], Coroutine[Any, Any, Response]]

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


ScorerDep = Annotated[Scorer, Depends(get_scorer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


class _ParsedBodyRequest(Request):
    """A request whose JSON body the guard already parsed: FastAPI validates that value instead of
    parsing the bytes a second time."""

    async def json(self) -> Any:
        if PARSED_JSON in self.scope:
            return self.scope[PARSED_JSON]
        return await super().json()


class ParsedBodyRoute(APIRoute):
    """FastAPI's route, handed `_ParsedBodyRequest`s (FastAPI's own way to customize a route's Request)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_body_handler(request: Request) -> Response:
            return await handler(_ParsedBodyRequest(request.scope, request.receive))

        return parsed_body_handler


def model_response(model: BaseModel, headers: dict[str, str] | None = None) -> Response:
    """`model` as a JSON answer, serialized once by pydantic (a route that returns a model instead has
    it validated and serialized again by FastAPI's response_model machinery)."""
    return Response(model.model_dump_json(), media_type="application/json", headers=headers)


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, but cancel it when the client disconnects, so that its queued rows are dropped
    before inference instead of costing the engine (uvicorn does not cancel a handler by itself). One
    watcher task per request; `work` runs in the request's own task."""
    handler = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        if handler is not None:
            handler.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:  # the watcher cancelled this task: the work was dropped with it
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


def timing_headers(response: Response, scores: Scores) -> None:
    response.headers.update(timings(scores))


def timings(scores: Scores) -> dict[str, str]:
    """The X-*-Time-Ms headers of one scoring answer."""
    return {"X-Tokenize-Time-Ms": f"{scores.tokenize_seconds * 1000:.2f}",
            "X-Queue-Time-Ms": f"{scores.queue_seconds * 1000:.2f}",
            "X-Inference-Time-Ms": f"{scores.inference_seconds * 1000:.2f}"}


