"""A list scored in chunks (/get_reward, /classify, /pooling) is held to one deadline, the request's, not a
fresh default one per chunk."""

from __future__ import annotations

import asyncio

import numpy as np

from rmserve.service.core.limits import request_deadline
from rmserve.service.core.scoring import Row, Scores
from rmserve.service.settings import Settings
from rmserve.service.transports.http.fulltext import score_in_chunks


class RecordingScorer:
    def __init__(self, settings: Settings):
        self.settings, self.deadlines = settings, []

    async def score(self, rows, deadline=None, aggregate=None):
        self.deadlines.append(deadline)
        return Scores(raw=np.zeros(len(rows), dtype=np.float32), truncated=[False] * len(rows))


class QuietRequest:
    async def receive(self):  # the client never leaves
        await asyncio.Event().wait()


def chunk_deadlines(settings: Settings, header_deadline: float | None = None) -> list:
    scorer = RecordingScorer(settings)
    rows = [Row("p", f"r{i}", f"query.{i}") for i in range(5)]

    async def main():
        if header_deadline is not None:
            request_deadline.set(header_deadline)
        scores = await score_in_chunks(scorer, rows, QuietRequest())  # type: ignore[arg-type]
        assert len(scores.raw) == 5
    asyncio.run(main())
    return scorer.deadlines


def test_every_chunk_gets_the_requests_default_deadline(tiny_bundle):
    deadlines = chunk_deadlines(Settings(bundle=tiny_bundle, max_responses_per_request=2, request_timeout_seconds=30))
    assert len(deadlines) == 3 and deadlines[0] is not None and len(set(deadlines)) == 1


def test_a_deadline_from_the_request_header_holds_for_every_chunk(tiny_bundle):
    settings = Settings(bundle=tiny_bundle, max_responses_per_request=2)
    deadlines = chunk_deadlines(settings, header_deadline=1e9)  # cut to max_request_timeout_seconds from now
    assert len(deadlines) == 3 and deadlines[0] is not None and deadlines[0] < 1e9 and len(set(deadlines)) == 1
