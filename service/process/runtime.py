"""The serving process: one event loop running the HTTP server (uvicorn) and the gRPC server
(grpc.aio) side by side over one `ServiceState` — one scoring core, one batcher, one model session.

Start-up: a server on an address other than loopback without API keys is refused unless
`allow_unauthenticated` (`check_exposure`). Both servers listen at once (liveness answers immediately)
while the bundle loads in a thread; readiness (/readyz, gRPC health) turns true when the bundle is
verified. Shutdown (SIGTERM or SIGINT, handled here rather than by uvicorn): readiness turns false at once,
new work gets 503/UNAVAILABLE while the listeners stay open, and every HTTP answer from then on closes its
connection (`Connection: close`). Once admitted work is done (no scoring call for `DRAIN_QUIET_SECONDS`, at
most `shutdown_grace_seconds`) the HTTP port stops taking new connections without resetting the ones the
kernel already queued, those are answered, and only when every connection has had its answer do the
servers stop; the queue is empty and the process exits 0. gRPC stops last, without cancelling a call
(`close_grpc`). So a request that reaches the server gets 200 or 503 (UNAVAILABLE), and a later one finds
the port closed: never a reset (service/transports/http/connections.py). SIGHUP
reloads the configured bundle (service/process/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from rmserve.service.process.state import ServiceState
from rmserve.service.settings import Settings
from rmserve.service.transports.auth import ApiKeys, is_loopback
from rmserve.service.transports.grpc.app import start_grpc_server
from rmserve.service.transports.http.app import create_app
from rmserve.service.transports.http.connections import (
    GuardedProtocol,
    accept_queue_empty,
    protocol_class,
    settled,
    stop_accepting,
)
from rmserve.service.transports.tls import check_tls_files, harden, uvicorn_tls_options

log = logging.getLogger("rmserve")


def check_exposure(settings: Settings, api_keys: ApiKeys) -> None:
    """Refuse (ValueError) to serve on an address other than loopback without API keys, unless
    `allow_unauthenticated` says so; then warn."""
    if api_keys.enabled or is_loopback(settings.host):
        return
    if not settings.allow_unauthenticated:
        raise ValueError(
            f"refusing to serve on {settings.host} without API keys: anyone who can reach that address could use "
            "the model. Give keys in a file (RMSERVE_API_KEYS_FILE) or RMSERVE_API_KEYS, bind 127.0.0.1 (--host), "
            "or serve without keys on purpose with --allow-unauthenticated (RMSERVE_ALLOW_UNAUTHENTICATED=true)")
    log.warning("serving on %s without API keys (allow_unauthenticated): anyone who can reach this address "
                "can use the model", settings.host)


def preflight(settings: Settings) -> None:
    """What can refuse a start before the bundle loads and ports are bound: the key files, exposure, and the
    TLS certificate and key."""
    check_exposure(settings, ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file))
    ApiKeys.load(settings.admin_api_keys.get_secret_value(), settings.admin_api_keys_file, "admin_api_keys_file")
    check_tls_files(settings)


async def close_grpc(server: Any, state: ServiceState, grace: float) -> None:
    """Stop the gRPC server without cancelling a call. gRPC's shutdown answers CANCELLED to a call that has
    reached the server but not yet its handler (grpc/grpc#41785), and a client that resends at once after a
    503 always has one on the way. So refusals are held first: each such client's next call waits in its
    handler, unanswered, and once calls stop arriving the shutdown begins (the port closes and GOAWAY goes
    out on every connection); only then are the held calls answered UNAVAILABLE, and the clients' next
    calls find the port closed."""
    state.hold_refusals()
    give_up = time.monotonic() + min(2.0, grace)
    seen = -1
    while seen != state.grpc_calls and time.monotonic() < give_up:
        seen = state.grpc_calls
        await asyncio.sleep(_CALLS_SETTLED)  # a window with no new call: each client now waits on its answer
    stopping = asyncio.create_task(server.stop(grace))
    await asyncio.sleep(0)  # ordering, not time: the stop task's first step (the core's shutdown) runs first
    state.release_refusals()
    await stopping


_CALLS_SETTLED = 0.2  # long enough for a busy event loop to take up a call that has arrived
_ANSWERS_SENT = 1.0  # at most, for the event loop to write the answers of requests cancelled at the end


async def _until(condition: Callable[[], bool], limit: float) -> bool:
    """Wait on the event loop until `condition()` holds (True) or `limit` seconds pass (False)."""
    give_up = time.monotonic() + limit
    while not condition():
        if time.monotonic() >= give_up:
            return False
        await asyncio.sleep(0.01)
    return True


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runtime owns SIGTERM/SIGINT: uvicorn's own handling would re-raise the signal after HTTP
        # stops, killing the process before gRPC and the queue have drained.
        yield


async def serve(settings: Settings) -> int:
    """Run HTTP and gRPC until a signal; returns the process exit code."""
    state = ServiceState(settings)
    check_exposure(settings, state.api_keys)
    app = create_app(state)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            lifespan="off", timeout_graceful_shutdown=settings.shutdown_grace_seconds,
                            http=protocol_class(settings, lambda: state.draining),  # type: ignore[arg-type]
                            timeout_keep_alive=settings.keep_alive_timeout_seconds, server_header=False,
                            **uvicorn_tls_options(settings))
    config.load()
    harden(config.ssl)  # TLS 1.2 at least
    http = _HttpServer(config)
    grpc_server = await start_grpc_server(state) if settings.grpc_port >= 0 else None

    loading = asyncio.create_task(state.load())

    draining: asyncio.Task | None = None
    tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
    # When the shutdown must be over: SIGTERM + shutdown_grace_seconds (a second signal: now). Every wait of
    # the shutdown, gRPC's and the engine's included, ends by then.
    stop_by: float | None = None

    def left() -> float:
        if stop_by is None:  # stopping without a signal (the bundle failed to load)
            return settings.shutdown_grace_seconds
        return max(0.0, stop_by - time.monotonic())

    async def drain_then_stop() -> None:
        await state.drain(left())
        # New connections wait unanswered (and then find the port closed); those already queued are
        # accepted and answered 503, closing; the servers stop once every connection has its answer.
        listeners = stop_accepting(getattr(http, "servers", []))
        await _until(lambda: accept_queue_empty(listeners), min(1.0, left()))
        if not await _until(lambda: settled(http.server_state.connections), min(settings.header_timeout_seconds,
                                                                                left())):
            log.info("closing HTTP connections that have not sent a request")
        # uvicorn's own wait for open connections gets what is left of the grace period.
        http.config.timeout_graceful_shutdown = left()
        http.should_exit = True

    def begin_shutdown(sig: signal.Signals) -> None:
        nonlocal draining, stop_by
        if draining is not None:  # a second signal: stop waiting
            log.info("%s received again: stopping now", sig.name)
            stop_by = time.monotonic()
            http.force_exit = True
            http.should_exit = True
            return
        log.info("%s received: readiness off, refusing new work, finishing admitted work", sig.name)
        stop_by = time.monotonic() + settings.shutdown_grace_seconds
        state.set_ready(False)
        state.draining = True  # every HTTP answer from now on closes its connection
        for connection in list(http.server_state.connections):
            if isinstance(connection, GuardedProtocol):
                connection.close_after_answer()
        draining = asyncio.create_task(drain_then_stop())

    def reload_bundle() -> None:
        log.info("SIGHUP received: reloading %s", settings.bundle)
        task = asyncio.create_task(state.reloader.reload_logged())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    log.info("HTTP and gRPC on the %s event loop", "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin_shutdown, sig)
    loop.add_signal_handler(signal.SIGHUP, reload_bundle)

    def stop_when_load_fails(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("bundle failed to load: %s", task.exception())
            http.should_exit = True

    loading.add_done_callback(stop_when_load_fails)
    try:
        await http.serve()
    finally:
        if not loading.done():
            loading.cancel()
        state.set_ready(False)
        # HTTP requests cancelled at the end of the grace period are being answered 503 (ScoringFront).
        await _until(lambda: not http.server_state.connections, _ANSWERS_SENT)
        if grpc_server is not None:
            await close_grpc(grpc_server, state, left())
        await state.close(left())
    return 1 if state.load_error is not None else 0
