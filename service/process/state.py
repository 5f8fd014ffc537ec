"""What every transport shares: `ServiceState` holds the settings, the metrics, the API keys, the reloader
and, once loaded, the scorer; it turns readiness on and off and drains admitted work.

The transports import this module; it imports none of them, and the runtime (which wires the transports
together) is not imported by anything but the command line.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.metrics import Metrics
from rmserve.service.core.scoring import Scorer
from rmserve.service.process.reload import Reloader, off_loop, until_idle
from rmserve.service.settings import Settings
from rmserve.service.transports.auth import ApiKeys

log = logging.getLogger("rmserve")
# After the last admitted call ends, new calls are still answered 503 this long before the listeners
# close: a client that got its answer just now and sends again meets a 503, not a closed port.
DRAIN_QUIET_SECONDS = 0.5


class ServiceState:
    """What every transport shares: settings, metrics and, once loaded, the scorer."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.queue_capacity.set(settings.max_queue_rows)
        self.api_keys = ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
        self.scorer: Scorer | None = None
        self._ready = False
        self.draining = False  # shutdown began: HTTP answers close their connections
        self.grpc_calls = 0  # gRPC calls begun so far: the end of a drain waits until they stop coming
        self._refusals_released: asyncio.Event | None = None  # set: refusals are held until it is (close_grpc)
        self.load_error: Exception | None = None
        self.readiness_listeners: list = []  # callables(bool), e.g. the gRPC health servicer
        self.reloader = Reloader(self)

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
            self.scorer = await off_loop(Scorer.load, self.settings, self.metrics)
        except Exception as e:
            self.load_error = e
            raise
        self.scorer.publish_model_info()
        if self.draining:  # shutdown began while the bundle loaded: it stays unready and serves nothing
            log.info("bundle loaded after shutdown began: not serving it")
            return
        self.set_ready(True)

    def set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        self.metrics.ready.set(1 if ready else 0)
        for listener in self.readiness_listeners:
            listener(ready)

    def hold_refusals(self) -> None:
        """From now on a gRPC call refused as UNAVAILABLE waits for `release_refusals` before it is answered."""
        self._refusals_released = asyncio.Event()

    def release_refusals(self) -> None:
        if self._refusals_released is not None:
            self._refusals_released.set()

    async def refusal_released(self) -> None:
        """Return at once, unless refusals are held (the last moment of a drain)."""
        if self._refusals_released is not None:
            await self._refusals_released.wait()

    async def drain(self, limit: float) -> None:
        """Readiness is off: wait until admitted work is done, or `limit` seconds."""
        if self.scorer is not None and not await until_idle(self.scorer, min(DRAIN_QUIET_SECONDS, limit), limit):
            log.warning("work still under way after the %.0f s shutdown grace period", limit)

    async def close(self, limit: float | None = None) -> None:
        """Close the scorer (and those a reload replaced), waiting at most `limit` seconds (default
        shutdown_grace_seconds): an engine still busy then (a hung GPU, a batch past the grace period) is
        left to the process's exit."""
        self.set_ready(False)
        limit = self.settings.shutdown_grace_seconds if limit is None else limit
        give_up = time.monotonic() + limit
        await self.reloader.close(limit)
        scorer, self.scorer = self.scorer, None
        if scorer is None:
            return
        try:
            await asyncio.wait_for(off_loop(scorer.close), max(0.0, give_up - time.monotonic()))
        except asyncio.TimeoutError:
            log.warning("the engine is still busy at the end of the shutdown grace period: exiting without it")


