"""Dynamic cross-request batching: one bounded queue, one inference thread, shared by every request.

Policy (after TEI's queue): a batch is formed as soon as the engine is free, from the waiting rows sorted
by length, within `max_batch_tokens` (padded length x rows), `max_batch_size` and `max_padding_ratio`
(padding costs compute, which on a CPU is all the cost); the batch always holds the oldest waiting row,
so no row starves behind shorter ones. Optionally the collector waits up to
`max_wait_ms` for a batch to fill. While the engine runs one batch, the next one is collected and padded
(prefetch depth 1), and topped up with rows that arrive before the engine takes it, so preparing early
never makes a batch smaller; an idle engine forms its batch itself. Rows whose request was cancelled or whose deadline passed are dropped before
inference and counted. Admission is all-or-nothing per request and bounded by `max_queue_rows`: a full
queue raises OVERLOADED at once.

`collate` is a plain function over a list, tested without threads; `Batcher` owns the threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import Batch

log = logging.getLogger("rmserve.batcher")


@dataclass
class RequestTiming:
    """Where one request's time went, filled in by the inference thread before its rows resolve:
    `queue_seconds` is the longest wait of its rows before their batch started, `inference_seconds`
    the engine time of the batches its rows ran in (each batch counted once)."""

    queue_seconds: float = 0.0
    inference_seconds: float = 0.0


@dataclass(eq=False)
class WorkItem:
    """One row waiting for a reward; resolved through `future` on the submitting event loop."""

    ids: Sequence[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None  # time.monotonic() after which the row is dropped
    enqueued: float = field(default_factory=time.monotonic)
    seq: int = 0
    timing: RequestTiming | None = None

    @property
    def length(self) -> int:
        return len(self.ids)

    def abandoned(self) -> bool:
        return self.future.done()  # cancelled by a departed client, or already failed


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_tokens: int
    max_batch_size: int
    max_wait_ms: float = 0.0
    max_queue_rows: int = 1024
    max_padding_ratio: float = 1.0  # 1.0: no limit


def collate(waiting: list[WorkItem], policy: BatchPolicy) -> list[WorkItem]:
    """Choose the next batch from `waiting` (removed from it); empty only when `waiting` is.

    Rows are sorted by length and a contiguous run around the oldest row is grown, one neighbour at a
    time (the one that adds least padding first), while the padded cost (longest row x rows) fits
    `max_batch_tokens` and padding stays within `max_padding_ratio` of it. A single row longer than the
    budget still forms a batch of one, so every row is eventually served.
    """
    if not waiting:
        return []
    by_length = sorted(waiting, key=lambda item: (item.length, item.seq))
    oldest = min(waiting, key=lambda item: item.seq)
    lo = hi = by_length.index(oldest)
    longest, real = oldest.length, oldest.length

    def fits(candidate: WorkItem) -> bool:
        rows = hi - lo + 2
        padded = max(longest, candidate.length) * rows
        return padded <= policy.max_batch_tokens and real + candidate.length >= (1 - policy.max_padding_ratio) * padded

    while hi - lo + 1 < policy.max_batch_size:
        left = by_length[lo - 1] if lo > 0 else None
        right = by_length[hi + 1] if hi + 1 < len(by_length) else None
        candidates = [c for c in (left, right) if c is not None and fits(c)]
        if not candidates:
            break
        # A shorter row adds (longest - its length) padding; a longer one adds (its length - longest) per row.
        best = min(candidates, key=lambda c: (longest - c.length) if c.length <= longest
                   else (c.length - longest) * (hi - lo + 1))
        if best is left:
            lo -= 1
        else:
            hi += 1
            longest = best.length
        real += best.length
    chosen = by_length[lo : hi + 1]
    chosen_ids = {id(item) for item in chosen}
    waiting[:] = [item for item in waiting if id(item) not in chosen_ids]
    return chosen


class Batcher:
    """Bounded queue + collector thread + inference thread around a `run(Batch) -> rewards` engine."""

    def __init__(self, run: Callable[[Batch], np.ndarray], pad: Callable[[list[Sequence[int]]], Batch],
                 policy: BatchPolicy, observer: BatchObserver | None = None):
        self._run = run
        self._pad = pad
        self.policy = policy
        self.observer = observer or BatchObserver()
        # One lock guards the queue and the prepared batch, so that topping up is atomic with taking.
        self._cond = threading.Condition()
        self._waiting: list[WorkItem] = []
        self._prepared: tuple[list[WorkItem], Batch] | None = None
        self._arrivals = 0  # rows submitted so far; tells the collector that something new came
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._collect_loop, name="rmserve-collector", daemon=True),
            threading.Thread(target=self._inference_loop, name="rmserve-inference", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _queued(self) -> int:
        """Rows admitted and not yet taken by the engine. Exact under the lock, a hint without it."""
        prepared = self._prepared  # read once: the collector may replace it meanwhile
        return len(self._waiting) + (len(prepared[0]) if prepared else 0)

    def is_full(self) -> bool:
        """No room for even one more row (unlocked: a hint for shedding load early)."""
        return self._queued() >= self.policy.max_queue_rows

    def check_room(self, count: int) -> None:
        """Refuse at once, before any work is spent on them, `count` rows that could not be queued now.
        `submit` checks again under the lock; this is the cheap early answer for an overloaded service."""
        queued = self._queued()
        if count > self.policy.max_queue_rows - queued:
            self.observer.rejected(count)
            raise ScoringError(ErrorKind.OVERLOADED, f"queue full: {queued} rows waiting, request has {count}")

    def submit(self, rows: Sequence[Sequence[int]], deadline: float | None = None,
               timing: RequestTiming | None = None) -> list[asyncio.Future]:
        """Queue rows of one request; all or none. Must be called on the event loop that awaits them.
        `timing`, if given, is filled in with the request's queue and inference time."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down")
            queued = self._queued()
            room = self.policy.max_queue_rows - queued
            if len(rows) > room:
                self.observer.rejected(len(rows))
                raise ScoringError(
                    ErrorKind.OVERLOADED,
                    f"queue full: {queued} rows waiting, room for {max(room, 0)}, request has {len(rows)}",
                )
            items = []
            for ids in rows:
                self._arrivals += 1
                items.append(WorkItem(ids, loop.create_future(), loop, deadline, seq=self._arrivals, timing=timing))
            self._waiting.extend(items)
            self.observer.queue_depth(queued + len(items))
            self._cond.notify_all()
        return [item.future for item in items]

    def discard(self, futures: Sequence[asyncio.Future]) -> None:
        """Take the rows of a request that will not wait for them (client gone, deadline passed) out of
        the queue now, so that their slots are free for the next request rather than at the next batch.
        Rows already taken by the engine are left to it."""
        doomed = {id(f) for f in futures}
        with self._cond:
            removed = [item for item in self._waiting if id(item.future) in doomed]
            if self._prepared is not None and any(id(item.future) in doomed for item in self._prepared[0]):
                removed += [item for item in self._prepared[0] if id(item.future) in doomed]
                # The prepared batch is formed again from what remains, as when newcomers arrive.
                self._waiting.extend(item for item in self._prepared[0] if id(item.future) not in doomed)
                self._prepared = None
            if not removed:
                return
            gone = {id(item) for item in removed}
            self._waiting[:] = [item for item in self._waiting if id(item) not in gone]
            now = time.monotonic()
            expired = sum(1 for item in removed if item.deadline is not None and now >= item.deadline - 1e-3)
            if expired:
                self.observer.dropped("expired", expired)
            if len(removed) > expired:
                self.observer.dropped("cancelled", len(removed) - expired)
            self.observer.queue_depth(self._queued())
            self._cond.notify_all()

    def _collect_loop(self) -> None:
        """Keep one batch prepared for the engine; while the engine is busy, top it up with new rows."""
        formed_at = -1  # self._arrivals when the prepared batch was last formed
        with self._cond:
            while True:
                if self._stopping and not self._waiting and self._prepared is None:
                    self._cond.notify_all()
                    return
                room = self._prepared is None or len(self._prepared[0]) < self.policy.max_batch_size
                if self._waiting and room and (self._prepared is None or self._arrivals != formed_at):
                    if self._prepared is None:
                        self._wait_to_fill_locked()
                    else:  # give the prepared rows back to the pool and choose again with the newcomers
                        self._waiting.extend(self._prepared[0])
                        self._prepared = None
                    self._drop_dead_locked()
                    if self._waiting:
                        items = collate(self._waiting, self.policy)
                        self._prepared = (items, self._pad([item.ids for item in items]))
                        formed_at = self._arrivals
                        self._cond.notify_all()
                    continue
                self._cond.wait()

    def _wait_to_fill_locked(self) -> None:
        if self.policy.max_wait_ms <= 0:
            return
        deadline = min(i.enqueued for i in self._waiting) + self.policy.max_wait_ms / 1000
        while len(self._waiting) < self.policy.max_batch_size and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)

    def _drop_dead_locked(self) -> None:
        self._waiting[:] = self._without_dead(self._waiting)

    def _without_dead(self, items: list[WorkItem]) -> list[WorkItem]:
        """Items still worth scoring; the others are counted and, if someone still waits, answered."""
        now = time.monotonic()
        alive = []
        for item in items:
            if item.deadline is not None and now > item.deadline:  # checked first: a deadline also cancels
                self.observer.dropped("expired")
                _resolve(item, error=ScoringError(ErrorKind.TIMEOUT, "deadline passed before the row was scored"))
            elif item.abandoned():
                self.observer.dropped("cancelled")
            else:
                alive.append(item)
        return alive

    def _take_prepared(self) -> tuple[list[WorkItem], Batch] | None:
        """The next batch for the engine: the prepared one, or, when the engine finds rows waiting and
        nothing prepared, one it forms itself (saving a thread hop on an idle service)."""
        with self._cond:
            while self._prepared is None:
                if self._waiting and self.policy.max_wait_ms <= 0:
                    self._drop_dead_locked()
                    if self._waiting:
                        items = collate(self._waiting, self.policy)
                        self.observer.queue_depth(len(self._waiting))
                        return items, self._pad([item.ids for item in items])
                    continue
                if self._stopping and not self._waiting:
                    return None
                self._cond.wait()
            taken, self._prepared = self._prepared, None
            self.observer.queue_depth(len(self._waiting))
            self._cond.notify_all()
            return taken

    def _inference_loop(self) -> None:
        while True:
            taken = self._take_prepared()
            if taken is None:
                return
            items, batch = taken
            alive = self._without_dead(items)  # a client may have left while its row was prepared
            if not alive:
                continue
            if len(alive) < len(items):
                keep = [i for i, item in enumerate(items) if item in alive]
                items = alive
                batch = Batch(batch.input_ids[keep], batch.attention_mask[keep])
            waited = [time.monotonic() - item.enqueued for item in items]
            began = time.perf_counter()
            try:
                rewards = self._run(batch)
                assert len(rewards) == len(items), f"batch size mismatch: {len(items)} rows, {len(rewards)} rewards"
            except Exception as e:  # the engine failed: every row of the batch gets the error, none is lost
                log.exception("inference failed for a batch of %d rows", len(items))
                for item in items:
                    _resolve(item, error=ScoringError(ErrorKind.INTERNAL, f"inference failed: {e}"))
                continue
            seconds = time.perf_counter() - began
            self.observer.batch(batch, seconds, waited)
            _record_timings(items, waited, seconds)
            for item, reward in zip(items, rewards.tolist(), strict=True):
                _resolve(item, result=reward)

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, then stop both threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)


def _record_timings(items: list[WorkItem], waited: list[float], seconds: float) -> None:
    """Add one batch to the timings of the requests it served; written before the rows resolve, so
    a request reads complete figures once all its rows are answered."""
    counted: set[int] = set()
    for item, wait in zip(items, waited, strict=True):
        timing = item.timing
        if timing is None:
            continue
        timing.queue_seconds = max(timing.queue_seconds, wait)
        if id(timing) not in counted:
            counted.add(id(timing))
            timing.inference_seconds += seconds


def _resolve(item: WorkItem, result: float | None = None, error: Exception | None = None) -> None:
    def settle() -> None:
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class BatchObserver:
    """Hooks for metrics; the default does nothing (tests and benchmarks may count with it)."""

    def batch(self, batch: Batch, seconds: float, queue_seconds: list[float]) -> None: ...

    def dropped(self, reason: str, count: int = 1) -> None: ...

    def rejected(self, rows: int) -> None: ...

    def queue_depth(self, rows: int) -> None: ...
