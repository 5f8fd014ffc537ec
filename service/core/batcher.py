"""Dynamic cross-request batching: one bounded queue, one inference thread, shared by every request.

A request is a `Job`, admitted whole before any of its rows is tokenized (`admit`: all or nothing, bounded
by `max_queue_rows` and, per client, by `max_client_rows`; OVERLOADED at once when either is full), queued
once tokenized (`submit`, from the tokenizer threads of service/core/tokenizing.py) and answered through
one future when its last row is scored; a finished batch wakes each waiting event loop once. Admitted rows
count until the engine takes them.

Policy (after TEI's queue, with turns between clients): a batch is formed as soon as the engine is free,
from the waiting rows sorted by length, within `max_batch_tokens` (padded length x rows), `max_batch_size`
and `max_padding_ratio` (padding costs compute, which on a CPU is all the cost), around the oldest row of
the client whose turn it is (batch_policy.py), so no client's rows starve behind another's. Optionally the
collector waits up to `max_wait_ms` for a batch to fill. While the engine runs one batch the next is
collected, padded and topped up with newcomers (prefetch depth 1); an idle engine forms its batch itself.
Rows of departed clients or past their deadline are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from rmserve.service.core.batch_policy import BatchPolicy, Job, Turns, WorkItem, collate
from rmserve.service.core.errors import ErrorKind, ScoringError, internal_error
from rmserve.service.core.inputs import Batch

__all__ = ["Batcher", "BatchObserver", "BatchPolicy", "Job", "WorkItem", "collate"]

log = logging.getLogger("rmserve.batcher")


class Batcher:
    """Bounded queue + collector thread + inference thread around a `run(Batch) -> rewards` engine."""

    def __init__(self, run: Callable[[Batch], np.ndarray], pad: Callable[[list[Sequence[int]]], Batch],
                 policy: BatchPolicy, observer: BatchObserver | None = None, row_dtype: type = np.float32):
        self._run, self._pad, self.row_dtype = run, pad, row_dtype  # row_dtype: object when run returns arrays
        self.policy = policy
        self.observer = observer or BatchObserver()
        # One lock guards the queue and the prepared batch, so that topping up is atomic with taking. The
        # collector waits on `_cond`, the inference thread on `_engine_cond`: new rows wake only the one
        # that will act on them (an idle engine forms its batch itself; a busy one has the collector prepare).
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._engine_cond = threading.Condition(lock)
        self._engine_idle = False
        self._waiting: list[WorkItem] = []
        self._prepared: tuple[list[WorkItem], Batch] | None = None
        self._prepared_for = ""  # the client whose row anchors the prepared batch
        self._arrivals = 0  # rows submitted so far; tells the collector that something new came
        self._stopping = False
        # Rows admitted and not yet taken by the engine (or dropped), in all and by client. A lock of its own:
        # admission runs on the event loop and must not wait while the collector sorts the queue under `_cond`.
        self._admitted = 0
        self._by_client: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._turns = Turns()
        self._threads = [
            threading.Thread(target=self._collect_loop, name="rmserve-collector", daemon=True),
            threading.Thread(target=self._inference_loop, name="rmserve-inference", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _wake_all(self) -> None:
        self._cond.notify_all()
        self._engine_cond.notify_all()

    def queued(self) -> int:
        """Rows admitted and not yet taken by the engine: being tokenized, waiting, or prepared."""
        return self._admitted

    def is_full(self, client: str = "") -> bool:
        """No room for even one more row, in the queue or in `client`'s share of it (a hint for shedding
        load early, before a body is read)."""
        limit = self.policy.max_client_rows
        return self._admitted >= self.policy.max_queue_rows or bool(
            client and limit and self._by_client.get(client, 0) >= limit)

    def admit(self, rows: int, deadline: float | None = None, client: str = "") -> Job:
        """Admit a request of `rows` rows from `client`, all or none, before any of them is tokenized;
        OVERLOADED at once when the queue, or the client's share of it, has no room for all of them. Must be
        called on the event loop that awaits the job."""
        if self._stopping:
            raise ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down")
        limit = self.policy.max_client_rows
        with self._count_lock:
            queued = self._admitted
            mine = self._by_client.get(client, 0)
            if rows > self.policy.max_queue_rows - queued:
                room = max(self.policy.max_queue_rows - queued, 0)
                message = f"queue full: {queued} rows waiting, room for {room}, request has {rows}"
            elif client and limit and rows > limit - mine:
                message = (f"this client's share of the queue is full: {mine} of its {limit} rows waiting "
                           f"(max_queue_rows_per_client), request has {rows}")
            else:
                message = ""
                self._admitted = queued + rows
                self._by_client[client] = mine + rows
        if message:
            self.observer.rejected(rows)
            raise ScoringError(ErrorKind.OVERLOADED, message)
        self.observer.queue_depth(queued + rows)
        loop = asyncio.get_running_loop()
        return Job(rows, loop, loop.create_future(), deadline, client, self.row_dtype)

    def _release(self, jobs: Iterable[Job]) -> None:
        """Free the queue slots of one row per entry of `jobs` (a job once per row)."""
        freed = Counter(job.client for job in jobs)
        with self._count_lock:
            for client, rows in freed.items():
                self._admitted -= rows
                left = self._by_client.get(client, 0) - rows
                if left > 0:
                    self._by_client[client] = left
                else:
                    self._by_client.pop(client, None)
            depth = self._admitted
        self.observer.queue_depth(depth)

    def submit(self, job: Job, rows: Sequence[Sequence[int]]) -> None:
        """Queue the token rows of an admitted job (any thread). A job its caller left is let go here."""
        assert len(rows) == job.rows, f"job of {job.rows} rows submitted with {len(rows)}"
        now = time.monotonic()
        with self._cond:
            if job.cancelled or job.settled:
                if job.cancelled:
                    self.observer.dropped("cancelled", job.rows)
                self._release([job] * job.rows)
                return
            items = []
            for index, ids in enumerate(rows):
                self._arrivals += 1
                items.append(WorkItem(ids, job, index, now, seq=self._arrivals))
            self._waiting.extend(items)
            if self._engine_idle and self.policy.max_wait_ms <= 0:
                self._engine_cond.notify()
            else:
                self._cond.notify()

    def withdraw(self, job: Job, error: ScoringError | None = None) -> None:
        """Let go of an admitted job whose rows will never be submitted (its caller left, its deadline
        passed or tokenizing failed): its slots are free, and `error`, if given, is its answer."""
        self._release([job] * job.rows)
        if error is not None:
            _settle([(job, error)])

    def abandon(self, job: Job) -> None:
        """The caller stops waiting for `job` (client gone, deadline passed): its queued rows leave the
        queue now, so that their slots are free for the next request rather than at the next batch; rows
        not yet submitted are let go when they are. Rows already taken by the engine are left to it.
        Called on the job's event loop."""
        job.cancelled = True
        with self._cond:
            removed = [item for item in self._waiting if item.job is job]
            if self._prepared is not None and any(item.job is job for item in self._prepared[0]):
                removed += [item for item in self._prepared[0] if item.job is job]
                # The prepared batch is formed again from what remains, as when newcomers arrive.
                self._waiting.extend(item for item in self._prepared[0] if item.job is not job)
                self._prepared = None
            if not removed:
                return
            self._waiting[:] = [item for item in self._waiting if item.job is not job]
            expired = job.deadline is not None and time.monotonic() >= job.deadline - 1e-3
            self.observer.dropped("expired" if expired else "cancelled", len(removed))
            self._release(item.job for item in removed)
            self._wake_all()

    def _collect_loop(self) -> None:
        """Keep one batch prepared for the engine; while the engine is busy, top it up with new rows."""
        formed_at = -1  # self._arrivals when the prepared batch was last formed
        with self._cond:
            while True:
                if self._stopping and not self._waiting and self._prepared is None:
                    self._wake_all()
                    return
                fresh = self._prepared is None or self._arrivals != formed_at
                if self._waiting and fresh and (self._prepared is None or self._worth_reforming_locked()):
                    if self._prepared is None:
                        self._wait_to_fill_locked()
                    else:  # give the prepared rows back to the pool and choose again with the newcomers
                        self._waiting.extend(self._prepared[0])
                        self._prepared = None
                    self._drop_dead_locked()
                    if self._waiting:
                        anchor = self._turns.anchor(self._waiting)
                        items = collate(self._waiting, self.policy, anchor)
                        self._prepared = (items, self._pad([item.ids for item in items]))
                        self._prepared_for = anchor.job.client
                        formed_at = self._arrivals
                        self._engine_cond.notify_all()
                    continue
                self._cond.wait()

    def _worth_reforming_locked(self) -> bool:
        """Newcomers may change the prepared batch: when it has room for them, or when one of them belongs to
        a client whose turn comes before that of the client the batch was formed for (a full batch of a
        flooding client's rows must not keep another client's row waiting for one more batch)."""
        assert self._prepared is not None
        if len(self._prepared[0]) < self.policy.max_batch_size:
            return True
        return self._turns.prefers(self._turns.anchor(self._waiting).job.client, self._prepared_for)

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
        self._waiting[:] = self._without_dead(self._waiting, queued=True)

    def _without_dead(self, items: list[WorkItem], queued: bool) -> list[WorkItem]:
        """Items still worth scoring; the others are counted, their slots freed (when still `queued`)
        and, if someone still waits, their request answered."""
        now = time.monotonic()
        alive: list[WorkItem] = []
        failed, dead = [], []
        for item in items:
            job = item.job
            if job.expired(now):  # checked first: a deadline also cancels
                self.observer.dropped("expired")
                if not job.settled and not job.cancelled:
                    job.settled = True
                    failed.append((job, ScoringError(ErrorKind.TIMEOUT, "deadline passed before the row was scored")))
                dead.append(job)
            elif item.abandoned():
                self.observer.dropped("cancelled")
                dead.append(job)
            else:
                alive.append(item)
        if dead and queued:
            self._release(dead)
        _settle(failed)
        return alive

    def _take_prepared(self) -> tuple[list[WorkItem], Batch] | None:
        """The next batch for the engine: the prepared one, or, when the engine finds rows waiting and
        nothing prepared, one it forms itself (saving a thread hop on an idle service). Its rows leave
        the admission count."""
        with self._cond:
            while self._prepared is None:
                if self._waiting and self.policy.max_wait_ms <= 0:
                    self._drop_dead_locked()
                    if self._waiting:
                        anchor = self._turns.anchor(self._waiting)
                        items = collate(self._waiting, self.policy, anchor)
                        self._turns.served(anchor.job.client)
                        self._release(item.job for item in items)
                        if self._waiting:
                            self._cond.notify()  # the rest is prepared while this batch runs
                        return items, self._pad([item.ids for item in items])
                    continue
                if self._stopping and not self._waiting:
                    return None
                self._engine_idle = True
                self._engine_cond.wait()
                self._engine_idle = False
            taken, self._prepared = self._prepared, None
            self._turns.served(self._prepared_for)
            self._release(item.job for item in taken[0])
            self._cond.notify_all()  # the collector prepares the next one
            return taken

    def _inference_loop(self) -> None:
        while True:
            taken = self._take_prepared()
            if taken is None:
                return
            items, batch = taken
            alive = self._without_dead(items, queued=False)  # a client may have left while its row was prepared
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
            except BaseException:  # the engine failed (whatever it raised, a native library's panic
                # too): every request in the batch gets the error, none is lost, and the thread goes on
                error = internal_error(log, f"inference failed for a batch of {len(items)} rows")
                failed = {id(item.job): item.job for item in items if not item.job.settled}
                for job in failed.values():
                    job.settled = True
                _settle([(job, error) for job in failed.values()])
                continue
            seconds = time.perf_counter() - began
            self.observer.batch(batch, seconds, waited)
            self.observer.scored(batch, rewards)
            _settle(_record(items, rewards, waited, seconds))

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, then stop both threads."""
        with self._cond:
            self._stopping = True
            self._wake_all()
        for thread in self._threads:
            thread.join(timeout)


def _record(items: list[WorkItem], rewards: np.ndarray, waited: list[float],
            seconds: float) -> list[tuple[Job, None]]:
    """Write one batch's rewards and timings into the jobs it served; returns the jobs it completed."""
    counted: set[int] = set()
    done = []
    for item, reward, wait in zip(items, rewards.tolist(), waited, strict=True):
        job = item.job
        job.rewards[item.index] = reward
        job.queue_seconds = max(job.queue_seconds, wait)
        if id(job) not in counted:
            counted.add(id(job))
            job.inference_seconds += seconds
        job.remaining -= 1
        if job.remaining == 0 and not job.settled:
            job.settled = True
            done.append((job, None))
    return done


def _settle(answers: Sequence[tuple[Job, ScoringError | None]]) -> None:
    """Answer jobs on their event loops: one wake-up per loop for all of them."""
    by_loop: dict[int, list[tuple[Job, ScoringError | None]]] = {}
    for answer in answers:
        by_loop.setdefault(id(answer[0].loop), []).append(answer)
    for group in by_loop.values():
        try:
            group[0][0].loop.call_soon_threadsafe(_resolve_all, group)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve_all(answers: list[tuple[Job, ScoringError | None]]) -> None:
    for job, error in answers:
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(job.rewards)


class BatchObserver:
    """Hooks for metrics; the default does nothing (tests and benchmarks may count with it)."""

    def batch(self, batch: Batch, seconds: float, queue_seconds: list[float]) -> None: ...

    def scored(self, batch: Batch, rewards: np.ndarray) -> None:
        """The rewards of a batch that ran, before its requests are answered."""

    def dropped(self, reason: str, count: int = 1) -> None: ...

    def rejected(self, rows: int) -> None: ...

    def queue_depth(self, rows: int) -> None: ...
