"""The scoring core: the one place where requests become rewards, whatever the transport.

Validates rows, admits them to the one batcher that every request shares (refused at once when the queue,
or the sending client's share of it, is full, before any tokenizing), has them rendered and tokenized off the event loop by the tokenizer
threads (service/core/tokenizing.py) and waits for their rewards; turns raw rewards into normalized rewards
and preference probabilities with the bundle's constants. Transports are thin adapters over `Scorer`.

A process reward model's bundle scores every step (service/core/step_scores.py): a row's steps are given
(`Row.steps`) or split from its response on the bundle's separator, its `Scores` carry the step rewards,
and its raw reward is their aggregate (the request's, else the bundle's default), which normalization,
group statistics and comparisons use as an outcome model's reward. Rows with steps, or an aggregate, sent
to an outcome bundle are a validation error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from rmserve.group_stats import ValueKind
from rmserve.service.core.batcher import Batcher, BatchPolicy, Job
from rmserve.service.core.bundle import Bundle, BundleError, load_bundle
from rmserve.service.core.engine import CUDA, OnnxRewardModel, check_golden
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.groups import RewardSummary, summarize
from rmserve.service.core.inputs import Batch, EncodedInput, InputEncoder, Prompt
from rmserve.service.core.limits import check_rows, effective_deadline, prompt_field, request_client
from rmserve.service.core.metrics import Metrics, MetricsObserver
from rmserve.service.core.step_scores import activate, aggregate_all, step_text
from rmserve.service.core.tokenizing import Tokenizing
from rmserve.service.core.verification import Checked, check_all, combine_all, load_verifiers
from rmserve.service.core.verifiers import Reference
from rmserve.service.settings import Settings

log = logging.getLogger("rmserve.scoring")
T = TypeVar("T")


class Row(NamedTuple):  # a tuple: built for every response of every request, so it must be cheap
    prompt: Prompt
    response: str  # with `steps`: the steps joined by newlines (what verifiers read)
    field: str  # names the response (or its steps) in the request, for error messages
    steps: tuple[str, ...] | None = None  # a response given as steps (process reward models only)


@dataclass(frozen=True)
class Scores:
    raw: np.ndarray
    truncated: list[bool]
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0  # longest wait of this request's rows before their batch ran
    inference_seconds: float = 0.0  # engine time of the batches this request's rows ran in
    step_rewards: list[np.ndarray] | None = None  # a PRM bundle: per row, the rewards of its scored steps
    steps_cut: list[int] | None = None  # a PRM bundle: per row, the first steps truncation cut away
    aggregate: str | None = None  # a PRM bundle: how `raw` was made from the step rewards


def warm_up(engine: OnnxRewardModel, max_length: int, pad_id: int, policy: BatchPolicy) -> None:
    """Run one batch of the costliest shape the batcher can form (longest rows, as many as the token budget
    allows: attention grows with length squared), so that ONNX Runtime's memory pool reaches its working
    size before traffic. Without it the pool grows in steps as new shapes arrive, and the process's memory
    kept rising for minutes under load (bench/soak.py)."""
    length = max(1, min(max_length, policy.max_batch_tokens))
    rows = max(1, min(policy.max_batch_size, policy.max_batch_tokens // length))
    ids = np.full((rows, length), pad_id, dtype=np.int64)
    engine(Batch(input_ids=ids, attention_mask=np.ones_like(ids)))


def tokenizer_threads(configured: int = 0) -> int:
    """Threads that tokenize: `configured`, or one per core this process may run on beyond the one the
    event loop needs, at least 1 and at most 4. The fast tokenizer's batch call releases the GIL, so they
    run beside the event loop; more threads than free cores only take turns with the loop and add
    hand-overs (bench/overhead.py on 2 cores: one thread served 6-20 % more than two at every request
    size)."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores - 1))


class ProviderBatching(NamedTuple):
    """The batching defaults that depend on where the model runs."""

    max_batch_tokens: int
    max_padding_ratio: float


# A batch of two rows may carry this many times max_padding_ratio: one row alone is the costliest shape per
# token, so pairing it pays for more padding than adding a third or fourth row does.
PAIR_PADDING_FACTOR = 3.0


def provider_batching(provider: str) -> ProviderBatching:
    """Measured on the CPU (docs/benchmarks.md, 2026-11-30): a padded token costs a real one's compute, so
    batches stay nearly pad-free; a row alone costs ~12 % more per token than two rows together, so a pair may
    carry three times the padding; and past ~1,024 tokens a batch runs slower per token (16 rows of 256
    tokens: 88 µs a token, against 78 for 4 rows). On a GPU rows run in parallel, so a fuller batch is worth
    more padding and more tokens."""
    if provider == CUDA:
        return ProviderBatching(max_batch_tokens=4096, max_padding_ratio=0.2)
    return ProviderBatching(max_batch_tokens=1024, max_padding_ratio=0.02)


def batch_policy(settings: Settings, provider: str) -> BatchPolicy:
    """The batcher's limits: the settings, with what they leave unset chosen for `provider`."""
    defaults = provider_batching(provider)
    padding = settings.max_padding_ratio or defaults.max_padding_ratio
    return BatchPolicy(
        max_batch_tokens=settings.max_batch_tokens or defaults.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_rows=settings.max_queue_rows,
        max_padding_ratio=padding,
        max_pair_padding_ratio=min(1.0, padding * PAIR_PADDING_FACTOR),
        max_client_rows=settings.client_queue_rows,
    )


class Scorer:
    def __init__(self, bundle: Bundle, engine: OnnxRewardModel, settings: Settings, metrics: Metrics):
        self.verifiers = load_verifiers(settings.verifiers_config)  # re-read with every bundle (re)load
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = engine
        self.encoder: InputEncoder = bundle.encoder()
        self.settings = settings
        self.metrics = metrics
        self.active_calls = 0  # score() calls under way: a retiring scorer (reload, shutdown) waits for 0
        self.steps = bundle.manifest.steps  # set for a process reward model
        self.batcher = Batcher(
            run=engine,
            pad=self.encoder.pad,
            policy=batch_policy(settings, engine.provider),
            observer=MetricsObserver(metrics, self.normalize, None if self.steps is None else self._default_rewards),
            row_dtype=np.float32 if self.steps is None else object,
        )
        # Tokenizing is CPU work too: keep it off the event loop, on threads of its own.
        self.tokenizing = Tokenizing(self.encoder.encode, self.batcher, tokenizer_threads(settings.tokenizer_threads),
                                     self._tokenized)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics, within: Path | None = None) -> Scorer:
        """Load and verify the bundle, start the engine on exactly the bytes that were verified, and prove it
        with the golden set. `within`: the bundle must lie inside this directory (reloads' bundle_root)."""
        bundle = load_bundle(settings.bundle, pin_model=True, within=within)
        pinned = bundle.pinned
        assert pinned is not None
        try:
            engine = OnnxRewardModel.for_bundle(bundle, settings.device, settings.intra_op_threads,
                                                settings.inference_nice)
            changed = pinned.changed()
            if changed is not None:
                raise BundleError(f"{changed} changed while the bundle was loading; load it again once it is complete")
        finally:
            pinned.release()
        worst = check_golden(bundle, engine, bundle.encoder())
        policy = batch_policy(settings, engine.provider)
        warm_up(engine, bundle.manifest.input.max_length, bundle.manifest.input.pad_id, policy)
        scorer = cls(bundle, engine, settings, metrics)
        log.info("bundle %s loaded from %r; golden set reproduced within %.1e on %s; batches ≤%d rows, "
                 "≤%d tokens, padding ≤%.0f%% (≤%.0f%% for two rows)", bundle.manifest.bundle_id, str(bundle.path),
                 worst, engine.provider, policy.max_batch_size, policy.max_batch_tokens,
                 100 * policy.max_padding_ratio, 100 * policy.padding_allowed(2))
        return scorer

    def publish_model_info(self) -> None:
        """Make `rmserve_model_info` name this scorer's bundle: called when it goes live (start-up, reload)."""
        m = self.manifest
        self.metrics.model_info.info({"bundle_id": m.bundle_id, "model_sha256": m.model_sha256,
                                      "provider": self.engine.provider, "max_length": str(m.input.max_length)})

    def close(self) -> None:
        """Score what is queued, then stop the threads."""
        self.tokenizing.close()
        self.batcher.close()

    def validate(self, rows: Sequence[Row], aggregate: str | None = None) -> list[str]:
        """The text the model reads for each row; a validation error names the first bad field."""
        limit = self.settings.max_responses_per_request
        if len(rows) > limit:
            field = rows[0].field.split(".")[0] if rows else "responses"
            raise ScoringError(ErrorKind.VALIDATION, f"{len(rows)} responses in one request; the limit is {limit} "
                               "(max_responses_per_request)", field)
        if self.steps is None:
            stepped = next((row for row in rows if row.steps is not None), None)
            if stepped is not None or aggregate is not None:
                raise ScoringError(ErrorKind.VALIDATION, "this bundle is an outcome reward model: it scores whole "
                                   "responses, so it has no step rewards (send 'response'/'responses', no "
                                   "'steps' or 'aggregate'; step rewards need a process reward model bundle)",
                                   stepped.field if stepped is not None else "aggregate")
        for row in rows:
            if row.steps is None and not row.response.strip():
                raise ScoringError(ErrorKind.VALIDATION, "response is empty or whitespace only", row.field)
        check_rows(rows, self.settings)
        separator = self.manifest.input.step_separator
        if separator is None:
            return [row.response for row in rows]
        return [step_text(row.prompt, row.response, row.steps, separator, row.field, prompt_field(row.field))
                for row in rows]

    async def score(self, rows: Sequence[Row], deadline: float | None = None, aggregate: str | None = None) -> Scores:
        """Rewards of `rows`, batched with whatever else is waiting. `deadline` is a time.monotonic();
        without one, the HTTP request's or the server's default (service/core/limits.py). `aggregate`: a
        PRM bundle's aggregate of step rewards (None: the bundle's default)."""
        self.active_calls += 1
        try:
            return await self._score(rows, effective_deadline(deadline, self.settings), aggregate)
        finally:
            self.active_calls -= 1

    async def _score(self, rows: Sequence[Row], deadline: float | None, aggregate: str | None = None) -> Scores:
        texts = self.validate(rows, aggregate)
        if deadline is not None and time.monotonic() >= deadline:
            self.batcher.observer.dropped("expired", len(rows))
            raise ScoringError(ErrorKind.TIMEOUT, "deadline passed before the request was queued")
        # An overloaded service, or a client over its share of the queue, is answered before tokenizing.
        job = self.batcher.admit(len(rows), deadline, request_client.get())
        # A row the model's chat template refuses answers its request with a validation error naming its prompt;
        # a PRM row whose steps the tokenizer does not read apart is refused before inference.
        check = None if self.steps is None else lambda encoded: self._check_step_count(rows, texts, encoded)
        self.tokenizing.submit(job, [(row.prompt, text) for row, text in zip(rows, texts)],
                               lambda i: prompt_field(rows[i].field), check)
        try:
            raw = await _until(deadline, job.future)
        except BaseException:
            # A departed client's rows are dropped before inference (untokenized if they still wait for
            # it), and their queue slots are free at once.
            job.cancelled = True
            if not self.tokenizing.cancel(job):
                self.batcher.abandon(job)
            raise
        steps: dict = {}
        if self.steps is not None:
            how = aggregate or self.steps.aggregate
            step_rewards = [activate(row, self.steps.activation) for row in raw]
            raw = aggregate_all(step_rewards, how)
            steps = {"step_rewards": step_rewards, "steps_cut": [e.steps_cut for e in job.encoded], "aggregate": how}
        # Reward metrics were recorded per batch (MetricsObserver.scored); a non-finite reward fails the request.
        if not np.isfinite(raw).all():
            raise ScoringError(ErrorKind.INTERNAL, "the model produced a non-finite reward")
        return Scores(raw=raw, truncated=[e.truncated for e in job.encoded], tokenize_seconds=job.tokenize_seconds,
                      queue_seconds=job.queue_seconds, inference_seconds=job.inference_seconds, **steps)

    def _check_step_count(self, rows: Sequence[Row], texts: Sequence[str], encoded: Sequence[EncodedInput]) -> None:
        """Each step sent must be one the row holds (`InputEncoder.steps_read`, as training checks its chains),
        or its score would belong to another step: the request is refused naming the response."""
        separator = self.manifest.input.step_separator
        assert separator is not None
        for row, text, e in zip(rows, texts, encoded, strict=True):
            sent, read = text.count(separator), self.encoder.steps_read(e)
            if read != sent:
                raise ScoringError(ErrorKind.VALIDATION, f"{sent} steps sent, but this bundle's tokenizer reads {read} "
                                   f"step separators: {separator!r} merges with the text beside it (end each step "
                                   "with a space or punctuation)", row.field)

    def _default_rewards(self, step_scores: np.ndarray) -> np.ndarray:
        """A PRM batch's rows as rewards for the reward metrics: the bundle's default aggregate."""
        assert self.steps is not None
        return aggregate_all([activate(row, self.steps.activation) for row in step_scores], self.steps.aggregate)

    def _tokenized(self, job: Job) -> None:
        """Tokenizer-thread metrics of one request."""
        self.metrics.tokenize_duration.observe(job.tokenize_seconds)
        self.metrics.truncations.inc(sum(e.truncated for e in job.encoded))

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        stats = self.manifest.normalization
        return (raw.astype(np.float64) - stats.mean) / stats.std

    def summarize(self, scores: Scores, values: ValueKind = "raw", grouped: bool = False,
                  checked: Checked | None = None) -> RewardSummary:
        """Normalized rewards, group statistics (for one prompt's responses), the verifiers' combination
        (with `checked`, from `check`) and the values a request asked for: computed here once, whatever the
        transport."""
        normalized = self.normalize(scores.raw)
        verification = None
        if checked is not None and self.verifiers is not None:
            verification = combine_all(self.verifiers, checked, normalized if values == "normalized" else scores.raw)
        return summarize(scores.raw, normalized, values, grouped, verification)

    async def check(self, rows: Sequence[Row], references: Sequence[Reference] | None = None,
                    names: list[str] | None = None) -> Checked | None:
        """The configured verifiers' results for every row, before scoring (None when none are configured);
        a missing reference or an unknown verifier name is a validation error naming its field. With
        verifiers, off the event loop: a check can take seconds (jsonschema's uniqueItems compares every
        pair of a long array's items), and the loop keeps answering other requests meanwhile."""
        responses, fields = [row.response for row in rows], [row.field for row in rows]
        if self.verifiers is None:
            return check_all(None, responses, fields, references, names)
        self.active_calls += 1  # a reload must not retire this scorer while the request it serves is checked
        try:
            return await asyncio.to_thread(check_all, self.verifiers, responses, fields, references, names)
        finally:
            self.active_calls -= 1

    def probability_a(self, reward_a: float, reward_b: float) -> float:
        z = (reward_a - reward_b) / self.manifest.calibration.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


async def _until(deadline: float | None, answer: asyncio.Future[T]) -> T:
    """The job's `answer`, or TIMEOUT when `deadline` passes first (its rows are then dropped by the caller).
    One timer that fails the future itself: `asyncio.wait_for` would add a second future and a loop turn
    to every request."""
    if deadline is None:
        return await answer
    timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), _expire, answer)
    try:
        return await answer
    finally:
        timer.cancel()


def _expire(answer: asyncio.Future) -> None:
    if not answer.done():
        answer.set_exception(ScoringError(ErrorKind.TIMEOUT, "deadline passed before the rows were scored"))
