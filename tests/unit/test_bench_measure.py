"""The serving benchmark compares each load point with the engine alone on the same texts: these tests pin
down that "the same texts" holds (what the load generator counted is what the engine is timed on)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import numpy as np

from bench.loadgen import run_closed_loop
from bench.serve import EngineCeiling, counted_texts, request_texts, score_body

ROWS = [(f"prompt {i}", f"response {i}") for i in range(7)]


def test_closed_loop_counts_exactly_the_requests_it_reports() -> None:
    sent: list[int] = []

    async def open_sender():
        async def send(number: int) -> tuple[int, int]:
            sent.append(number)
            await asyncio.sleep(0.005)  # the fake request's work, not synchronization
            return (200 if number % 5 else 503), 3  # every fifth request fails and must not be counted

        async def close() -> None:
            return None

        return send, close

    result = asyncio.run(run_closed_loop(open_sender, concurrency=4, seconds=0.3, warmup_s=0.1))
    assert result.counted, "nothing was counted"
    assert len(set(result.counted)) == len(result.counted) == result.ok
    assert result.rows == 3 * result.ok
    assert set(result.counted) <= set(sent) and all(n % 5 for n in result.counted)
    assert min(result.counted) > 0, "requests answered during the warm-up were counted"


def test_windows_alternate_with_a_paused_idle_server() -> None:
    in_flight = [0]
    seen_by_between: list[list[int]] = []

    async def open_sender():
        async def send(number: int) -> tuple[int, int]:
            in_flight[0] += 1
            await asyncio.sleep(0.01)  # the fake request's work, not synchronization
            in_flight[0] -= 1
            return 200, 1

        async def close() -> None:
            return None

        return send, close

    async def between(numbers: list[int]) -> None:
        assert in_flight[0] == 0, "the engine-alone run must see an idle server"
        seen_by_between.append(numbers)
        # Any request sent now would break the next window's count: this pause gives a misbehaving
        # generator time to send one.
        await asyncio.sleep(0.05)  # a pause to catch misbehaviour in, not synchronization

    result = asyncio.run(run_closed_loop(open_sender, concurrency=3, seconds=0.6, warmup_s=0.05, parts=3, between=between))
    assert len(seen_by_between) == 3 and all(seen_by_between)
    assert sorted(n for part in seen_by_between for n in part) == sorted(result.counted)
    assert result.rows == len(result.counted)


def test_counted_texts_are_the_texts_the_requests_carried() -> None:
    numbers = [0, 3, 5]
    for per_request in (1, 2, 16):
        expected = []
        for number in numbers:
            body = json.loads(score_body(*request_texts(ROWS, number, per_request)))
            responses = body.get("responses") or [body["response"]]
            assert len(responses) == per_request
            expected += [(body["prompt"], r) for r in responses]
        assert counted_texts(ROWS, numbers, per_request) == expected
    # one prompt per request, its responses taken in turn (and wrapping around the rows)
    assert request_texts(ROWS, 3, 2) == ("prompt 6", ["response 6", "response 0"])


@dataclass
class _Encoded:
    ids: list[int]


class _Encoder:
    def encode(self, texts: list[tuple[str, str]]) -> list[_Encoded]:
        return [_Encoded(ids=[int(p.split()[1])] * (1 + int(p.split()[1]))) for p, _ in texts]

    def pad(self, batch: list[_Encoded]) -> list[list[int]]:
        return [e.ids for e in batch]


def test_engine_ceiling_scores_every_given_text_once_within_its_shape() -> None:
    seen: list[list[int]] = []

    def engine(batch: list[list[int]]) -> np.ndarray:
        seen.append([ids[0] for ids in batch])
        return np.zeros(len(batch), dtype=np.float32)

    texts = [ROWS[i] for i in (4, 0, 6, 2, 2, 5)]
    ceiling = EngineCeiling(engine, _Encoder(), max_rows=2, max_tokens=10**9)  # type: ignore[arg-type]
    assert ceiling.rate(texts) > 0
    assert sorted(i for batch in seen for i in batch) == [0, 2, 2, 4, 5, 6]
    assert all(len(batch) <= 2 for batch in seen)
    assert all(batch == sorted(batch) for batch in seen), "batches are formed from length-sorted texts"


def test_load_connection_resends_when_the_server_closed_an_idle_keep_alive() -> None:
    from bench.loadgen import Connection

    served: list[bytes] = []
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        served.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # like an idle keep-alive timeout: closed without saying so
        await writer.wait_closed()
        closed.set()

    async def scenario() -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port)
        try:
            first = await conn.post("/score", b"{1}")
            await closed.wait()
            second = await conn.post("/score", b"{2}")
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()
        return [first, second]

    assert asyncio.run(scenario()) == [(200, b"ok"), (200, b"ok")]
    assert served == [b"{1}", b"{2}"], "each request reaches the server exactly once"
