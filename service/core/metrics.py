"""Prometheus metrics of the service (prefix rmserve_), in one registry per server instance.

Serving metrics (requests, latencies, batches, queue) and reward-quality telemetry: the distribution of
raw and normalized rewards, non-finite outputs, and, over the last `REWARD_WINDOW_ROWS` scored rows, the
correlation between reward and input length (a reward model that starts paying for length shows it
here) and the mean normalized reward. Reward histograms have negative buckets, so they export no _sum
(it would not be a counter); drift is read from their buckets (median) or from the window mean.
deploy/prometheus and deploy/grafana use exactly these names (tests/integration/test_observability.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from rmserve.service.core.batcher import BatchObserver
from rmserve.service.core.inputs import Batch

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# Raw rewards have no fixed scale (it depends on the model); normalized ones are z-scores against the
# bundle's reference set, so their buckets are fixed and drift shows as a shifted mean.
REWARD_BUCKETS = (-20.0, -10.0, -5.0, -3.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
NORMALIZED_REWARD_BUCKETS = (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
REWARD_WINDOW_ROWS = 1024
DROP_REASONS = ("expired", "cancelled")


class RewardWindow:
    """The last `size` (input length, reward) pairs, for the reward–length correlation and mean gauges."""

    def __init__(self, size: int = REWARD_WINDOW_ROWS):
        self.size = size
        self._lengths = np.zeros(size, dtype=np.float64)
        self._rewards = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()  # scored on the event loop, read at scrape time

    def add(self, lengths: np.ndarray, rewards: np.ndarray) -> None:
        lengths, rewards = lengths[-self.size:], rewards[-self.size:]
        with self._lock:
            index = (self._next + np.arange(len(rewards))) % self.size
            self._lengths[index] = lengths
            self._rewards[index] = rewards
            self._next = (self._next + len(rewards)) % self.size
            self._filled = min(self.size, self._filled + len(rewards))

    def rows(self) -> int:
        return self._filled

    def mean(self) -> float:
        with self._lock:
            return float(self._rewards[: self._filled].mean()) if self._filled else float("nan")

    def correlation(self) -> float:
        """Pearson correlation of reward with length; NaN until it is defined (3 rows, both varying)."""
        with self._lock:
            lengths, rewards = self._lengths[: self._filled].copy(), self._rewards[: self._filled].copy()
        if len(rewards) < 3 or np.ptp(lengths) == 0 or np.ptp(rewards) == 0:
            return float("nan")
        return float(np.corrcoef(lengths, rewards)[0, 1])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rmserve_requests", "Requests by endpoint, protocol and outcome.",
            ["endpoint", "protocol", "outcome"], registry=r,
        )
        self.request_duration = Histogram(
            "rmserve_request_duration_seconds", "Time from request parsed to response ready.",
            ["endpoint", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            "rmserve_inference_duration_seconds", "ONNX Runtime time per batch.", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram("rmserve_batch_size", "Rows per inference batch.", buckets=BATCH_BUCKETS, registry=r)
        self.scored = Counter("rmserve_scored_rows", "Rows scored.", registry=r)
        self.input_tokens = Counter("rmserve_input_tokens", "Tokens fed to the model (without padding).", registry=r)
        self.truncations = Counter("rmserve_truncations", "Rows cut to fit max_length.", registry=r)
        self.tokenize_duration = Histogram(
            "rmserve_tokenize_duration_seconds", "Tokenization time per request.", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            "rmserve_queue_duration_seconds", "Time a row waits in the queue before its batch runs.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "rmserve_batch_tokens", "Padded tokens (longest row x rows) per batch.", buckets=TOKEN_BUCKETS, registry=r,
        )
        self.padding_ratio = Histogram(
            "rmserve_padding_ratio", "Share of a batch's padded tokens that are padding.", buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("rmserve_queue_depth", "Rows waiting for a batch.", registry=r)
        self.queue_capacity = Gauge("rmserve_queue_capacity_rows", "Rows that may wait before requests get 429 "
                                    "(the max_queue_rows setting).", registry=r)
        self.dropped = Counter("rmserve_dropped_rows", "Rows dropped before inference, by reason.", ["reason"],
                               registry=r)
        self.rejected = Counter("rmserve_rejected_rows", "Rows refused because the queue was full.", registry=r)
        self.non_finite = Counter("rmserve_non_finite_rewards", "Rewards that came out NaN or infinite.", registry=r)
        for reason in DROP_REASONS:  # exported at 0 from the start, so rates and alerts see a series
            self.dropped.labels(reason)
        self.in_flight = Gauge("rmserve_in_flight_requests", "Requests being handled now, by protocol.",
                               ["protocol"], registry=r)
        for protocol in ("http", "grpc"):
            self.in_flight.labels(protocol)
        self.ready = Gauge("rmserve_ready", "1 when the bundle is loaded and verified.", registry=r)
        self.model_info = Info("rmserve_model", "The bundle being served.", registry=r)
        self.reward = Histogram("rmserve_reward", "Raw reward per scored row (finite ones).",
                                buckets=REWARD_BUCKETS, registry=r)
        self.normalized_reward = Histogram(
            "rmserve_normalized_reward", "Normalized reward per scored row: z-score against the bundle's "
            "reference set, so a median far from 0 is drift.", buckets=NORMALIZED_REWARD_BUCKETS, registry=r,
        )
        # The window holds normalized rewards: their correlation with length is the raw one (a positive
        # affine map), and their mean is comparable across bundles.
        self.reward_window = RewardWindow()
        Gauge("rmserve_reward_length_correlation", "Pearson correlation of reward with input tokens over "
              f"the last {REWARD_WINDOW_ROWS} scored rows (NaN until defined).",
              registry=r).set_function(self.reward_window.correlation)
        Gauge("rmserve_normalized_reward_window_mean", "Mean normalized reward over the last "
              f"{REWARD_WINDOW_ROWS} scored rows: near 0 when traffic looks like the reference set.",
              registry=r).set_function(self.reward_window.mean)
        Gauge("rmserve_reward_window_rows", "Rows in the reward window.",
              registry=r).set_function(self.reward_window.rows)

    def observe_rewards(self, raw: np.ndarray, normalized: np.ndarray, lengths: np.ndarray) -> int:
        """Record scored rows; returns how many rewards were not finite (counted, kept out of the rest)."""
        finite = np.isfinite(raw)
        bad = int(len(raw) - np.count_nonzero(finite))
        if bad:
            self.non_finite.inc(bad)
        for value in raw[finite].tolist():
            self.reward.observe(value)
        for value in normalized[finite].tolist():
            self.normalized_reward.observe(value)
        self.reward_window.add(lengths[finite].astype(np.float64), normalized[finite].astype(np.float64))
        return bad


class MetricsObserver(BatchObserver):
    """Feeds the batcher's events into the Prometheus metrics: reward metrics once per batch, on the
    inference thread, rather than once per request on the event loop; `normalize` maps raw rewards to
    normalized ones (the bundle's reference stats)."""

    def __init__(self, metrics: Metrics, normalize: Callable[[np.ndarray], np.ndarray] = lambda raw: raw,
                 per_row: Callable[[np.ndarray], np.ndarray] | None = None):
        self.metrics = metrics
        self.normalize = normalize
        self.per_row = per_row  # a process reward model's step scores per row -> one reward per row

    def scored(self, batch: Batch, rewards: np.ndarray) -> None:
        m = self.metrics
        lengths = batch.attention_mask.sum(axis=1)
        m.scored.inc(len(rewards))
        m.input_tokens.inc(int(lengths.sum()))
        raw = np.asarray(rewards if self.per_row is None else self.per_row(rewards), dtype=np.float64)
        m.observe_rewards(raw, self.normalize(raw), lengths)

    def batch(self, batch: Batch, seconds: float, queue_seconds: list[float]) -> None:
        m = self.metrics
        m.inference_duration.observe(seconds)
        m.batch_size.observe(batch.input_ids.shape[0])
        m.batch_tokens.observe(batch.input_ids.size)
        m.padding_ratio.observe(batch.padding_ratio)
        for waited in queue_seconds:
            m.queue_duration.observe(waited)

    def dropped(self, reason: str, count: int = 1) -> None:
        self.metrics.dropped.labels(reason).inc(count)

    def rejected(self, rows: int) -> None:
        self.metrics.rejected.inc(rows)

    def queue_depth(self, rows: int) -> None:
        self.metrics.queue_depth.set(rows)
