"""Model management: a new bundle goes live without a restart, or is refused while the old one serves.

Triggers: `POST /admin/reload` with `{"bundle": PATH}` (or no body: the configured bundle path again),
authenticated with an admin key (`admin_api_keys`; the endpoint is closed when none is set), and SIGHUP
(the configured bundle path, re-read; wired in service/process/runtime.py). Reloads run one at a time.

A new bundle is verified exactly as at start-up (format, sha256 of every file, golden-set parity on the
new engine) in a thread while the old one keeps serving; a failure leaves everything as it was. On
success the new `Scorer` (its own tokenizer, batcher and session) replaces the old one in one assignment:
requests that already hold the old scorer finish on it, new requests get the new one, so every request
and every batch is scored by exactly one bundle and its answer names that bundle. The old scorer is
closed once no call has used it for `RETIRE_QUIET_SECONDS` (at most `shutdown_grace_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.scoring import Scorer
from rmserve.service.transports.auth import ApiKeys

if TYPE_CHECKING:
    from rmserve.service.process.state import ServiceState

log = logging.getLogger("rmserve.reload")

# A request takes its scorer and starts scoring within one pass of the event loop; a scorer unused for
# this long has no request left that could still reach it.
RETIRE_QUIET_SECONDS = 1.0


async def until_idle(scorer: Scorer, quiet: float, limit: float) -> bool:
    """Wait until `scorer` has had no call under way for `quiet` seconds (True), or `limit` passed."""
    give_up = time.monotonic() + limit
    idle_since: float | None = None
    while True:
        now = time.monotonic()
        if scorer.active_calls == 0:
            idle_since = idle_since or now
            if now - idle_since >= quiet:
                return True
        else:
            idle_since = None
        if now >= give_up:
            return False
        await asyncio.sleep(0.02)


class Reloader:
    def __init__(self, state: ServiceState):
        self.state = state
        self.admin_keys = ApiKeys.load(state.settings.admin_api_keys.get_secret_value(), None)
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self.reloads = Counter("rmserve_model_reloads", "Bundle reloads (admin endpoint or SIGHUP) by outcome: "
                               "ok, or refused (failed verification; the old bundle kept serving).",
                               ["outcome"], registry=state.metrics.registry)
        for outcome in ("ok", "refused"):
            self.reloads.labels(outcome)

    async def reload(self, bundle: Path | None = None) -> tuple[Scorer, Scorer]:
        """Load, verify and swap in `bundle` (default: the configured one); returns (old, new)."""
        state = self.state
        async with self._lock:
            old = state.scorer
            if old is None or not state.ready:
                raise ScoringError(ErrorKind.UNAVAILABLE, "no model is being served (loading or shutting down)")
            settings = state.settings if bundle is None else state.settings.model_copy(update={"bundle": Path(bundle)})
            try:
                new = await asyncio.to_thread(Scorer.load, settings, state.metrics)
            except Exception as e:  # BundleError names the failed check; anything else is a refusal too
                self.reloads.labels("refused").inc()
                log.error("reload of %s refused, still serving %s: %s", settings.bundle, old.manifest.bundle_id, e)
                raise ScoringError(ErrorKind.VALIDATION, f"bundle {settings.bundle} refused, still serving "
                                   f"{old.manifest.bundle_id}: {e}", "bundle") from None
            if not state.ready:  # shutdown began while the bundle loaded
                await asyncio.to_thread(new.close)
                raise ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down")
            state.scorer = new
            new.publish_model_info()
            self.reloads.labels("ok").inc()
            log.info("now serving bundle %s from %s (was %s)", new.manifest.bundle_id, new.bundle.path,
                     old.manifest.bundle_id)
            task = asyncio.create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return old, new

    async def reload_logged(self) -> None:
        """SIGHUP: reload the configured bundle; the outcome goes to the log (there is no caller to tell)."""
        try:
            await self.reload()
        except ScoringError as e:
            log.error("SIGHUP reload: %s", e.message)

    async def _retire(self, old: Scorer) -> None:
        grace = max(self.state.settings.shutdown_grace_seconds, RETIRE_QUIET_SECONDS)
        if not await until_idle(old, RETIRE_QUIET_SECONDS, grace):
            log.warning("bundle %s still had calls after %.0f s; closing it anyway", old.manifest.bundle_id, grace)
        await asyncio.to_thread(old.close)

    async def close(self) -> None:
        """Wait for replaced scorers to finish their work and close."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
