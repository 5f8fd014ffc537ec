"""The HTTP transport's application: FastAPI over the scoring core, with its routers and error handlers, and
in front of it all the scoring front, which every HTTP request passes first.

Routers: the core routes (POST /score, /compare; GET /healthz, /readyz, /metrics, /v1/model: routes.py),
OpenRLHF's /get_reward (openrlhf.py), vLLM's pooling API (vllm.py) and the admin endpoint (admin.py). Errors
of the core map to HTTP statuses by one table, `common.HTTP_STATUS`; every error body is
{"error": {kind, message, field}} (vLLM's routes answer in vLLM's shape; a path no route serves, 404, and a
method its route does not take, 405, keep Starlette's {"detail": ...}). An unexpected exception is answered
500 without its text, which goes to the log under the reference the answer gives (errors.internal_error).
Scoring answers carry timing headers: X-Tokenize-Time-Ms, X-Queue-Time-Ms and X-Inference-Time-Ms
(measured for this request in the scoring core and the batcher) and X-Total-Time-Ms (the whole request).

The scoring front (`ScoringFront`, the ASGI app uvicorn runs) puts every request through the request guard
(guard.py: the key from the head before any of the body is read, then the body); for the scoring routes it
also times and counts each request, sheds load before the body is read when the queue (or the client's
share of it) is full, and serves a JSON POST to /score or /compare itself: the body model and the route's
own function, with the same answers and errors as through FastAPI but without its per-request machinery
(middleware layers, routing, dependency solving), which cost more event-loop time than the rest of a
request (docs/performance-notes.md). Every other request goes on to FastAPI with the body already read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import Route

from rmserve import __version__
from rmserve.service.core.errors import ErrorKind, ScoringError, internal_error
from rmserve.service.core.limits import request_client, request_deadline
from rmserve.service.process.state import ServiceState
from rmserve.service.transports.http import admin, openapi, openrlhf, routes, vllm
from rmserve.service.transports.http.body import PARSED_JSON
from rmserve.service.transports.http.common import ClientGone, Endpoint, error_response, get_state
from rmserve.service.transports.http.guard import ADMIN_PATHS, Admitted, RequestGuard, is_json, replay
from rmserve.service.transports.http.vllm_protocol import VLLM_PATHS
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


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # Starlette calls this from its outermost middleware and then raises `exc` again, for the server to
    # see; the scoring front takes it there (`_forward`).
    return error_response(internal_error(log, f"{request.method} {request.url.path} failed"))


def _count(request: Request, outcome: str) -> None:
    metrics = get_state(request).metrics
    metrics.requests.labels(request.url.path, "http", outcome).inc()


SCORING_PATHS = ("/score", "/compare", "/get_reward")

# The routes the scoring front serves itself: path -> (body model, the route's function).
FRONT_ROUTES: dict[str, tuple[type[BaseModel], Endpoint]] = {
    "/score": (ScoreRequest, routes.score), "/compare": (CompareRequest, routes.compare)}


class ScoringFront:
    """The outermost ASGI app: every HTTP request passes the request guard here; for the scoring routes it
    times each request (metrics and the X-Total-Time-Ms header), answers 429 before the body is read when
    the queue (or the client's share of it) is already full (an overloaded service spends almost nothing on
    the requests it refuses), and serves JSON POSTs to `FRONT_ROUTES` itself; everything else goes on to
    `app` (FastAPI)."""

    def __init__(self, app: Any, state: ServiceState, front_routes: dict | None = None,
                 methods: dict[str, set[str]] | None = None):
        """`methods`: each route's methods (a request with another method is answered 405 by `app`)."""
        self.app = app
        self.state = state
        self.front_routes = FRONT_ROUTES if front_routes is None else front_routes
        # Refusals are counted where the routes count their answers: the scoring routes, vLLM's and the admin one.
        self.guard = RequestGuard(state, counted_paths=SCORING_PATHS + tuple(VLLM_PATHS) + ADMIN_PATHS,
                                  methods=methods)
        self._children: dict[tuple, Any] = {}  # metric children by label values: labels() costs per call

    def _metric(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._handle(scope, receive, send)
        except asyncio.CancelledError:
            # What is still under way when the shutdown grace period ends is cancelled by uvicorn, which
            # would answer a plain-text 500; the documented answer is 503, which clients retry elsewhere.
            # (Caught here rather than by watching every answer's messages: that cost each request a wrapper.)
            if not self.state.draining:
                raise
            try:
                await error_response(ScoringError(ErrorKind.UNAVAILABLE, "the service shut down before this "
                                                  "request was answered; retry on another replica"))(scope, receive, send)
            except RuntimeError:  # its answer had begun, and uvicorn refuses a second start
                raise asyncio.CancelledError from None
            if scope.get("path") in self.guard.counted_paths:
                self._metric(self.state.metrics.requests, scope["path"], "http", ErrorKind.UNAVAILABLE.value).inc()

    async def _handle(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if path not in SCORING_PATHS:
            admitted = await self.guard.admit(scope, receive, send)
            if admitted is not None:
                try:
                    await self._forward(admitted, scope, receive, send)
                except _Failed:
                    pass  # answered 500 and logged
            return
        began = time.perf_counter()
        metrics = self.state.metrics
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
            admitted = await self.guard.admit(scope, receive, send_timed, shed=self._shed)
            if admitted is None:
                return
            route = self.front_routes.get(path) if scope.get("method") == "POST" and is_json(scope) else None
            if route is None or PARSED_JSON not in scope:  # FastAPI's own answers (e.g. for an empty body)
                await self._forward(admitted, scope, receive, send_timed)
            else:
                await self._serve(route, admitted, scope, receive, send_timed)
        except _Failed:
            self._metric(metrics.requests, path, "http", ErrorKind.INTERNAL.value).inc()
        finally:
            in_flight.dec()
            self._metric(metrics.request_duration, path, "http").observe(time.perf_counter() - began)
        if status < 400:
            self._metric(metrics.requests, path, "http", "ok").inc()

    def _shed(self, client: str) -> ScoringError | None:
        """The refusal of a request that the queue has no room for, known before its body is read."""
        scorer = self.state.scorer
        if scorer is None or not scorer.batcher.is_full(client):
            return None
        scorer.batcher.observer.rejected(1)
        return ScoringError(ErrorKind.OVERLOADED, "queue full: retry after the Retry-After delay")

    async def _forward(self, admitted: Admitted, scope: dict, receive: Any, send: Any) -> None:
        """The request on to FastAPI, its body already read; an exception it raises after answering (Starlette
        raises it again once `_unexpected_handler` answered) ends here, logged there."""
        deadline, client = request_deadline.set(admitted.deadline), request_client.set(admitted.client)
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay(admitted.body, receive), watched)
        except Exception:
            if not started:
                await error_response(internal_error(log, f"{scope.get('method')} {scope.get('path')} failed"))(
                    scope, receive, watched)
            raise _Failed from None
        finally:
            request_deadline.reset(deadline)
            request_client.reset(client)

    async def _serve(self, route: tuple[type[BaseModel], Endpoint], admitted: Admitted, scope: dict, receive: Any,
                     send: Any) -> None:
        """One scoring request without FastAPI: the route's function with the body model validated from the
        JSON the guard parsed; errors answered as the app's handlers do."""
        model, endpoint = route
        outcome = None
        deadline, client = request_deadline.set(admitted.deadline), request_client.set(admitted.client)
        try:
            request = Request(scope, replay(b"", receive))
            try:
                parsed = model.model_validate(scope[PARSED_JSON])
                response = await endpoint(parsed, self.state.require_scorer(), request)
            except ValidationError as e:
                outcome, response = "invalid", error_response(validation_error(e.errors()))
            except ScoringError as e:
                outcome, response = e.kind.value, error_response(e)
            except ClientGone:
                outcome, response = "client_gone", Response(status_code=499)
            except Exception:
                response = error_response(internal_error(log, f"POST {scope['path']} failed"))
                await response(scope, receive, send)
                raise _Failed from None
            await response(scope, receive, send)
        finally:
            request_deadline.reset(deadline)
            request_client.reset(client)
        if outcome is not None:
            self._metric(self.state.metrics.requests, scope["path"], "http", outcome).inc()


class _Failed(Exception):
    """A request failed unexpectedly; its 500 is answered and its exception logged."""


def create_app(state: ServiceState) -> ScoringFront:
    """The ASGI app over a shared `ServiceState` (the FastAPI app behind the scoring front, as its `app`);
    the runtime loads the bundle into it."""
    app = FastAPI(title="rmserve", version=__version__,
                  description="Reward-model scoring for RLHF: /score and /compare.")
    app.state.service = state
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ScoringError, _scoring_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _client_gone_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_handler)
    openapi.install(app)  # documents the error answers this app really gives
    # vLLM's pooling API is vllm.router: /classify, /pooling, /v1/models.
    routers = (routes.scoring_router, routes.ops_router, openrlhf.router, vllm.router, admin.router)
    for router in routers:
        app.include_router(router)
    methods: dict[str, set[str]] = {}
    for route in [*app.routes, *(route for router in routers for route in router.routes)]:
        if isinstance(route, (Route, APIRoute)) and route.methods:
            methods.setdefault(route.path, set()).update(route.methods)
    return ScoringFront(app, state, methods=methods)
