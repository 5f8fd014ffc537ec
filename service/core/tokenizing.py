"""The tokenizer stage between admission and the batch queue: a few threads that turn admitted requests'
texts into token rows and hand them to the batcher.

Requests wait here in arrival order and are already counted against the queue (`Batcher.admit`), so an
overloaded service refuses them before any tokenizing. Each thread takes the oldest waiting request and
as many of the following ones as fit in `max_rows` rows, and tokenizes them all in one encoder call: the
fast tokenizer's batch call releases the GIL, so the threads run in parallel with each other and with the
event loop, and one call (one hand-over between threads) serves many small requests. A large request
keeps one thread busy while the others serve the requests behind it. Requests whose caller left or whose
deadline passed while they waited are let go untokenized.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from rmserve.service.core.batcher import Batcher, Job
from rmserve.service.core.errors import ErrorKind, ScoringError, internal_error
from rmserve.service.core.inputs import EncodedInput, Prompt, RowError

log = logging.getLogger("rmserve.tokenizing")

Encode = Callable[[Sequence[tuple[Prompt, str]]], list[EncodedInput]]
NameRow = Callable[[int], str]  # the request field of row i's prompt, for a refusal naming it
# A request's own check of its encoded rows, before they reach the batcher; it raises ScoringError to refuse.
CheckRows = Callable[[Sequence[EncodedInput]], None]


class Hooks(NamedTuple):
    """What a request brings to this stage besides its rows."""

    name_row: NameRow | None = None
    check: CheckRows | None = None


NO_HOOKS = Hooks()


class Tokenizing:
    """`threads` tokenizer threads feeding `batcher`; `tokenized(job)` is called for each request once its
    rows are encoded (`job.encoded`, `job.tokenize_seconds`: the time of the call that held them)."""

    def __init__(self, encode: Encode, batcher: Batcher, threads: int,
                 tokenized: Callable[[Job], None] = lambda job: None, max_rows: int = 256):
        self._encode = encode
        self._batcher = batcher
        self._max_rows = max_rows
        self._tokenized = tokenized
        self._inbox: list[tuple[Job, Sequence[tuple[Prompt, str]]]] = []  # submitted, not yet handed over
        self._hooks: dict[int, Hooks] = {}  # id(job) -> its hooks, while it is here
        self._inbox_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: deque[tuple[Job, Sequence[tuple[Prompt, str]]]] = deque()
        self._idle = 0  # threads waiting for work: only then does `submit` need to wake one
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"rmserve-tokenize-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job, rows: Sequence[tuple[Prompt, str]], name_row: NameRow | None = None,
               check: CheckRows | None = None) -> None:
        """Queue an admitted job's (prompt, response) rows for tokenizing. Called on the job's event loop;
        the jobs submitted in one turn of the loop reach the threads together, at its end, with one
        wake-up (waking a thread costs the loop more than the bookkeeping of a request). `name_row(i)`
        names row i's prompt field when the encoder refuses that row (a chat template's own error);
        `check(encoded)`, the request's own check of its tokenized rows, runs on the tokenizer thread before
        they reach the batcher, and a ScoringError it raises answers the request without inference."""
        with self._inbox_lock:
            if name_row is not None or check is not None:
                self._hooks[id(job)] = Hooks(name_row, check)
            self._inbox.append((job, rows))
            if len(self._inbox) > 1:
                return  # a hand-over is already scheduled
        job.loop.call_soon(self._hand_over)

    @property
    def threads(self) -> int:
        return len(self._threads)

    def cancel(self, job: Job) -> bool:
        """Take a job whose caller left out of the waiting line, freeing its queue slots at once; False when
        it is no longer waiting here (being tokenized, or already handed to the batcher)."""
        with self._inbox_lock:
            found = [entry for entry in self._inbox if entry[0] is job]
            self._inbox[:] = [entry for entry in self._inbox if entry[0] is not job]
        if not found:
            with self._cond:
                found = [entry for entry in self._pending if entry[0] is job]
                if found:
                    self._pending.remove(found[0])
        if not found:
            return False
        self._hooks.pop(id(job), None)
        self._batcher.observer.dropped("cancelled", job.rows)
        self._batcher.withdraw(job)
        return True

    def _refuse_row(self, jobs: list[tuple[Job, Sequence[tuple[Prompt, str]]]], error: RowError) -> None:
        """Answer the request that holds the refused row with a validation error naming its prompt, and
        tokenize the other requests of the call again without it."""
        start = 0
        for index, (job, rows) in enumerate(jobs):
            if start <= error.row < start + len(rows):
                name_row = self._hooks.pop(id(job), NO_HOOKS).name_row
                field = name_row(error.row - start) if name_row is not None else None
                self._batcher.withdraw(job, ScoringError(ErrorKind.VALIDATION, str(error), field))
                rest = jobs[:index] + jobs[index + 1:]
                if rest:
                    self._tokenize(rest)
                return
            start += len(rows)
        raise AssertionError(f"row {error.row} is in none of the {len(jobs)} requests") from error

    def _hand_over(self) -> None:
        with self._inbox_lock:
            arrived = list(self._inbox)
            self._inbox.clear()
        with self._cond:
            if not self._stopping:
                self._pending.extend(arrived)
                if self._idle:
                    self._cond.notify()
                return
        # The threads have stopped (the scorer was retired, or the service is shutting down): nothing would
        # tokenize these, and their callers would wait for their deadline, or for ever without one.
        for job, _ in arrived:
            self._hooks.pop(id(job), None)
            self._batcher.withdraw(job, ScoringError(ErrorKind.UNAVAILABLE, "the service is shutting down; retry"))

    def _take(self) -> list[tuple[Job, Sequence[tuple[Prompt, str]]]] | None:
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            taken = [self._pending.popleft()]
            rows = len(taken[0][1])
            while self._pending and rows + len(self._pending[0][1]) <= self._max_rows:
                rows += len(self._pending[0][1])
                taken.append(self._pending.popleft())
            if self._pending and self._idle:
                self._cond.notify()  # more work than this thread took: wake another
            return taken

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job, rows in taken:
                if job.cancelled or job.expired(now):
                    self._hooks.pop(id(job), None)
                if job.cancelled:
                    self._batcher.observer.dropped("cancelled", job.rows)
                    self._batcher.withdraw(job)
                elif job.expired(now):
                    self._batcher.observer.dropped("expired", job.rows)
                    self._batcher.withdraw(job, ScoringError(ErrorKind.TIMEOUT, "deadline passed before the request "
                                                             "was tokenized"))
                else:
                    live.append((job, rows))
            if live:
                self._tokenize(live)

    def _tokenize(self, jobs: list[tuple[Job, Sequence[tuple[Prompt, str]]]]) -> None:
        began = time.perf_counter()
        try:
            encoded = self._encode([row for _, rows in jobs for row in rows])
        except RowError as e:  # one request's conversation was refused: it alone is answered, the rest go on
            self._refuse_row(jobs, e)
            return
        except BaseException:  # a tokenizer failure answers these requests; the stage keeps serving.
            # BaseException: a panic inside the Rust tokenizer reaches Python as pyo3's PanicException, which is
            # not an Exception; letting it through would end this thread with the requests' queue slots held.
            error = internal_error(log, f"tokenizing {len(jobs)} requests failed")
            for job, _ in jobs:
                self._hooks.pop(id(job), None)
                self._batcher.withdraw(job, error)
            return
        checks = [self._hooks.pop(id(job), NO_HOOKS).check for job, _ in jobs]
        seconds = time.perf_counter() - began
        start = 0
        for (job, rows), check in zip(jobs, checks):
            job.encoded = encoded[start:start + len(rows)]
            start += len(rows)
            job.tokenize_seconds = seconds
            self._tokenized(job)
            if check is not None:
                try:
                    check(job.encoded)
                except ScoringError as refused:  # refused before its rows take the engine's time
                    self._batcher.withdraw(job, refused)
                    continue
                except BaseException:
                    self._batcher.withdraw(job, internal_error(log, "checking a request's tokenized rows failed"))
                    continue
            self._batcher.submit(job, [e.ids for e in job.encoded])

    def close(self) -> None:
        """Tokenize what is waiting (submitted requests not yet handed over too), then stop the threads."""
        self._hand_over()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(30.0)
