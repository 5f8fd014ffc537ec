"""Prometheus metrics of the service (prefix rmserve_), in one registry per server instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.ready = Gauge("rmserve_ready", "1 when the bundle is loaded and verified.", registry=r)
        self.model_info = Info("rmserve_model", "The bundle being served.", registry=r)
