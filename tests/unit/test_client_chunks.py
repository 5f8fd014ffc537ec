"""An asyncio call split into chunks ends with its first failure: the chunks still waiting or under way are
cancelled, none is sent after the caller got its error (the sync client stops at the failing chunk too)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rmserve.client import AsyncRewardClient, InvalidRequest

MODEL = {"bundle_id": "b", "model_sha256": "s", "normalization_version": "n", "calibration_temperature": 1.0}


def test_a_failed_chunk_ends_the_whole_async_call():
    sent: list[str] = []

    async def main():
        never = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            first = json.loads(request.content)["responses"][0]
            sent.append(first)
            if first == "r0":
                return httpx.Response(422, json={"error": {"kind": "validation", "message": "bad",
                                                           "field": "responses.0"}})
            await never.wait()  # the other chunks are under way until cancelled
            raise AssertionError("unreachable")

        client = AsyncRewardClient("http://replica:1", max_responses_per_request=2, max_concurrent_chunks=2)
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        with pytest.raises(InvalidRequest):
            await client.score("p", [f"r{i}" for i in range(8)])
        at_failure = list(sent)
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
        for task in left:  # (only on a regression: not to leave them behind)
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await client.close()
        return at_failure, left

    at_failure, left_running = asyncio.run(main())
    assert sent == at_failure and "r0" in sent and len(sent) < 4, sent
    assert left_running == []
