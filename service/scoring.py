"""The scoring core: the one place where requests become rewards, whatever the transport.

Validates rows, then renders, tokenizes, pads and runs them on a dedicated inference thread (so the event
loop never blocks), and turns raw rewards into normalized rewards and preference probabilities with the
bundle's constants. Transports (HTTP now) are thin adapters over `Scorer`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.bundle import Bundle, load_bundle
from service.engine import OnnxRewardModel, check_golden
from service.errors import ErrorKind, ScoringError
from service.inputs import InputEncoder, Prompt
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("rmserve.scoring")


@dataclass(frozen=True)
class Row:
    prompt: Prompt
    response: str
    field: str  # names the response in the request, for error messages


@dataclass(frozen=True)
class Scores:
    raw: np.ndarray
    truncated: list[bool]


class Scorer:
    def __init__(self, bundle: Bundle, engine: OnnxRewardModel, settings: Settings, metrics: Metrics):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = engine
        self.encoder: InputEncoder = bundle.encoder()
        self.settings = settings
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmserve-inference")

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Scorer:
        """Load and verify the bundle, start the engine, and prove it with the golden set."""
        bundle = load_bundle(settings.bundle)
        engine = OnnxRewardModel(str(bundle.model_path), settings.device, settings.intra_op_threads)
        scorer = cls(bundle, engine, settings, metrics)
        worst = check_golden(bundle, engine, scorer.encoder)
        log.info("bundle %s loaded from %s; golden set reproduced within %.1e on %s",
                 bundle.manifest.bundle_id, bundle.path, worst, engine.provider)
        metrics.model_info.info({
            "bundle_id": bundle.manifest.bundle_id, "model_sha256": bundle.manifest.model_sha256,
            "provider": engine.provider, "max_length": str(bundle.manifest.input.max_length),
        })
        return scorer

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def validate(self, rows: Sequence[Row]) -> None:
        limit = self.settings.max_responses_per_request
        if len(rows) > limit:
            raise ScoringError(ErrorKind.VALIDATION, f"{len(rows)} responses in one request; the limit is {limit}",
                               "responses")
        for row in rows:
            if not row.response.strip():
                raise ScoringError(ErrorKind.VALIDATION, "response is empty or whitespace only", row.field)

    async def score(self, rows: Sequence[Row]) -> Scores:
        self.validate(rows)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._score_now, list(rows))

    def _score_now(self, rows: list[Row]) -> Scores:
        encoded = self.encoder.encode([(row.prompt, row.response) for row in rows])
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        raw = np.zeros(len(rows), dtype=np.float32)
        size = self.settings.inference_batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            batch = self.encoder.pad([encoded[i] for i in chunk])
            began = time.perf_counter()
            raw[chunk] = self.engine(batch)
            self.metrics.inference_duration.observe(time.perf_counter() - began)
            self.metrics.batch_size.observe(len(chunk))
        if not np.all(np.isfinite(raw)):
            raise ScoringError(ErrorKind.INTERNAL, "the model produced a non-finite reward")
        self.metrics.scored.inc(len(rows))
        self.metrics.input_tokens.inc(sum(len(e.ids) for e in encoded))
        truncated = [e.truncated for e in encoded]
        self.metrics.truncations.inc(sum(truncated))
        return Scores(raw=raw, truncated=truncated)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        stats = self.manifest.normalization
        return (raw.astype(np.float64) - stats.mean) / stats.std

    def probability_a(self, reward_a: float, reward_b: float) -> float:
        z = (reward_a - reward_b) / self.manifest.calibration.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
