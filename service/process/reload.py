"""Model management: a new bundle goes live without a restart, or is refused while the old one serves.

Triggers: `POST /admin/reload` with `{"bundle": PATH}` (or no body: the configured bundle path again),
authenticated with an admin key (`admin_api_keys`, `admin_api_keys_file`; the endpoint is closed when none
is set), and SIGHUP (the configured bundle path, re-read; wired in service/process/runtime.py). Reloads run
one at a time. A PATH must lie inside `bundle_root` (a relative one is taken inside it; symlinks are
followed before the check, so none leads out); without `bundle_root` only the configured bundle reloads.
A refusal never names a path the client did not send, nor says whether a path outside the root exists;
the log escapes the path the client sent.

A new bundle is verified exactly as at start-up (format, sha256 of every file, golden-set parity on the
new engine) in a thread while the old one keeps serving; a failure leaves everything as it was. On
success the new `Scorer` (its own tokenizer, batcher and session) replaces the old one in one assignment:
requests that already hold the old scorer finish on it, new requests get the new one, so every request
and every batch is scored by exactly one bundle and its answer names that bundle. The old scorer is
closed once no call has used it for `RETIRE_QUIET_SECONDS`, however long its last requests take (a request
scored in chunks, /get_reward's, keeps its scorer from the first chunk to the last); a shutdown waits for
it only within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter

from rmserve.service.core.bundle import BundleError
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.scoring import Scorer
from rmserve.service.transports.auth import ApiKeys

if TYPE_CHECKING:
    from rmserve.service.process.state import ServiceState

log = logging.getLogger("rmserve.reload")
T = TypeVar("T")

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


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on a daemon thread of its own, awaited: for loading and closing scorers, which can
    take minutes (a large model) or never end (a hung engine). `asyncio.to_thread` would use the loop's
    executor, whose threads the end of the event loop and the interpreter's exit wait for, so a shutdown
    could not end within its grace period."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (function(*args), None)
        except BaseException as e:  # handed to the awaiting coroutine
            outcome = (None, e)
        finally:
            _running.discard(threading.current_thread())
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    thread = threading.Thread(target=run, name=getattr(function, "__qualname__", "off-loop"), daemon=True)
    _running.add(thread)
    thread.start()
    return await done


_running: set[threading.Thread] = set()


def loads_or_closes_under_way() -> bool:
    """Whether an `off_loop` call is still running (the process is exiting without it: see rmserve serve)."""
    return bool(_running)


class Reloader:
    def __init__(self, state: ServiceState):
        self.state = state
        settings = state.settings
        self.admin_keys = ApiKeys.load(settings.admin_api_keys.get_secret_value(), settings.admin_api_keys_file,
                                       "admin_api_keys_file")
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self.reloads = Counter("rmserve_model_reloads", "Bundle reloads (admin endpoint or SIGHUP) by outcome: "
                               "ok, or refused (failed verification; the old bundle kept serving).",
                               ["outcome"], registry=state.metrics.registry)
        for outcome in ("ok", "refused"):
            self.reloads.labels(outcome)

    def confine(self, given: str) -> Path:
        """The directory a reload request names, inside `bundle_root`; refused without saying more."""
        root = self.state.settings.bundle_root
        if root is None:
            raise ScoringError(ErrorKind.VALIDATION, "this server reloads only its configured bundle: send no "
                               "'bundle', or set bundle_root to the directory bundles may be loaded from", "bundle")
        real_root = Path(root).resolve()
        try:
            real = (real_root / given).resolve()  # an absolute `given` replaces the root here
        except (OSError, ValueError):
            real = None
        if real is None or real == real_root or not real.is_relative_to(real_root):
            raise ScoringError(ErrorKind.VALIDATION, "the bundle must be a directory inside the server's "
                               "bundle_root", "bundle")
        return real

    async def reload(self, bundle: str | None = None) -> tuple[Scorer, Scorer]:
        """Load, verify and swap in `bundle` (inside bundle_root; default: the configured one); returns
        (old, new)."""
        state = self.state
        async with self._lock:
            old = state.scorer
            if old is None or not state.ready:
                raise ScoringError(ErrorKind.UNAVAILABLE, "no model is being served (loading or shutting down)")
            try:
                where = None if bundle is None else self.confine(bundle)
            except ScoringError:
                self.reloads.labels("refused").inc()
                log.error("reload of %r refused: not inside bundle_root", bundle)
                raise
            settings = state.settings if where is None else state.settings.model_copy(update={"bundle": where})
            name = "the configured bundle" if bundle is None else "the bundle"
            try:
                new = await off_loop(Scorer.load, settings, state.metrics,
                                              None if where is None else state.settings.bundle_root)
            except BundleError as e:  # names the failed check, files relative to the bundle
                self.reloads.labels("refused").inc()
                log.error("reload of %r refused, still serving %s: %s", str(settings.bundle), old.manifest.bundle_id, e)
                raise ScoringError(ErrorKind.VALIDATION, f"{name} was refused, still serving "
                                   f"{old.manifest.bundle_id}: {e}", "bundle") from None
            except Exception:  # not a check that failed: the details are for the log only
                self.reloads.labels("refused").inc()
                log.exception("reload of %r refused, still serving %s", str(settings.bundle), old.manifest.bundle_id)
                raise ScoringError(ErrorKind.VALIDATION, f"{name} was refused, still serving {old.manifest.bundle_id}: "
                                   "it could not be loaded (the server log has the details)", "bundle") from None
            if not state.ready:  # shutdown began while the bundle loaded
                await off_loop(new.close)
                raise ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down")
            state.scorer = new
            new.publish_model_info()
            self.reloads.labels("ok").inc()
            log.info("now serving bundle %s from %r (was %s)", new.manifest.bundle_id, str(new.bundle.path),
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
        # No time limit: closing it under a request refuses that request's next chunk (each request's own
        # deadline bounds it; a shutdown stops waiting at the end of its grace period, in close()).
        await until_idle(old, RETIRE_QUIET_SECONDS, math.inf)
        await off_loop(old.close)

    async def close(self, limit: float) -> None:
        """Wait, at most `limit` seconds, for replaced scorers to finish their work and close."""
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=limit)
