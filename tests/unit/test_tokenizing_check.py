"""A request's own check of its tokenized rows (a PRM's step count) runs in the tokenizer stage: a refusal
answers that request before any of its rows reaches the engine, frees its queue slots, and leaves the
requests tokenized with it alone."""

from __future__ import annotations

import asyncio

import numpy as np

from rmserve.service.core.batcher import Batcher, BatchPolicy
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import Batch, EncodedInput
from rmserve.service.core.tokenizing import Tokenizing


def test_a_refused_check_answers_its_request_without_inference():
    seen: list[int] = []

    def engine(batch: Batch) -> np.ndarray:
        seen.extend(batch.input_ids[:, 0].tolist())
        return batch.input_ids[:, 0].astype(np.float32)

    def encode(rows):
        return [EncodedInput(ids=[len(response)], prompt_tokens_cut=0, response_tokens_cut=0) for _, response in rows]

    def pad(rows):
        return Batch(np.array(rows, dtype=np.int64), np.ones((len(rows), 1), dtype=np.int64))

    def refuse(encoded):
        raise ScoringError(ErrorKind.VALIDATION, f"{len(encoded)} rows refused", "responses.0")

    def broken(encoded):
        raise RuntimeError("a bug in the check")

    batcher = Batcher(engine, pad, BatchPolicy(64, 8))
    tokenizing = Tokenizing(encode, batcher, threads=1)

    async def main():
        refused, failed, fine = batcher.admit(2), batcher.admit(1), batcher.admit(1)
        tokenizing.submit(refused, [("p", "abcdefg"), ("p", "abcdefgh")], check=refuse)  # one loop turn:
        tokenizing.submit(failed, [("p", "abcdefghi")], check=broken)  # one encoder call for all three
        tokenizing.submit(fine, [("p", "abc")], check=lambda encoded: None)
        answers = await asyncio.wait_for(asyncio.gather(refused.future, failed.future, fine.future,
                                                        return_exceptions=True), 30)
        return answers

    try:
        refused, failed, fine = asyncio.run(main())
    finally:
        tokenizing.close()
        batcher.close()
    assert isinstance(refused, ScoringError) and refused.kind is ErrorKind.VALIDATION
    assert refused.field == "responses.0" and "2 rows refused" in str(refused)
    assert isinstance(failed, ScoringError) and failed.kind is ErrorKind.INTERNAL
    assert fine.tolist() == [3.0]
    assert seen == [3] and batcher.queued() == 0

