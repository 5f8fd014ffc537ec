"""The HTTP transport: a thin FastAPI adapter over the scoring core.

Routes: POST /score, POST /compare, GET /healthz, /readyz, /metrics, /v1/model. Errors of the core map to
HTTP statuses by one table, `HTTP_STATUS`; every error body is {"error": {kind, message, field}}.
Scoring answers carry timing headers: X-Tokenize-Time-Ms, X-Queue-Time-Ms and X-Inference-Time-Ms
(measured for this request in the scoring core and the batcher) and X-Total-Time-Ms (the whole request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__
from service.errors import ErrorKind, ScoringError
from service.metrics import Metrics
from service.runtime import ServiceState
from service.schemas import (
    CompareRequest,
    CompareResponse,
    GroupSummary,
    ModelRef,
    ScoreRequest,
    ScoreResponse,
    validation_error,
)
from service.scoring import Row, Scorer, Scores

log = logging.getLogger("rmserve.http")
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


scoring_router = APIRouter(tags=["scoring"], dependencies=[Depends(authorized)])


@scoring_router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, scorer: ScorerDep, request: Request, response: Response) -> ScoreResponse:
    rows = [Row(prompt, text, field) for prompt, text, field in body.rows()]
    scores = await unless_client_leaves(request, scorer.score(rows))
    timing_headers(response, scores)
    summary = scorer.summarize(scores, body.values, body.grouped)
    return ScoreResponse(
        model=ModelRef.of(scorer.manifest),
        rewards=summary.raw.tolist(),
        normalized_rewards=summary.normalized.tolist(),
        truncated=scores.truncated,
        values=summary.values.tolist(),
        group=GroupSummary.of(summary.group),
    )


@scoring_router.post("/compare", response_model=CompareResponse)
async def compare(body: CompareRequest, scorer: ScorerDep, request: Request, response: Response) -> CompareResponse:
    rows = [Row(body.prompt, body.response_a, "response_a"), Row(body.prompt, body.response_b, "response_b")]
    scores = await unless_client_leaves(request, scorer.score(rows))
    timing_headers(response, scores)
    reward_a, reward_b = (float(x) for x in scores.raw)
    normalized = scorer.normalize(scores.raw)
    return CompareResponse(
        model=ModelRef.of(scorer.manifest), reward_a=reward_a, reward_b=reward_b,
        normalized_reward_a=float(normalized[0]), normalized_reward_b=float(normalized[1]),
        probability_a=scorer.probability_a(reward_a, reward_b),
    )


ops_router = APIRouter(tags=["operations"])


@ops_router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@ops_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ready = get_state(request).ready
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})


@ops_router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@ops_router.get("/v1/model", dependencies=[Depends(authorized)])
async def model_info(scorer: ScorerDep) -> dict[str, Any]:
    return {"provider": scorer.engine.provider, "bundle_path": str(scorer.bundle.path),
            "max_responses_per_request": scorer.settings.max_responses_per_request,
            "manifest": scorer.manifest.model_dump(mode="json")}


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    _count(request, "invalid")
    return error_response(validation_error(exc.errors(), strip_prefix="body"))


async def _client_gone_handler(request: Request, exc: ClientGone) -> Response:
    _count(request, "client_gone")
    return Response(status_code=499)  # nobody reads it; nginx's code for a closed client connection


async def _scoring_error_handler(request: Request, exc: ScoringError) -> JSONResponse:
    _count(request, exc.kind.value)
    return error_response(exc)


def _count(request: Request, outcome: str) -> None:
    metrics = get_state(request).metrics
    metrics.requests.labels(request.url.path, "http", outcome).inc()


SCORING_PATHS = ("/score", "/compare", "/get_reward")
_SHED_BODY = json.dumps({"error": ScoringError(
    ErrorKind.OVERLOADED, "queue full: retry after the Retry-After delay").to_dict()}).encode()
_SHED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_SHED_BODY)).encode()),
                 (b"retry-after", b"1")]


class ObserveAndShed:
    """Plain ASGI middleware for the scoring routes: times each request (metrics and the
    X-Total-Time-Ms header) and, when the queue is already full, answers 429 before the body is
    parsed, so that an overloaded service spends almost nothing on the requests it refuses.
    (Starlette's BaseHTTPMiddleware would add a task group and a thread of copies to every request.)"""

    def __init__(self, app: Any, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in SCORING_PATHS:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        metrics = self.state.metrics
        scorer = self.state.scorer
        if scorer is not None and scorer.batcher.is_full() and self._authorized(scope):
            metrics.requests.labels(path, "http", ErrorKind.OVERLOADED.value).inc()
            scorer.batcher.observer.rejected(1)
            # Pre-rendered: a flood of refusals must cost the event loop as little as possible.
            await send({"type": "http.response.start", "status": 429, "headers": _SHED_HEADERS})
            await send({"type": "http.response.body", "body": _SHED_BODY})
            return
        status = 500

        async def send_timed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - began) * 1000
                message.setdefault("headers", []).append((b"x-total-time-ms", f"{elapsed_ms:.2f}".encode()))
            await send(message)

        in_flight = metrics.in_flight.labels("http")
        in_flight.inc()
        try:
            await self.app(scope, receive, send_timed)
        except Exception:  # not a ScoringError (those have handlers): Starlette answers 500
            metrics.requests.labels(path, "http", ErrorKind.INTERNAL.value).inc()
            raise
        finally:
            in_flight.dec()
            metrics.request_duration.labels(path, "http").observe(time.perf_counter() - began)
        if status < 400:
            metrics.requests.labels(path, "http", "ok").inc()

    def _authorized(self, scope: dict) -> bool:
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        try:
            self.state.api_keys.check(header)
        except ScoringError:
            return False  # the route answers 401
        return True


def create_app(state: ServiceState) -> FastAPI:
    """The ASGI app over a shared `ServiceState`; the runtime loads the bundle into it."""
    app = FastAPI(title="rmserve", version=__version__,
                  description="Reward-model scoring for RLHF: /score and /compare.")
    app.state.service = state
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ScoringError, _scoring_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _client_gone_handler)  # type: ignore[arg-type]

    from service import openapi
    from service.guard import RequestGuard
    from service.reload import router as admin_router

    openapi.install(app)  # documents the error answers this app really gives
    app.add_middleware(RequestGuard, state=state, counted_paths=SCORING_PATHS)  # inside ObserveAndShed
    app.add_middleware(ObserveAndShed, state=state)

    app.include_router(scoring_router)
    app.include_router(ops_router)
    from service.openrlhf import router as openrlhf_router  # here: service.openrlhf imports this module

    app.include_router(openrlhf_router)
    app.include_router(admin_router)
    return app
