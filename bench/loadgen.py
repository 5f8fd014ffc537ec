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
    counted: list[int] = field(default_factory=list)  # numbers of the requests answered 200 inside the window

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
    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.extra_head = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())  # e.g. a key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n{self.extra_head}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        reused = self.writer is not None
        status_line = await self._send(head + body)
        if not status_line and reused:
            # The server closed the idle keep-alive connection (uvicorn does after 5 s, e.g. while the
            # benchmark pauses the load); the request never reached it, so send it again on a new one.
            await self.close()
            status_line = await self._send(head + body)
        if not status_line:
            raise ConnectionError("server closed the connection")
        assert self.reader is not None
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

    async def _send(self, request: bytes) -> bytes:
        """Write `request` (connecting first when needed) and return the status line, b"" if the peer closed."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            return await self.reader.readline()
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


Sender = Callable[[int], Awaitable[tuple[int, int]]]  # request number -> (HTTP-like status, rows scored)
Between = Callable[[list[int]], Awaitable[None]]  # runs while the load is paused, given the part's counted requests


async def run_closed_loop(open_sender: Callable[[], Awaitable[tuple[Sender, Callable[[], Awaitable[None]]]]],
                          concurrency: int, seconds: float, warmup_s: float = 1.0, parts: int = 1,
                          between: Between | None = None) -> LoadResult:
    """`concurrency` clients send back to back; what completes inside the measured windows is counted (a
    steady-state throughput). `open_sender` gives each client its send and close.

    The `seconds` measured are split into `parts` equal windows, each after `warmup_s` of load. Between
    windows the clients stop sending, the server drains, and `between` runs with the numbers of the requests
    that window counted: the serving benchmark times the engine alone there, on exactly those texts, so that
    the two are compared in alternation within seconds of each other rather than minutes apart."""
    result = LoadResult(concurrency=concurrency, seconds=seconds)
    counter = iter(range(10**9))
    sending = asyncio.Event()
    drained = asyncio.Event()
    window: list[float] = [float("inf"), float("-inf")]  # open, close: completions in between are counted
    part_counted: list[int] = []
    in_flight = [0]
    finished = False

    async def client() -> None:
        send, close = await open_sender()
        try:
            while True:
                while not sending.is_set():  # a client woken just before a pause must not send
                    await sending.wait()
                if finished:
                    return
                began = time.perf_counter()
                number = next(counter)
                in_flight[0] += 1
                try:
                    status, rows = await send(number)
                finally:
                    in_flight[0] -= 1
                    if in_flight[0] == 0 and not sending.is_set():
                        drained.set()
                done = time.perf_counter()
                if not window[0] <= done <= window[1]:
                    continue
                result.status_counts[status] = result.status_counts.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.rows += rows
                    result.counted.append(number)
                    part_counted.append(number)
                    result.latencies_ok.append(done - began)
                elif status == 429:
                    result.latencies_rejected.append(done - began)
        finally:
            await close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    cpu = 0.0
    for _ in range(parts):
        drained.clear()
        sending.set()
        await asyncio.sleep(warmup_s)
        cpu0, window[0] = time.process_time(), time.perf_counter()
        window[1] = float("inf")
        await asyncio.sleep(seconds / parts)
        window[1] = time.perf_counter()
        cpu += time.process_time() - cpu0
        sending.clear()
        if in_flight[0]:
            await drained.wait()
        if between is not None:
            await between(list(part_counted))
        part_counted.clear()
    finished = True
    sending.set()
    await asyncio.gather(*tasks)
    result.client_cpu_share = cpu / seconds / (os.cpu_count() or 1)
    return result


async def run_load(host: str, port: int, path: str, make_body: Callable[[int], tuple[bytes, int]],
                   concurrency: int, seconds: float, parts: int = 1, between: Between | None = None) -> LoadResult:
    """Closed-loop HTTP POSTs, one keep-alive connection per client."""

    async def open_sender() -> tuple[Sender, Callable[[], Awaitable[None]]]:
        conn = Connection(host, port)

        async def send(i: int) -> tuple[int, int]:
            body, rows = make_body(i)
            status, _ = await conn.post(path, body)
            return status, rows

        return send, conn.close

    return await run_closed_loop(open_sender, concurrency, seconds, parts=parts, between=between)


async def run_grpc_load(target: str, make_request: Callable[[int], tuple[object, int]], concurrency: int,
                        seconds: float, parts: int = 1, between: Between | None = None) -> LoadResult:
    """Closed-loop gRPC Score calls from `concurrency` tasks over one HTTP/2 channel."""
    import grpc

    from rmserve.proto import reward_pb2_grpc

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

        return await run_closed_loop(open_sender, concurrency, seconds, parts=parts, between=between)


def score_body(prompt: str, responses: list[str]) -> bytes:
    if len(responses) == 1:
        return json.dumps({"prompt": prompt, "response": responses[0]}).encode()
    return json.dumps({"prompt": prompt, "responses": responses}).encode()
