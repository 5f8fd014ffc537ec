"""Admission counts rows before they are tokenized: a burst beyond the queue's capacity is refused at once,
while the tokenizer is busy, and never reaches the tokenizer. And the tokenizer threads: a big request does
not hold up small ones, and a request whose caller left is let go untokenized."""

import asyncio
import threading
import time

from rmserve.service.core.bundle import load_bundle
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import InputEncoder
from rmserve.service.core.metrics import Metrics
from rmserve.service.core.scoring import Row, Scorer
from rmserve.service.settings import Settings
from tests.waiting import wait_until


class GatedEncoder:
    """InputEncoder.encode held at a gate for the rows `holds` picks; counts every row it was given."""

    def __init__(self, holds=lambda rows: True):
        self.original = InputEncoder.encode
        self.gate = threading.Event()
        self.rows_seen = 0
        self.holding = 0
        self.holds = holds
        self.lock = threading.Lock()

    def __call__(self, encoder, rows):
        with self.lock:
            self.rows_seen += len(rows)
        if self.holds(rows):
            with self.lock:
                self.holding += 1
            assert self.gate.wait(30), "the test never opened the gate"
        return self.original(encoder, rows)


def make_scorer(tiny_bundle, monkeypatch, encoder: GatedEncoder, **settings) -> Scorer:
    monkeypatch.setattr(InputEncoder, "encode", lambda self, rows: encoder(self, rows))
    bundle = load_bundle(tiny_bundle)
    engine = OnnxRewardModel(str(bundle.model_path), "cpu")
    return Scorer(bundle, engine, Settings(bundle=tiny_bundle, device="cpu", **settings), Metrics())


def test_a_burst_beyond_capacity_is_refused_before_tokenizing(tiny_bundle, monkeypatch):
    encoder = GatedEncoder()
    scorer = make_scorer(tiny_bundle, monkeypatch, encoder, max_queue_rows=8)
    requests = 40  # of 2 rows each: 4 fit in the queue

    async def one(i: int) -> tuple[str, float]:
        began = time.perf_counter()
        try:
            await scorer.score([Row("a prompt", f"response {i}", "responses.0"), Row("a prompt", "more", "responses.1")])
            return "ok", time.perf_counter() - began
        except ScoringError as e:
            assert e.kind is ErrorKind.OVERLOADED
            return "refused", time.perf_counter() - began

    async def main():
        tasks = [asyncio.ensure_future(one(i)) for i in range(requests)]
        # The tokenizer holds the first requests it took at the gate: no row has been tokenized yet.
        await asyncio.to_thread(wait_until, lambda: encoder.holding > 0, "the tokenizer to hold a request")
        refused_while_busy = [t.result() for t in tasks if t.done()]
        rows_at_the_gate = encoder.rows_seen
        encoder.gate.set()
        return refused_while_busy, rows_at_the_gate, [await t for t in tasks]

    try:
        refused_while_busy, rows_at_the_gate, results = asyncio.run(main())
    finally:
        encoder.gate.set()
        scorer.close()
    outcomes = [outcome for outcome, _ in results]
    assert outcomes.count("ok") == 4 and outcomes.count("refused") == requests - 4
    assert len(refused_while_busy) == requests - 4 and all(o == "refused" for o, _ in refused_while_busy)
    assert rows_at_the_gate <= 8, "rows beyond the queue's capacity reached the tokenizer"
    assert encoder.rows_seen == 8
    # The bound for a refusal while the tokenizer is busy: no work is spent on a refused request.
    assert max(seconds for outcome, seconds in results if outcome == "refused") < 0.05
    assert scorer.metrics.rejected._value.get() == 2 * (requests - 4)


def test_a_big_request_being_tokenized_does_not_hold_up_a_small_one(tiny_bundle, monkeypatch):
    encoder = GatedEncoder(holds=lambda rows: len(rows) >= 64)
    scorer = make_scorer(tiny_bundle, monkeypatch, encoder, tokenizer_threads=2)  # the default on 3+ cores

    async def main():
        big = asyncio.ensure_future(scorer.score([Row("p", f"r {i}", f"responses.{i}") for i in range(64)]))
        await asyncio.to_thread(wait_until, lambda: encoder.holding == 1, "the big request to be held")
        small = await asyncio.wait_for(scorer.score([Row("p", "one", "response")]), 30)
        assert not big.done()
        encoder.gate.set()
        return small, await big

    try:
        small, big = asyncio.run(main())
    finally:
        encoder.gate.set()
        scorer.close()
    assert len(small.raw) == 1 and len(big.raw) == 64


def test_a_request_whose_caller_left_is_let_go_untokenized(tiny_bundle, monkeypatch):
    encoder = GatedEncoder(holds=lambda rows: rows[0][1] == "first")
    scorer = make_scorer(tiny_bundle, monkeypatch, encoder, max_queue_rows=4)
    scorer.tokenizing.close()  # one tokenizer thread, so that the second request waits behind the first
    scorer.tokenizing = type(scorer.tokenizing)(scorer.encoder.encode, scorer.batcher, 1, scorer._tokenized)

    async def main():
        first = asyncio.ensure_future(scorer.score([Row("p", "first", "response")]))
        await asyncio.to_thread(wait_until, lambda: encoder.holding == 1, "the first request to be held")
        leaving = asyncio.ensure_future(scorer.score([Row("p", "x", "responses.0"), Row("p", "y", "responses.1"),
                                                      Row("p", "z", "responses.2")]))
        await asyncio.to_thread(wait_until, lambda: scorer.batcher.queued() == 4, "both requests to be admitted")
        leaving.cancel()
        await asyncio.to_thread(wait_until, lambda: scorer.batcher.queued() == 1, "the slots to be freed")
        room = asyncio.ensure_future(scorer.score([Row("p", "a", "responses.0"), Row("p", "b", "responses.1")]))
        encoder.gate.set()
        return await first, await room

    try:
        first, room = asyncio.run(main())
    finally:
        encoder.gate.set()
        scorer.close()
    assert len(first.raw) == 1 and len(room.raw) == 2
    assert encoder.rows_seen == 1 + 2, "the departed request's rows were tokenized"
    assert scorer.metrics.dropped.labels("cancelled")._value.get() == 3


class RustPanic(BaseException):
    """What a panic inside the Rust tokenizer raises in Python (pyo3's PanicException): not an Exception."""


def test_a_tokenizer_panic_answers_its_requests_and_the_stage_keeps_serving(tiny_bundle, monkeypatch):
    original = InputEncoder.encode

    def encode(self, rows):
        if any(response == "panics" for _, response in rows):
            raise RustPanic("the tokenizer panicked")
        return original(self, rows)

    monkeypatch.setattr(InputEncoder, "encode", encode)
    bundle = load_bundle(tiny_bundle)
    scorer = Scorer(bundle, OnnxRewardModel(str(bundle.model_path), "cpu"),
                    Settings(bundle=tiny_bundle, device="cpu", max_queue_rows=2, tokenizer_threads=1), Metrics())

    async def main():
        try:
            await scorer.score([Row("p", "panics", "responses.0"), Row("p", "fine", "responses.1")])
        except ScoringError as e:
            failed = e
        queued_after = scorer.batcher.queued()
        next_one = await scorer.score([Row("p", "one", "responses.0"), Row("p", "two", "responses.1")])
        return failed, queued_after, next_one, [thread.is_alive() for thread in scorer.tokenizing._threads]

    try:
        failed, queued_after, next_one, alive = asyncio.run(main())
    finally:
        scorer.close()
    assert failed.kind is ErrorKind.INTERNAL and "tokenizing 1 requests failed" in failed.message
    assert queued_after == 0, "the failed request's queue slots were not freed"
    assert len(next_one.raw) == 2 and alive == [True]  # the same single tokenizer thread served the next one
