"""The serving process: one event loop running the HTTP server (uvicorn) and the gRPC server
(grpc.aio) side by side over one `ServiceState` — one scoring core, one batcher, one model session.

Start-up: both servers listen at once (liveness answers immediately) while the bundle loads in a
thread; readiness (/readyz, gRPC health) turns true when the bundle is verified. Shutdown (SIGTERM or
SIGINT, handled here rather than by uvicorn): readiness turns false and new work gets 503/UNAVAILABLE,
the servers stop taking calls, queued work is scored, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from service.auth import ApiKeys
from service.errors import ErrorKind, ScoringError
from service.metrics import Metrics
from service.scoring import Scorer
from service.settings import Settings

log = logging.getLogger("rmserve")


class ServiceState:
    """What every transport shares: settings, metrics and, once loaded, the scorer."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.queue_capacity.set(settings.max_queue_rows)
        self.api_keys = ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
        self.scorer: Scorer | None = None
        self._ready = False
        self.load_error: Exception | None = None
        self.readiness_listeners: list = []  # callables(bool), e.g. the gRPC health servicer

    @property
    def ready(self) -> bool:
        return self._ready

    def require_scorer(self) -> Scorer:
        """The scorer, for new work; refused while loading and once shutdown has begun."""
        if self.scorer is None:
            raise ScoringError(ErrorKind.UNAVAILABLE, "the model is not loaded yet; retry when /readyz answers 200")
        if not self._ready:
            raise ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down; retry on another replica")
        return self.scorer

    async def load(self) -> None:
        try:
            self.scorer = await asyncio.to_thread(Scorer.load, self.settings, self.metrics)
        except Exception as e:
            self.load_error = e
            raise
        self.set_ready(True)

    def set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        self.metrics.ready.set(1 if ready else 0)
        for listener in self.readiness_listeners:
            listener(ready)

    async def close(self) -> None:
        self.set_ready(False)
        scorer, self.scorer = self.scorer, None
        if scorer is not None:
            await asyncio.to_thread(scorer.close)


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runtime owns SIGTERM/SIGINT: uvicorn's own handling would re-raise the signal after HTTP
        # stops, killing the process before gRPC and the queue have drained.
        yield


async def serve(settings: Settings) -> int:
    """Run HTTP and gRPC until a signal; returns the process exit code."""
    from service.grpc_app import start_grpc_server
    from service.http_app import create_app

    state = ServiceState(settings)
    app = create_app(state)
    http = _HttpServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                         lifespan="off", timeout_graceful_shutdown=settings.shutdown_grace_seconds))
    grpc_server = await start_grpc_server(state) if settings.grpc_port >= 0 else None

    loading = asyncio.create_task(state.load())

    def begin_shutdown(sig: signal.Signals) -> None:
        log.info("%s received: readiness off, finishing queued work", sig.name)
        state.set_ready(False)
        if http.should_exit:  # a second signal: stop waiting for connections
            http.force_exit = True
        http.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin_shutdown, sig)

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
