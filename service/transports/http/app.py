"""The HTTP transport's application: FastAPI over the scoring core, with its routers, its error handlers,
the request guard, and in front of it all the scoring front.

Routers: the core routes (POST /score, /compare; GET /healthz, /readyz, /metrics, /v1/model: routes.py),
OpenRLHF's /get_reward (openrlhf.py) and the admin endpoint (admin.py). Errors of the core map to HTTP
statuses by one table, `common.HTTP_STATUS`; every error body is {"error": {kind, message, field}}.
Scoring answers carry timing headers: X-Tokenize-Time-Ms, X-Queue-Time-Ms and X-Inference-Time-Ms
(measured for this request in the scoring core and the batcher) and X-Total-Time-Ms (the whole request).

The scoring front (`ScoringFront`, the ASGI app uvicorn runs) times and counts every scoring request, sheds
load when the queue is full, and serves a JSON POST to /score or /compare itself: the request guard's
checks, the API key, the body model and the route's own function, with the same answers and errors as
through FastAPI but without its per-request machinery (middleware layers, routing, dependency solving),
which cost more event-loop time than the rest of a request (docs/performance-notes.md). Every other
request, and a scoring request without a JSON body, goes on to FastAPI.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from rmserve import __version__
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.limits import request_deadline
from rmserve.service.process.state import ServiceState
from rmserve.service.transports.http import admin, openapi, openrlhf, routes, vllm
from rmserve.service.transports.http.body import PARSED_JSON
from rmserve.service.transports.http.common import ClientGone, Endpoint, error_response, get_state
from rmserve.service.transports.http.guard import RequestGuard, header, is_json, replay
from rmserve.service.transports.schemas import CompareRequest, ScoreRequest, validation_error

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


# The routes the scoring front serves itself: path -> (body model, the route's function).
FRONT_ROUTES: dict[str, tuple[type[BaseModel], Endpoint]] = {
    "/score": (ScoreRequest, routes.score), "/compare": (CompareRequest, routes.compare)}


class ScoringFront:
    """The outermost ASGI app: for the scoring routes, times each request (metrics and the X-Total-Time-Ms
    header), answers 429 before the body is read when the queue is already full (an overloaded service
    spends almost nothing on the requests it refuses), and serves JSON POSTs to `FRONT_ROUTES` itself;
    everything else goes on to `app` (FastAPI)."""

    def __init__(self, app: Any, state: ServiceState, front_routes: dict | None = None):
        self.app = app
        self.state = state
        self.front_routes = FRONT_ROUTES if front_routes is None else front_routes
        self.guard = RequestGuard(None, state, counted_paths=SCORING_PATHS)
        self._children: dict[tuple, Any] = {}  # metric children by label values: labels() costs per call

    def _metric(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in SCORING_PATHS:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        metrics = self.state.metrics
        scorer = self.state.scorer
        if scorer is not None and scorer.batcher.is_full() and self._authorized(scope):
            self._metric(metrics.requests, path, "http", ErrorKind.OVERLOADED.value).inc()
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

        in_flight = self._metric(metrics.in_flight, "http")
        in_flight.inc()
        try:
            route = self.front_routes.get(path) if scope.get("method") == "POST" and is_json(scope) else None
            if route is None:
                await self.app(scope, receive, send_timed)
            else:
                await self._serve(route, scope, receive, send_timed)
        except Exception:  # not a ScoringError (those have handlers): Starlette answers 500
            self._metric(metrics.requests, path, "http", ErrorKind.INTERNAL.value).inc()
            raise
        finally:
            in_flight.dec()
            self._metric(metrics.request_duration, path, "http").observe(time.perf_counter() - began)
        if status < 400:
            self._metric(metrics.requests, path, "http", "ok").inc()

    async def _serve(self, route: tuple[type[BaseModel], Endpoint], scope: dict, receive: Any, send: Any) -> None:
        """One scoring request without FastAPI: the guard's checks, then the route's function with the
        body model validated from the JSON the guard parsed; errors answered as the app's handlers do."""
        admitted = await self.guard.admit(scope, receive, send)
        if admitted is None:
            return
        body, deadline = admitted
        model, endpoint = route
        outcome = None
        token = request_deadline.set(deadline)
        try:
            request = Request(scope, replay(b"", receive))
            if PARSED_JSON not in scope:  # an empty body: FastAPI's own answer for it
                await self.app(scope, replay(body, receive), send)
                return
            try:
                self.state.api_keys.check(header(scope, b"authorization"))
                parsed = model.model_validate(scope[PARSED_JSON])
                response = await endpoint(parsed, self.state.require_scorer(), request)
            except ValidationError as e:
                outcome, response = "invalid", error_response(validation_error(e.errors()))
            except ScoringError as e:
                outcome, response = e.kind.value, error_response(e)
            except ClientGone:
                outcome, response = "client_gone", Response(status_code=499)
            await response(scope, receive, send)
        finally:
            request_deadline.reset(token)
        if outcome is not None:
            self._metric(self.state.metrics.requests, scope["path"], "http", outcome).inc()

    def _authorized(self, scope: dict) -> bool:
        try:
            self.state.api_keys.check(header(scope, b"authorization"))
        except ScoringError:
            return False  # the route answers 401
        return True


def create_app(state: ServiceState) -> ScoringFront:
    """The ASGI app over a shared `ServiceState` (the FastAPI app behind the scoring front, as its `app`);
    the runtime loads the bundle into it."""
    app = FastAPI(title="rmserve", version=__version__,
                  description="Reward-model scoring for RLHF: /score and /compare.")
    app.state.service = state
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ScoringError, _scoring_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _client_gone_handler)  # type: ignore[arg-type]
    openapi.install(app)  # documents the error answers this app really gives
    app.add_middleware(RequestGuard, state=state, counted_paths=SCORING_PATHS)
    app.include_router(routes.scoring_router)
    app.include_router(routes.ops_router)
    app.include_router(openrlhf.router)
    app.include_router(vllm.router)  # vLLM's pooling API: /classify, /pooling, /v1/models
    app.include_router(admin.router)
    return ScoringFront(app, state)
