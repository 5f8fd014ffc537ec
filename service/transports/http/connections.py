"""The HTTP connection layer under the app: how long a client may take, how many connections there may be,
and how connections end when the process drains.

uvicorn's httptools protocol, with:
- a **header timeout** (`header_timeout_seconds`): a connection that sends nothing, or not the whole head of
  its request in time, is closed (408 when it had begun a request). uvicorn has none of its own: a
  connection that never sends a byte stays open;
- a **body timeout** (`body_timeout_seconds`): the body must be in within this of its head, or 408 and close,
  whether the app is reading it or has already answered (a refusal answered before the body, e.g. 401 or
  413, leaves the rest to be read and thrown away here, so that the client can finish sending and read its
  answer; at most `discard_limit` bytes, then the connection is closed);
- a **connection cap** (`max_connections`): a request on a connection past it is marked (`OVER_CAPACITY` in
  its scope) for the guard to answer 429 and close;
- **draining**: once the service drains, every answer says `Connection: close` and the connection closes
  after it, so no keep-alive connection is left that a client could send on as the port closes.
  `stop_accepting` then stops new connections without resetting the ones already queued by the kernel (on
  Linux a socket filter drops new connection attempts, which the client retries and which meet a closed
  port: refused, never reset), and `settled` says when every connection has had its answer.
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rmserve.service.core.errors import ErrorKind, ScoringError

log = logging.getLogger("rmserve.http")

OVER_CAPACITY = "rmserve.over_capacity"  # ASGI scope key: this connection is past max_connections


def discard_limit(max_request_bytes: int) -> int:
    """Bytes of a refused body read and thrown away so that the client gets its answer, at most."""
    return 4 * max_request_bytes


def _timeout_answer(what: str, seconds: float, setting: str) -> bytes:
    error = ScoringError(ErrorKind.TIMEOUT, f"{what} not received within {seconds:g} s ({setting})",
                         "body" if setting.startswith("body") else None)
    body = JSONResponse({"error": error.to_dict()}).body
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with timeouts, a connection cap, bounded discards and draining; the
    limits are class attributes, set by `protocol_class`."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 1024
    discard_bytes = 16 << 20
    draining: Callable[[], bool] = staticmethod(lambda: False)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: Any = None
        self._started = False  # a request has begun and is not answered yet
        self.answered = 0  # requests answered on this connection
        self._discarded = 0
        self._over_capacity = len(self.connections) > self.max_connections
        self._arm(self.header_timeout, "the request's headers", "header_timeout_seconds")

    def _arm(self, seconds: float, what: str, setting: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire, seconds, what, setting)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, seconds: float, what: str, setting: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        mid_answer = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if self._started and not mid_answer:  # a request had begun and nothing of its answer was sent: say why
            self.transport.write(_timeout_answer(what, seconds, setting))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._started and self.answered:  # a later request on a kept-alive connection: its own clock
            self._arm(self.header_timeout, "the request's headers", "header_timeout_seconds")
        self._started = True
        self._discarded = 0
        if self._over_capacity:
            self.scope[OVER_CAPACITY] = True  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout, "the request's body", "body_timeout_seconds")
        if self.draining() or self._over_capacity:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and self.cycle.response_complete:
            self._discarded += len(body)
            if self._discarded > self.discard_bytes:  # a refused body larger than is worth reading
                self.transport.close()
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        self._started = False
        self.answered += 1
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def settled(self) -> bool:
        """Nothing under way: no request begun and unanswered, and not a new connection still to send one."""
        return not self._started and (self.answered > 0 or self.transport.is_closing())

    def close_after_answer(self) -> None:
        """Draining: a request under way is answered with `Connection: close`."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False


def protocol_class(settings: Any, draining: Callable[[], bool]) -> type[GuardedProtocol]:
    """The protocol class uvicorn runs (`uvicorn.Config(http=...)`), with the service's limits."""
    return type("RmserveHttpProtocol", (GuardedProtocol,), {
        "header_timeout": settings.header_timeout_seconds, "body_timeout": settings.body_timeout_seconds,
        "max_connections": settings.max_connections, "discard_bytes": discard_limit(settings.max_request_bytes),
        "draining": staticmethod(draining)})


# --- the end of a drain --------------------------------------------------------------------------------

_SO_ATTACH_FILTER = 26
_DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)  # classic BPF: `ret #0`, keep no byte of any packet


def _drop_new_connections(sock: Any) -> None:
    """Linux: attach a socket filter that drops every packet reaching the listening socket, so that new
    connection attempts go unanswered (the client retries and then finds the port closed) while the
    connections the kernel already queued stay acceptable. The kernel copies the program."""
    program = ctypes.create_string_buffer(_DROP_EVERYTHING)
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(program)))


def stop_accepting(servers: list[Any]) -> list[Any]:
    """Stop new connections on `servers`' listening sockets (Linux only; elsewhere closing the port is
    left to the server). Returns the listening sockets whose queue is still to be emptied."""
    if not sys.platform.startswith("linux"):
        return []
    listeners = []
    for server in servers:
        for sock in server.sockets or ():
            try:
                _drop_new_connections(sock)
            except OSError as e:
                log.warning("cannot stop new connections before closing the port: %s", e)
                continue
            listeners.append(sock)
    return listeners


def accept_queue_empty(listeners: list[Any]) -> bool:
    """No connection waiting to be accepted on `listeners` (a listening socket is readable while one is)."""
    if not listeners:
        return True
    readable, _, _ = select.select([s.fileno() for s in listeners], [], [], 0)
    return not readable


def settled(connections: set[Any]) -> bool:
    """Every HTTP connection has had its answer (or closed)."""
    return all(c.settled() for c in list(connections) if isinstance(c, GuardedProtocol))
