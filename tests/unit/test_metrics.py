"""Reward-quality telemetry and per-request timings: what the metrics and timing headers are computed from."""

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from rmserve.service.core.batcher import Batcher, BatchObserver, BatchPolicy
from rmserve.service.core.metrics import Metrics, RewardWindow
from tests.unit.test_batcher import fake_engine, fake_pad


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_window_correlation_is_pearson_over_the_last_rows_only():
    rng = np.random.default_rng(0)
    window = RewardWindow(size=50)
    lengths = rng.integers(5, 200, size=130).astype(np.float64)
    rewards = 0.01 * lengths + rng.normal(size=130)
    for start in range(0, 130, 7):  # uneven chunks, wrapping around the ring several times
        window.add(lengths[start:start + 7], rewards[start:start + 7])
    assert window.rows() == 50
    assert window.correlation() == pytest.approx(np.corrcoef(lengths[-50:], rewards[-50:])[0, 1], abs=1e-12)


def test_window_larger_chunk_than_the_window_keeps_its_tail():
    window = RewardWindow(size=4)
    window.add(np.arange(10.0), np.array([0, 0, 0, 0, 0, 0, 1.0, 2.0, 3.0, 5.0]))
    assert window.rows() == 4
    assert window.correlation() == pytest.approx(np.corrcoef([6, 7, 8, 9], [1, 2, 3, 5])[0, 1])


def test_window_correlation_is_nan_until_defined():
    window = RewardWindow(size=8)
    assert np.isnan(window.correlation())
    window.add(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert np.isnan(window.correlation())  # two points always correlate perfectly: not informative
    window.add(np.array([5.0, 6.0]), np.array([1.0, 1.0]))
    assert not np.isnan(window.correlation())
    constant = RewardWindow(size=8)
    constant.add(np.array([7.0, 7.0, 7.0]), np.array([1.0, 2.0, 3.0]))
    assert np.isnan(constant.correlation())


def test_observe_rewards_counts_non_finite_and_keeps_them_out_of_distributions():
    metrics = Metrics()
    raw = np.array([1.0, np.nan, -2.0, np.inf], dtype=np.float32)
    bad = metrics.observe_rewards(raw, (raw - 0.5) / 2.0, np.array([10, 20, 30, 40]))
    assert bad == 2
    assert sample(metrics, "rmserve_non_finite_rewards_total") == 2
    assert sample(metrics, "rmserve_reward_count") == 2
    assert sample(metrics, "rmserve_reward_bucket", le="-2.0") == 1
    assert sample(metrics, "rmserve_reward_bucket", le="0.0") == 1
    assert sample(metrics, "rmserve_reward_bucket", le="1.0") == 2
    assert sample(metrics, "rmserve_normalized_reward_bucket", le="-1.0") == 1  # -1.25
    assert sample(metrics, "rmserve_normalized_reward_bucket", le="0.0") == 1  # 0.25 is above
    assert sample(metrics, "rmserve_reward_window_rows") == 2
    metrics.observe_rewards(np.array([4.0]), np.array([1.75]), np.array([50]))
    text = generate_latest(metrics.registry).decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["rmserve_reward_length_correlation"] == pytest.approx(np.corrcoef([10, 30, 50], [1.0, -2.0, 4.0])[0, 1])
    assert values["rmserve_normalized_reward_window_mean"] == pytest.approx(np.mean([0.25, -1.25, 1.75]))


def test_drop_reasons_and_in_flight_exist_before_anything_happens():
    metrics = Metrics()
    assert sample(metrics, "rmserve_dropped_rows_total", reason="expired") == 0
    assert sample(metrics, "rmserve_dropped_rows_total", reason="cancelled") == 0
    assert sample(metrics, "rmserve_in_flight_requests", protocol="http") == 0
    assert sample(metrics, "rmserve_in_flight_requests", protocol="grpc") == 0


class BatchLog(BatchObserver):
    def __init__(self):
        self.batches = []  # (first token of each row, engine seconds, queue seconds of each row)

    def batch(self, batch, seconds, queue_seconds):
        self.batches.append((batch.input_ids[:, 0].tolist(), seconds, list(queue_seconds)))


def test_request_timing_is_what_the_batcher_measured_for_that_request():
    gate, entered = threading.Event(), threading.Event()

    def engine(batch):
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        time.sleep(0.01)  # work, not synchronization: every batch lasts at least this (a lower bound below)
        return fake_engine(batch)

    log = BatchLog()
    # Two rows per batch: the three-row request spans two batches.
    batcher = Batcher(engine, fake_pad, BatchPolicy(max_batch_tokens=100, max_batch_size=2), log)
    requests = {"a": [[1]], "b": [[2], [3], [4]], "c": [[5]]}
    timings = {}

    def submit(name):
        timings[name] = job = batcher.admit(len(requests[name]))
        batcher.submit(job, requests[name])

    async def main():
        submit("a")
        assert await asyncio.to_thread(entered.wait, 30)  # a holds the engine at the gate
        submit("b")
        submit("c")
        await asyncio.sleep(0.05)  # not synchronization: b and c wait at least this long (a lower bound below)
        gate.set()
        return [r for name in requests for r in (await timings[name].future).tolist()]

    try:
        assert asyncio.run(main()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        batcher.close()
    for name, rows in requests.items():
        firsts = {row[0] for row in rows}
        mine = [(secs, [q for tok, q in zip(toks, waits) if tok in firsts])
                for toks, secs, waits in log.batches if firsts & set(toks)]
        assert timings[name].inference_seconds == pytest.approx(sum(secs for secs, _ in mine), abs=1e-12)
        assert timings[name].queue_seconds == max(q for _, waits in mine for q in waits)
    assert len([b for b in log.batches if {2, 3, 4} & set(b[0])]) == 2
    # Lower bounds only (no timed assertion): b and c waited behind the gated batch; b ran in two batches.
    assert timings["b"].queue_seconds >= 0.05 and timings["c"].queue_seconds >= 0.05
    assert timings["b"].inference_seconds >= 0.02
    # Queue time is measured when the batch starts, so it does not include the batch's own run.
    first_batch = log.batches[0]
    assert first_batch[0] == [1] and first_batch[2][0] < first_batch[1]  # old code: waited >= engine time
