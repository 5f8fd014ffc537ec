"""Prometheus metrics of the service (prefix rmserve_), in one registry per server instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from service.batcher import BatchObserver
from service.inputs import Batch

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


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
        self.dropped = Counter("rmserve_dropped_rows", "Rows dropped before inference, by reason.", ["reason"],
                               registry=r)
        self.rejected = Counter("rmserve_rejected_rows", "Rows refused because the queue was full.", registry=r)
        self.non_finite = Counter("rmserve_non_finite_rewards", "Rewards that came out NaN or infinite.", registry=r)
        self.ready = Gauge("rmserve_ready", "1 when the bundle is loaded and verified.", registry=r)
        self.model_info = Info("rmserve_model", "The bundle being served.", registry=r)


class MetricsObserver(BatchObserver):
    """Feeds the batcher's events into the Prometheus metrics."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

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
