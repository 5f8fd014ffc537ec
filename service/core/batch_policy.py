"""What the batch queue holds and how the next batch is chosen: a request's rows (`Job`, `WorkItem`), the
limits (`BatchPolicy`), the choice itself (`collate`, a plain function over a list, tested without threads)
and whose turn it is (`Turns`).

Fairness: every batch is built around one anchor row and grown with its neighbours by length. The anchor is
the oldest row of the client whose row anchored a batch least recently, so clients take turns: a client
with a few rows waiting is in the next batch however many rows a flooding client has queued, and no
client's rows starve. With one client (or none named) the anchor is simply the oldest row, as before.
(Admission, the other half of fairness, caps the rows one client may have waiting: `Batcher.admit`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Job:
    """The rows of one request, answered together through `future` (on the event loop that admitted
    them) with their rewards in row order. The timings are filled in before the future resolves:
    `queue_seconds` is the longest wait of its rows before their batch started, `inference_seconds` the
    engine time of the batches its rows ran in (each batch counted once), `tokenize_seconds` the time of
    the tokenizer calls that held its rows."""

    rows: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deadline: float | None = None  # time.monotonic() after which its rows are dropped
    client: str = ""  # who sent it (an API key's name, or a connection): rows count against its share
    dtype: type = np.float32  # of one row's result: object when the engine returns an array per row
    rewards: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    cancelled: bool = False  # the caller stopped waiting (set on its event loop)
    settled: bool = False  # an answer is on its way to the event loop
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    encoded: list = field(default_factory=list)  # the tokenizer's EncodedInput of each row

    def __post_init__(self) -> None:
        self.rewards = np.zeros(self.rows, dtype=self.dtype)
        self.remaining = self.rows

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass(eq=False)
class WorkItem:
    """One tokenized row waiting for a reward: row `index` of `job`."""

    ids: Sequence[int]
    job: Job
    index: int = 0
    enqueued: float = field(default_factory=time.monotonic)
    seq: int = 0

    @property
    def length(self) -> int:
        return len(self.ids)

    def abandoned(self) -> bool:
        return self.job.cancelled or self.job.settled  # a departed client, or a request already answered


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_tokens: int
    max_batch_size: int
    max_wait_ms: float = 0.0
    max_queue_rows: int = 1024
    max_padding_ratio: float = 1.0  # 1.0: no limit
    max_client_rows: int = 0  # rows one client may have admitted and not yet in the engine; 0: no limit
    # A batch of exactly two rows may carry this much padding (None: max_padding_ratio). One row alone is
    # the costliest shape per token, so pairing it pays for more padding than a third or fourth row does.
    max_pair_padding_ratio: float | None = None

    def padding_allowed(self, rows: int) -> float:
        """The share of a batch of `rows` rows that may be padding."""
        if rows == 2 and self.max_pair_padding_ratio is not None:
            return max(self.max_pair_padding_ratio, self.max_padding_ratio)
        return self.max_padding_ratio


class Turns:
    """When each client's row last anchored a batch; the client served least recently anchors the next."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._count = 0

    def anchor(self, waiting: list[WorkItem]) -> WorkItem:
        """The row to build the next batch around: the oldest row of the least recently served client."""
        firsts: dict[str, WorkItem] = {}
        for item in waiting:
            best = firsts.get(item.job.client)
            if best is None or item.seq < best.seq:
                firsts[item.job.client] = item
        if len(firsts) == 1:
            return next(iter(firsts.values()))
        if len(self._last) > 4 * len(firsts) + 1024:  # forget clients that left (one per connection without keys)
            self._last = {client: turn for client, turn in self._last.items() if client in firsts}
        return min(firsts.values(), key=lambda item: (self._last.get(item.job.client, -1), item.seq))

    def prefers(self, client: str, other: str) -> bool:
        """Whether `client`'s turn comes before `other`'s (it anchored a batch less recently)."""
        return self._last.get(client, -1) < self._last.get(other, -1)

    def served(self, client: str) -> None:
        """The engine took a batch anchored on `client`'s row."""
        self._count += 1
        self._last[client] = self._count


def collate(waiting: list[WorkItem], policy: BatchPolicy, anchor: WorkItem | None = None) -> list[WorkItem]:
    """Choose the next batch from `waiting` (removed from it); empty only when `waiting` is.

    Rows are sorted by length and a contiguous run around the anchor row (by default the oldest row;
    `Turns.anchor` chooses it between clients) is grown, one neighbour at a time (the one that adds least
    padding first), while the padded cost (longest row x rows) fits `max_batch_tokens` and padding stays
    within `policy.padding_allowed` of it. A single row longer than the budget still forms a batch of one, so
    every row is eventually served.
    """
    if not waiting:
        return []
    by_length = sorted(waiting, key=lambda item: (item.length, item.seq))
    oldest = anchor if anchor is not None else min(waiting, key=lambda item: item.seq)
    lo = hi = by_length.index(oldest)
    longest, real = oldest.length, oldest.length

    def fits(candidate: WorkItem) -> bool:
        rows = hi - lo + 2
        padded = max(longest, candidate.length) * rows
        return padded <= policy.max_batch_tokens and real + candidate.length >= (1 - policy.padding_allowed(rows)) * padded

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
