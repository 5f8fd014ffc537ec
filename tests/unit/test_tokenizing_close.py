"""Closing the tokenizer stage (a retired scorer, a shutdown) loses no request: one submitted but not yet
handed to the threads is tokenized before they stop, and one that arrives after is answered UNAVAILABLE
with its queue slots freed, instead of waiting for its deadline or for ever."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rmserve.service.core.batcher import Batcher, BatchPolicy
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import Batch, EncodedInput
from rmserve.service.core.tokenizing import Tokenizing


def stage() -> tuple[Batcher, Tokenizing]:
    def encode(rows):
        return [EncodedInput(ids=[len(response)], prompt_tokens_cut=0, response_tokens_cut=0) for _, response in rows]

    def pad(rows):
        return Batch(np.array(rows, dtype=np.int64), np.ones((len(rows), 1), dtype=np.int64))

    batcher = Batcher(lambda batch: batch.input_ids[:, 0].astype(np.float32), pad, BatchPolicy(64, 8))
    return batcher, Tokenizing(encode, batcher, threads=1)


def test_a_request_submitted_just_before_the_close_is_still_scored():
    batcher, tokenizing = stage()

    async def main():
        job = batcher.admit(2)
        tokenizing.submit(job, [("p", "abc"), ("p", "hello")])  # its hand-over waits for this loop turn's end
        tokenizing.close()
        return await asyncio.wait_for(job.future, 30)

    try:
        rewards = asyncio.run(main())
    finally:
        batcher.close()
    assert rewards.tolist() == [3.0, 5.0] and batcher.queued() == 0


def test_a_request_submitted_after_the_close_is_refused_and_its_slots_freed():
    batcher, tokenizing = stage()

    async def main():
        tokenizing.close()
        job = batcher.admit(1)
        tokenizing.submit(job, [("p", "late")])
        with pytest.raises(ScoringError) as refused:
            await asyncio.wait_for(job.future, 30)
        return refused.value

    try:
        error = asyncio.run(main())
    finally:
        batcher.close()
    assert error.kind is ErrorKind.UNAVAILABLE and batcher.queued() == 0
