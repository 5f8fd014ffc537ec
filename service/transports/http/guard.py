"""The HTTP request guard: what is checked before a route sees a request, in the order that makes a refusal
cheapest.

From the head alone, before any of the body is read:
- a connection past `max_connections` gets 429 and is closed (connections.py marks it);
- the **key**: every route asks for an API key (when keys are set) except the open ones (`OPEN_PATHS`:
  health, readiness and metrics unless `protect_health_and_metrics`, and the API's own documents);
  /admin/reload asks for an admin key. A route not listed is keyed, so a new route is never open by
  mistake. vLLM's routes refuse in vLLM's error shape;
- `X-Request-Timeout` becomes the request's deadline, cut to `max_request_timeout_seconds`;
- a body declared larger than `max_request_bytes` gets 413;
- a body to a POST route that is not plain JSON gets 415 naming the header: every route reads JSON, and
  none decompresses (without this, a form-encoded body, curl -d's default, was refused as "Input should be
  a valid dictionary" naming nothing, and a gzip body as invalid UTF-8).
Then the body, refused with 413 as soon as it passes the limit while streaming in; a JSON body is checked
(body.py: strict UTF-8 JSON, nesting, how many arrays and objects) and parsed once, on the event loop when
small and in a worker thread when large, into the scope (`PARSED_JSON`) for the route.

A refusal sent before the body is read leaves the connection open when the rest of the body is worth
reading and throwing away (connections.py does, up to `discard_limit`), so that the client can finish
sending and read its answer; past that, or when the client waits for `100 Continue`, it closes the
connection. Every refusal has the service's error body, naming the field and the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.limits import invalid
from rmserve.service.transports.http.body import (
    INLINE_PARSE_BYTES,
    PARSED_JSON,
    TIMEOUT_HEADER,
    max_containers,
    parse_json,
    parse_timeout,
)
from rmserve.service.transports.http.common import HTTP_STATUS
from rmserve.service.transports.http.connections import OVER_CAPACITY, discard_limit
from rmserve.service.transports.http.vllm_protocol import VLLM_PATHS, VLLM_STATUS, VllmError

OPS_PATHS = ("/healthz", "/readyz", "/metrics")
DOCUMENT_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
ADMIN_PATHS = ("/admin/reload",)
_TIMEOUT_HEADER = TIMEOUT_HEADER.lower().encode()


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def is_json(scope: dict) -> bool:
    content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    return content_type == "application/json" or (content_type.startswith("application/") and
                                                  content_type.endswith("+json"))


def connection_client(scope: dict) -> str:
    """The client of a request without API keys: its connection (address and port)."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


class Admitted:
    """A request that passed the guard: its body (read whole), deadline and client (for per-client limits)."""

    __slots__ = ("body", "deadline", "client")

    def __init__(self, body: bytes, deadline: float | None, client: str):
        self.body, self.deadline, self.client = body, deadline, client


class RequestGuard:
    def __init__(self, state: Any, counted_paths: tuple[str, ...] = (), methods: dict[str, set[str]] | None = None):
        """`methods`: each route's methods; a request with another method goes on unchecked and unread, to be
        answered 405 (the routes and their methods are public, in /openapi.json)."""
        self.state = state  # rmserve.service.process.state.ServiceState (not imported: it would be a circle)
        self.counted_paths = counted_paths  # refusals on these count in rmserve_requests_total
        self.methods = methods or {}
        settings = state.settings
        self.open_paths = DOCUMENT_PATHS + (() if settings.protect_health_and_metrics else OPS_PATHS)
        self.containers = max_containers(settings.max_responses_per_request, settings.max_messages)
        self.discard = discard_limit(settings.max_request_bytes)

    def authenticate(self, scope: dict) -> str:
        """The client the request's key names ("" on an open route); UNAUTHENTICATED without a valid key."""
        path = scope.get("path", "")
        if path in self.open_paths:
            return ""
        if path in ADMIN_PATHS:
            admin_keys = self.state.reloader.admin_keys
            if not admin_keys.enabled:
                raise ScoringError(ErrorKind.UNAUTHENTICATED, "the admin endpoint is closed: no admin key is "
                                   "configured (admin_api_keys, admin_api_keys_file)", "authorization")
            return "admin-" + admin_keys.check(header(scope, b"authorization"))
        return self.state.api_keys.check(header(scope, b"authorization")) or connection_client(scope)

    async def admit(self, scope: dict, receive: Any, send: Any,
                    shed: Callable[[str], ScoringError | None] | None = None) -> Admitted | None:
        """Run the checks on one HTTP request; None when it was refused (the refusal is sent). A JSON body
        is parsed into scope[PARSED_JSON]. `shed(client)`: a refusal to send before the body is read (the
        queue is full), or None."""
        settings = self.state.settings
        allowed = self.methods.get(scope.get("path", ""))
        if allowed is not None and scope.get("method") not in allowed and not scope.get(OVER_CAPACITY):
            if scope.get("path", "") in self.counted_paths:
                self.state.metrics.requests.labels(scope["path"], "http", "invalid").inc()
            return Admitted(b"", None, "")  # 405, from the head
        try:
            if scope.get(OVER_CAPACITY):
                raise ScoringError(ErrorKind.OVERLOADED, f"too many open connections (max_connections = "
                                   f"{settings.max_connections}); retry after the Retry-After delay")
            client = self.authenticate(scope)
            if shed is not None and (overloaded := shed(client)) is not None:
                raise overloaded
            if scope.get("method") == "POST" and allowed is not None and _has_body(scope):
                _check_media_type(scope)
            timeout = header(scope, _TIMEOUT_HEADER)
            deadline = None
            if timeout is not None:
                deadline = time.monotonic() + parse_timeout(timeout, settings.max_request_timeout_seconds)
            body = await self._read_body(scope, receive, settings.max_request_bytes)
            if body and is_json(scope):
                if len(body) <= INLINE_PARSE_BYTES:
                    scope[PARSED_JSON] = parse_json(body, settings.max_json_depth, self.containers)
                else:  # a large body is checked and parsed beside the event loop, not on it
                    scope[PARSED_JSON] = await asyncio.to_thread(parse_json, body, settings.max_json_depth,
                                                                 self.containers)
        except _TooLarge as e:
            await self.refuse(scope, send, 413, e.error, read=e.read)
            return None
        except _NotJson as e:
            await self.refuse(scope, send, 415, e.error, read=False)
            return None
        except ScoringError as e:
            await self.refuse(scope, send, None, e, read=False)
            return None
        return Admitted(body, deadline, client)

    async def _read_body(self, scope: dict, receive: Any, limit: int) -> bytes:
        """The whole body, refused once it passes `limit` bytes (declared or received)."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(int(declared), limit, read=False)
        if declared == "0" or (declared is None and header(scope, b"transfer-encoding") is None):
            return b""  # no body: nothing to wait for
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge(size, limit, read=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _close_after(self, scope: dict, read: bool) -> bool:
        """Whether the connection must close after a refusal: when the client waits for `100 Continue`
        before sending the body it announced, or the rest of the body is more than is worth throwing away."""
        if read:
            return False  # connections.py reads and drops what is left, up to its limit
        declared = header(scope, b"content-length")
        if declared is None and header(scope, b"transfer-encoding") is None:
            return False
        expects = (header(scope, b"expect") or "").lower() == "100-continue"
        return expects or declared is None or not declared.isdigit() or int(declared) > self.discard

    async def refuse(self, scope: dict, send: Any, status: int | None, error: ScoringError, read: bool) -> None:
        path = scope.get("path", "")
        outcome = "invalid" if error.kind == ErrorKind.VALIDATION else error.kind.value
        if path in self.counted_paths:
            self.state.metrics.requests.labels(path, "http", outcome).inc()
        if path in VLLM_PATHS and status is None and error.kind != ErrorKind.VALIDATION:
            # vLLM's shape and statuses; a body that is not strict JSON is refused in rmserve's (openapi.py)
            status, kind = VLLM_STATUS[error.kind]
            body = JSONResponse(VllmError(status, kind, error.message, error.field).body()).body
        else:
            status = status or HTTP_STATUS[error.kind]
            body = JSONResponse({"error": error.to_dict()}).body  # written as every other answer is
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if error.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE):
            headers.append((b"retry-after", b"1"))
        if scope.get(OVER_CAPACITY) or self._close_after(scope, read):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _has_body(scope: dict) -> bool:
    declared = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or (declared is not None and declared.strip() != "0")


def _check_media_type(scope: dict) -> None:
    """A body every route can read: JSON (application/json or +json), not compressed."""
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise _NotJson(invalid(f"request bodies are not decompressed: send the body without Content-Encoding, "
                               f"not {encoding[:40]!r}", "content-encoding"))
    if not is_json(scope):
        given = header(scope, b"content-type")
        what = "no Content-Type" if given is None else f"not {given[:80]!r}"
        raise _NotJson(invalid(f"the body must be JSON, sent with Content-Type: application/json ({what})",
                               "content-type"))


class _NotJson(Exception):
    def __init__(self, error: ScoringError):
        self.error = error


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int, read: bool):
        what = f"more than {limit} bytes arrived" if read else f"Content-Length {size}"
        self.read = read
        self.error = invalid(f"request body too large: {what}; the limit is {limit} bytes (max_request_bytes)",
                             "body")


def replay(body: bytes, receive: Any) -> Any:
    """A receive() that hands the already-read body to the app once, then waits on the client again
    (so that a disconnect is still seen by the route)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
