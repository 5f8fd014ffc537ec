"""A cheap closed-loop HTTP load generator: asyncio streams, keep-alive, hand-written HTTP/1.1.

The benchmark client shares the machine with the server, so it must cost little CPU: no HTTP library,
one persistent connection per simulated client, and its own CPU share is measured and reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    ok: int = 0
    rows: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    latencies_ok: list[float] = field(default_factory=list)
    latencies_rejected: list[float] = field(default_factory=list)
    client_cpu_share: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def percentile_ms(self, q: float, rejected: bool = False) -> float:
        values = self.latencies_rejected if rejected else self.latencies_ok
        return float(np.percentile(values, q) * 1000) if values else float("nan")


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


Sender = Callable[[int], Awaitable[tuple[int, int]]]  # request number -> (HTTP-like status, rows scored)


async def run_closed_loop(open_sender: Callable[[], Awaitable[tuple[Sender, Callable[[], Awaitable[None]]]]],
                          concurrency: int, seconds: float, warmup_s: float = 1.0) -> LoadResult:
    """`concurrency` clients send back to back; what completes inside the `seconds` window after a
    warm-up is counted (a steady-state throughput). `open_sender` gives each client its send and close."""
    result = LoadResult(concurrency=concurrency, seconds=seconds)
    counter = iter(range(10**9))
    measuring = asyncio.Event()
    stop_at = [float("inf")]

    async def client() -> None:
        send, close = await open_sender()
        try:
            while time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                status, rows = await send(next(counter))
                elapsed = time.perf_counter() - began
                if not measuring.is_set() or began + elapsed > stop_at[0]:
                    continue
                result.status_counts[status] = result.status_counts.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.rows += rows
                    result.latencies_ok.append(elapsed)
                elif status == 429:
                    result.latencies_rejected.append(elapsed)
        finally:
            await close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    measuring.set()
    stop_at[0] = wall0 + seconds
    await asyncio.gather(*tasks)
    result.client_cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / (os.cpu_count() or 1)
    return result


async def run_load(host: str, port: int, path: str, make_body: Callable[[int], tuple[bytes, int]],
                   concurrency: int, seconds: float) -> LoadResult:
    """Closed-loop HTTP POSTs, one keep-alive connection per client."""

    async def open_sender() -> tuple[Sender, Callable[[], Awaitable[None]]]:
        conn = Connection(host, port)

        async def send(i: int) -> tuple[int, int]:
            body, rows = make_body(i)
            status, _ = await conn.post(path, body)
            return status, rows

        return send, conn.close

    return await run_closed_loop(open_sender, concurrency, seconds)


async def run_grpc_load(target: str, make_request: Callable[[int], tuple[object, int]], concurrency: int,
                        seconds: float) -> LoadResult:
    """Closed-loop gRPC Score calls from `concurrency` tasks over one HTTP/2 channel."""
    import grpc

    from service.grpc_gen import reward_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = reward_pb2_grpc.RewardModelStub(channel)

        async def open_sender() -> tuple[Sender, Callable[[], Awaitable[None]]]:
            async def send(i: int) -> tuple[int, int]:
                request, rows = make_request(i)
                try:
                    await stub.Score(request, timeout=60)
                    return 200, rows
                except grpc.aio.AioRpcError as e:
                    return (429 if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 500), rows

            async def close() -> None:
                return None

            return send, close

        return await run_closed_loop(open_sender, concurrency, seconds)


def score_body(prompt: str, responses: list[str]) -> bytes:
    if len(responses) == 1:
        return json.dumps({"prompt": prompt, "response": responses[0]}).encode()
    return json.dumps({"prompt": prompt, "responses": responses}).encode()
