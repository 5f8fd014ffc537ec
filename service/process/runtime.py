"""The serving process: one event loop running the HTTP server (uvicorn) and the gRPC server
(grpc.aio) side by side over one `ServiceState` — one scoring core, one batcher, one model session.

Start-up: both servers listen at once (liveness answers immediately) while the bundle loads in a
thread; readiness (/readyz, gRPC health) turns true when the bundle is verified. Shutdown (SIGTERM or
SIGINT, handled here rather than by uvicorn): readiness turns false at once and new work gets
503/UNAVAILABLE while the listeners stay open; once admitted work is done (no scoring call for
`DRAIN_QUIET_SECONDS`, at most `shutdown_grace_seconds`) the servers stop, the queue is empty, and the
process exits 0. Keeping the listeners open while draining means a client sent away during the drain gets
a 503 it can act on, never a connection reset. SIGHUP reloads the configured bundle (service/process/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator

import uvicorn

from rmserve.service.process.state import ServiceState
from rmserve.service.settings import Settings
from rmserve.service.transports.grpc.app import start_grpc_server
from rmserve.service.transports.http.app import create_app
from rmserve.service.transports.tls import uvicorn_tls_options

log = logging.getLogger("rmserve")
class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runtime owns SIGTERM/SIGINT: uvicorn's own handling would re-raise the signal after HTTP
        # stops, killing the process before gRPC and the queue have drained.
        yield


async def serve(settings: Settings) -> int:
    """Run HTTP and gRPC until a signal; returns the process exit code."""
    state = ServiceState(settings)
    app = create_app(state)
    http = _HttpServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                         lifespan="off", timeout_graceful_shutdown=settings.shutdown_grace_seconds,
                                         **uvicorn_tls_options(settings)))
    grpc_server = await start_grpc_server(state) if settings.grpc_port >= 0 else None

    loading = asyncio.create_task(state.load())

    draining: asyncio.Task | None = None
    tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def drain_then_stop() -> None:
        began = time.monotonic()
        await state.drain(settings.shutdown_grace_seconds)
        # uvicorn's own wait for open connections gets what is left of the grace period.
        http.config.timeout_graceful_shutdown = max(0.0, settings.shutdown_grace_seconds - (time.monotonic() - began))
        http.should_exit = True

    def begin_shutdown(sig: signal.Signals) -> None:
        nonlocal draining
        if draining is not None:  # a second signal: stop waiting
            log.info("%s received again: stopping now", sig.name)
            http.force_exit = True
            http.should_exit = True
            return
        log.info("%s received: readiness off, refusing new work, finishing admitted work", sig.name)
        state.set_ready(False)
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
        if grpc_server is not None:
            await grpc_server.stop(settings.shutdown_grace_seconds)
        await state.close()
    return 1 if state.load_error is not None else 0
