"""The batcher with a deterministic fake engine: batch invariants, admission, dropping, failures."""

import asyncio
import random
import threading
import time

import numpy as np
import pytest

from rmserve.service.core.batcher import Batcher, BatchObserver, BatchPolicy, Job, WorkItem, collate
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import Batch
from tests.waiting import wait_until


def fake_pad(rows):
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return Batch(ids, mask)


def fake_engine(batch):
    """Reward = sum of token ids: exact, and independent of padding and batch company."""
    return (batch.input_ids * batch.attention_mask).sum(axis=1).astype(np.float32)


class Recorder(BatchObserver):
    def __init__(self):
        self.batches, self.drops, self.rejections = [], {}, 0
        self.lock = threading.Lock()

    def batch(self, batch, seconds, queue_seconds):
        with self.lock:
            self.batches.append(batch.attention_mask.copy())

    def dropped(self, reason, count=1):
        with self.lock:
            self.drops[reason] = self.drops.get(reason, 0) + count

    def rejected(self, rows):
        self.rejections += rows


def item(length, seq):
    return WorkItem(ids=[1] * length, job=None, seq=seq)  # type: ignore[arg-type]


def submit(batcher: Batcher, rows, deadline=None) -> Job:
    """Admit a request's token rows and queue them at once (as the tokenizer threads do once they are
    tokenized); on the event loop."""
    job = batcher.admit(len(rows), deadline)
    batcher.submit(job, rows)
    return job


async def rewards(job: Job) -> list[float]:
    return (await job.future).tolist()


POLICY = BatchPolicy(max_batch_tokens=40, max_batch_size=4)


class GatedEngine:
    """The fake engine held at a gate until the test opens it; `entered` is set once a batch waits there,
    and `seen` records each row it ran (first token)."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[int] = []

    def __call__(self, batch):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.seen.extend(batch.input_ids[:, 0].tolist())
        return fake_engine(batch)


async def until_held(engine: GatedEngine) -> None:
    """Wait (off the event loop) until the engine holds a batch at its gate."""
    assert await asyncio.to_thread(engine.entered.wait, 30), "no batch reached the engine"


def test_collate_empty():
    assert collate([], POLICY) == []


def test_collate_respects_size_and_token_budget_and_removes_what_it_takes():
    rng = random.Random(0)
    waiting = [item(rng.randint(1, 20), seq) for seq in range(50)]
    taken = 0
    while waiting:
        before = len(waiting)
        batch = collate(waiting, POLICY)
        assert 1 <= len(batch) <= POLICY.max_batch_size
        assert len(batch) == 1 or max(i.length for i in batch) * len(batch) <= POLICY.max_batch_tokens
        assert len(waiting) == before - len(batch)
        taken += len(batch)
    assert taken == 50


def test_collate_always_serves_the_oldest_row():
    waiting = [item(30, 1)] + [item(2, seq) for seq in range(2, 20)]
    batch = collate(waiting, POLICY)
    assert [i.seq for i in batch] == [1]  # the long old row goes first, alone (30 x 2 > 40)
    batch = collate(waiting, POLICY)
    assert batch[0].length == 2 and len(batch) == 4


def test_collate_groups_similar_lengths():
    waiting = [item(length, seq) for seq, length in enumerate([5, 20, 6, 19, 5, 21, 6, 20])]
    batch = collate(waiting, BatchPolicy(max_batch_tokens=1000, max_batch_size=4))
    assert sorted(i.length for i in batch) == [5, 5, 6, 6]


def test_a_pair_may_carry_more_padding_than_a_larger_batch():
    # 100 + 95 tokens padded to 200: 2.5 % padding. Adding 90: 5 %.
    strict = BatchPolicy(max_batch_tokens=10_000, max_batch_size=8, max_padding_ratio=0.02)
    assert [i.length for i in collate([item(100, 1), item(95, 2), item(90, 3)], strict)] == [100]
    pairs = BatchPolicy(max_batch_tokens=10_000, max_batch_size=8, max_padding_ratio=0.02, max_pair_padding_ratio=0.06)
    assert sorted(i.length for i in collate([item(100, 1), item(95, 2), item(90, 3)], pairs)) == [95, 100]
    # Three rows within 2 % still form one batch, and a pair allowance below the cap does not lower it.
    assert len(collate([item(100, 1), item(99, 2), item(98, 3)], pairs)) == 3
    lower = BatchPolicy(max_batch_tokens=10_000, max_batch_size=8, max_padding_ratio=0.05, max_pair_padding_ratio=0.01)
    assert len(collate([item(100, 1), item(95, 2)], lower)) == 2


def test_over_budget_row_forms_a_batch_of_one():
    assert [i.length for i in collate([item(100, 1), item(100, 2)], POLICY)] == [100]


def run_async(coro):
    return asyncio.run(coro)


def test_every_row_gets_its_own_score_across_concurrent_requests():
    recorder = Recorder()
    batcher = Batcher(fake_engine, fake_pad, BatchPolicy(max_batch_tokens=64, max_batch_size=8), recorder)
    rng = random.Random(1)
    requests = [[[rng.randint(1, 9) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 5))] for _ in range(60)]

    async def one(rows):
        return await rewards(submit(batcher, rows))

    async def main():
        return await asyncio.gather(*(one(rows) for rows in requests))

    try:
        results = run_async(main())
    finally:
        batcher.close()
    for rows, scores in zip(requests, results):
        assert scores == [float(sum(r)) for r in rows]
    assert sum(len(m) for m in recorder.batches) == sum(len(r) for r in requests)
    assert any(len(m) > 1 for m in recorder.batches), "rows of different requests were never batched together"
    assert all(len(m) <= 8 for m in recorder.batches)


def test_full_queue_refuses_at_once_and_admitted_rows_still_finish():
    slow_engine = GatedEngine()
    gate = slow_engine.gate

    recorder = Recorder()
    batcher = Batcher(slow_engine, fake_pad, BatchPolicy(max_batch_tokens=8, max_batch_size=1, max_queue_rows=3), recorder)

    async def main():
        admitted = [submit(batcher, [[1, 2]]) for _ in range(3)]
        await until_held(slow_engine)  # the engine took one row out of the queue, freeing room for one
        more = []
        with pytest.raises(ScoringError) as info:
            for _ in range(10):
                more.append(submit(batcher, [[3]]))
        assert info.value.kind is ErrorKind.OVERLOADED and "queue full" in info.value.message
        gate.set()
        return [r for job in admitted + more for r in await rewards(job)]

    try:
        results = run_async(main())
    finally:
        batcher.close()
    assert results[:3] == [3.0, 3.0, 3.0] and all(r == 3.0 for r in results[3:])
    assert recorder.rejections == 1


def test_request_larger_than_the_queue_is_refused_whole():
    batcher = Batcher(fake_engine, fake_pad, BatchPolicy(max_batch_tokens=8, max_batch_size=1, max_queue_rows=2))

    async def main():
        with pytest.raises(ScoringError, match="request has 3"):
            batcher.admit(3)

    try:
        run_async(main())
    finally:
        batcher.close()


def test_cancelled_and_expired_rows_are_dropped_before_inference():
    engine = GatedEngine()
    gate, seen = engine.gate, engine.seen

    recorder = Recorder()
    batcher = Batcher(engine, fake_pad, BatchPolicy(max_batch_tokens=8, max_batch_size=1), recorder)

    async def main():
        first = submit(batcher, [[1]])  # occupies the engine
        await until_held(engine)
        prefetched = submit(batcher, [[2]])  # collected while the engine is busy
        await asyncio.to_thread(wait_until, lambda: batcher._prepared is not None, "the collector to prepare row 2")
        cancelled = submit(batcher, [[3]])
        expired = submit(batcher, [[4]], deadline=0.0)
        kept = submit(batcher, [[5]])
        cancelled.cancelled = True  # the caller left without taking its row out (as abandon would)
        gate.set()
        assert await rewards(first) == [1.0] and await rewards(prefetched) == [2.0] and await rewards(kept) == [5.0]
        with pytest.raises(ScoringError) as info:
            await expired.future
        assert info.value.kind is ErrorKind.TIMEOUT

    try:
        run_async(main())
    finally:
        batcher.close()
    assert 3 not in seen and 4 not in seen
    assert recorder.drops == {"cancelled": 1, "expired": 1}


@pytest.mark.parametrize("engine, message", [
    (lambda batch: (_ for _ in ()).throw(RuntimeError("device lost")), "device lost"),
    (lambda batch: np.zeros(len(batch.input_ids) + 1, np.float32), "batch size mismatch"),
])
def test_engine_failure_reaches_every_row_and_the_batcher_keeps_serving(engine, message, caplog):
    """Every row of the failed batch gets an INTERNAL error that names a log reference, not the engine's own
    text (ONNX Runtime's messages, an assertion): that goes to the log."""
    calls = []

    def flaky(batch):
        calls.append(1)
        return engine(batch) if len(calls) == 1 else fake_engine(batch)

    batcher = Batcher(flaky, fake_pad, BatchPolicy(max_batch_tokens=64, max_batch_size=8))

    async def main():
        failing = submit(batcher, [[1], [2]])
        with pytest.raises(ScoringError, match=r"inference failed .*the server log has the details \(reference") as info:
            await failing.future
        assert message not in info.value.message and "Error" not in info.value.message
        reference = info.value.message.rsplit(" ", 1)[-1].rstrip(")")
        return reference, await rewards(submit(batcher, [[7]]))

    try:
        reference, scored = run_async(main())
        assert scored == [7.0]
    finally:
        batcher.close()
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and message in logged[0].exc_text


def test_prepared_batch_is_topped_up_with_rows_that_arrive_while_the_engine_is_busy():
    engine = GatedEngine()
    gate = engine.gate
    recorder = Recorder()

    batcher = Batcher(engine, fake_pad, BatchPolicy(max_batch_tokens=1000, max_batch_size=8), recorder)

    async def main():
        jobs = [submit(batcher, [[1]])]
        await until_held(engine)
        for value in (2, 3, 4):  # arrive one by one while the first batch runs; each is prepared before the next
            jobs.append(submit(batcher, [[value]]))
            await asyncio.to_thread(wait_until, lambda v=value: batcher._prepared is not None and
                                    len(batcher._prepared[0]) == v - 1, f"row {value} to join the prepared batch")
        gate.set()
        return [r for job in jobs for r in await rewards(job)]

    try:
        assert run_async(main()) == [1.0, 2.0, 3.0, 4.0]
    finally:
        batcher.close()
    assert [len(mask) for mask in recorder.batches] == [1, 3]


def test_close_finishes_queued_work():
    batcher = Batcher(fake_engine, fake_pad, BatchPolicy(max_batch_tokens=8, max_batch_size=1))

    async def main():
        job = submit(batcher, [[1], [2], [3]])
        await asyncio.to_thread(batcher.close)
        with pytest.raises(ScoringError, match="shutting down"):
            batcher.admit(1)
        return await rewards(job)

    assert run_async(main()) == [1.0, 2.0, 3.0]


def test_collate_keeps_padding_within_the_ratio():
    rng = random.Random(3)
    policy = BatchPolicy(max_batch_tokens=4096, max_batch_size=32, max_padding_ratio=0.1)
    waiting = [item(rng.randint(10, 250), seq) for seq in range(200)]
    sizes = []
    while waiting:
        batch = collate(waiting, policy)
        padded = max(i.length for i in batch) * len(batch)
        assert sum(i.length for i in batch) >= 0.9 * padded
        sizes.append(len(batch))
    assert max(sizes) > 4, "similar lengths were not grouped"


def test_discarded_rows_free_their_queue_slots_at_once():
    engine = GatedEngine()
    gate, seen = engine.gate, engine.seen

    recorder = Recorder()
    batcher = Batcher(engine, fake_pad, BatchPolicy(max_batch_tokens=64, max_batch_size=4, max_queue_rows=4), recorder)

    async def main():
        busy = submit(batcher, [[1]])  # the engine holds this row
        await until_held(engine)
        leaving = submit(batcher, [[2], [3], [4]])  # prepared while the engine is busy
        deadline = time.monotonic() + 0.5
        late = submit(batcher, [[5]], deadline=deadline)
        await asyncio.to_thread(wait_until, lambda: batcher._prepared is not None and len(batcher._prepared[0]) == 4,
                                "rows 2-5 to be prepared behind the busy engine")
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # not synchronization: lets the deadline pass
        with pytest.raises(ScoringError, match="queue full"):
            batcher.admit(1)
        batcher.abandon(leaving)
        batcher.abandon(late)
        admitted = submit(batcher, [[7], [8], [9], [10]])  # room again before any batch ran
        gate.set()
        return await rewards(busy) + await rewards(admitted)

    try:
        results = run_async(main())
    finally:
        batcher.close()
    assert results == [1.0, 7.0, 8.0, 9.0, 10.0]
    assert not {2, 3, 4, 5} & set(seen)
    assert recorder.drops == {"cancelled": 3, "expired": 1}
