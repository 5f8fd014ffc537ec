"""The HTTP transport's application: FastAPI over the scoring core, with its routers, its error handlers
and two plain ASGI middlewares.

Routers: the core routes (POST /score, /compare; GET /healthz, /readyz, /metrics, /v1/model: routes.py),
OpenRLHF's /get_reward (openrlhf.py) and the admin endpoint (admin.py). Errors of the core map to HTTP
statuses by one table, `common.HTTP_STATUS`; every error body is {"error": {kind, message, field}}.
Scoring answers carry timing headers: X-Tokenize-Time-Ms, X-Queue-Time-Ms and X-Inference-Time-Ms
(measured for this request in the scoring core and the batcher) and X-Total-Time-Ms (the whole request).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from rmserve import __version__
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.process.state import ServiceState
from rmserve.service.transports.http import admin, openapi, openrlhf, routes, vllm
from rmserve.service.transports.http.common import ClientGone, error_response, get_state
from rmserve.service.transports.http.guard import RequestGuard
from rmserve.service.transports.schemas import validation_error

log = logging.getLogger("rmserve.http")


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
    openapi.install(app)  # documents the error answers this app really gives
    app.add_middleware(RequestGuard, state=state, counted_paths=SCORING_PATHS)  # inside ObserveAndShed
    app.add_middleware(ObserveAndShed, state=state)
    app.include_router(routes.scoring_router)
    app.include_router(routes.ops_router)
    app.include_router(openrlhf.router)
    app.include_router(vllm.router)  # vLLM's pooling API: /classify, /pooling, /v1/models
    app.include_router(admin.router)
    return app
