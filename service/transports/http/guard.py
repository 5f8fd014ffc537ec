"""The HTTP request guard: what is checked before a route sees a request.

A plain ASGI middleware that
- refuses a body larger than `max_request_bytes` with 413, from its Content-Length before reading any of
  it, or while it streams in (chunked) as soon as the count passes the limit;
- refuses a JSON body that is not strict UTF-8 JSON (NaN/Infinity, nesting past `max_json_depth`) with
  422, where the JSON parser would otherwise fail with an error of its own (a 500); the body is parsed
  here, once, and the parsed value travels to the route in the ASGI scope (body.PARSED_JSON);
- reads `X-Request-Timeout` into the request's deadline (`rmserve.service.core.limits.request_deadline`);
- with `protect_health_and_metrics`, asks for an API key on /healthz, /readyz and /metrics.
Every refusal has the service's error body, naming the field and the limit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.limits import invalid, request_deadline
from rmserve.service.transports.http.body import PARSED_JSON, TIMEOUT_HEADER, parse_json, parse_timeout

OPS_PATHS = ("/healthz", "/readyz", "/metrics")
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


class RequestGuard:
    def __init__(self, app: Any, state: Any, counted_paths: tuple[str, ...] = ()):
        """`app`: the ASGI app the requests go on to (None for a guard used only through `admit`)."""
        self.app = app
        self.state = state  # rmserve.service.process.runtime.ServiceState (not imported: the runtime imports the transports)
        self.counted_paths = counted_paths  # refusals on these count in rmserve_requests_total

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admitted = await self.admit(scope, receive, send)
        if admitted is None:
            return
        body, deadline = admitted
        token = request_deadline.set(deadline)
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            request_deadline.reset(token)

    async def admit(self, scope: dict, receive: Any, send: Any) -> tuple[bytes, float | None] | None:
        """Run the checks on one HTTP request: its body (a JSON one parsed, into scope[PARSED_JSON]) and its
        deadline; None when it was refused (the refusal is sent). The scoring front calls this directly
        for the requests it serves without FastAPI (service/transports/http/app.py)."""
        settings = self.state.settings
        path = scope.get("path", "")
        try:
            if path in OPS_PATHS and settings.protect_health_and_metrics:
                self.state.api_keys.check(header(scope, b"authorization"))
            timeout = header(scope, _TIMEOUT_HEADER)
            deadline = time.monotonic() + parse_timeout(timeout) if timeout is not None else None
            body = await self._read_body(scope, receive, settings.max_request_bytes)
            if body and is_json(scope):
                scope[PARSED_JSON] = parse_json(body, settings.max_json_depth)
        except _TooLarge as e:
            await self._refuse(scope, send, 413, e.error)
            return None
        except ScoringError as e:
            await self._refuse(scope, send, 401 if e.kind == ErrorKind.UNAUTHENTICATED else 422, e)
            return None
        return body, deadline

    async def _read_body(self, scope: dict, receive: Any, limit: int) -> bytes:
        """The whole body, refused once it passes `limit` bytes (declared or received)."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(int(declared), limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge(size, limit, streamed=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: dict, send: Any, status: int, error: ScoringError) -> None:
        if scope.get("path") in self.counted_paths:
            outcome = "invalid" if error.kind == ErrorKind.VALIDATION else error.kind.value
            self.state.metrics.requests.labels(scope["path"], "http", outcome).inc()
        body = json.dumps({"error": error.to_dict()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is never read
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int, streamed: bool = False):
        what = f"more than {limit} bytes arrived" if streamed else f"Content-Length {size}"
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
