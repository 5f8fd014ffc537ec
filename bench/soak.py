"""Soak test: a real `rmserve serve` on 127.0.0.1 under sustained mixed load for a bounded time.

Closed-loop HTTP clients (one keep-alive connection each, bench/loadgen.Connection) and gRPC clients send
a fixed mix: good /score (1-4 responses, some with group values), /compare and /get_reward requests and
gRPC Score calls, and bad ones (blank response, invalid JSON, NaN, wrong type, unknown field, empty list,
too many responses, text over max_text_chars, nesting past max_json_depth, a bad X-Request-Timeout, a body
declared larger than max_request_bytes, undecodable gRPC bytes), each with the 4xx / gRPC code it must get.
The server has API keys, and beside those clients runs an attack mix (bench/attack.py's pieces):
unauthenticated 4 MiB bodies (401), slow clients that send half their headers or half their body (408 when
the header or body timeout fires), and a flooder with a key of its own keeping 256-row requests in flight
(200, or 429 once its share of the queue is full; it honours Retry-After). The good requests must still
all succeed.

Reports, per window (default 30 s): requests, p50/p99 latency of the good ones, answers by class, and the
server's RSS; then answers by status over the run, every unexpected answer (a good request not 200, a bad
one not its code, any 5xx), and the RSS growth from the end of the warm-up to the end. Exits 1 when there
was a 5xx or an unexpected answer, or RSS grew by 5 % or more; appends the report to docs/benchmarks.md
unless --no-write.

    python bench/soak.py                                  # 10 minutes, default bundle
    python bench/soak.py --duration 60 --warmup 20 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.attack import HALF_HEAD, RawConnection, flood_body, half_body, head, slow_request  # noqa: E402
from bench.loadgen import Connection  # noqa: E402
from bench.record import record_run  # noqa: E402
from bench.serve import hh_rows, rss_mb, start_rmserve, stop  # noqa: E402

RSS_GROWTH_LIMIT = 0.05
KEY, FLOODER_KEY = "soak-key", "soak-flooder-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# gRPC codes as the HTTP statuses the service gives for the same errors (service/transports/http/app.py, grpc_app.py).
GRPC_AS_HTTP = {"OK": 200, "INVALID_ARGUMENT": 422, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429,
                "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "UNKNOWN": 500}


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)  # good requests answered 200, seconds
    classes: Counter = field(default_factory=Counter)  # 2xx / 4xx / 5xx / other
    rss_mb: float = float("nan")


@dataclass
class Soak:
    began: float
    window_s: float
    duration_s: float
    windows: list[Window] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # (protocol, kind, status)
    unexpected: list[str] = field(default_factory=list)

    def record(self, protocol: str, kind: str, status: int | str, expected: int | str | tuple, latency: float) -> None:
        """One answer; `expected` is the status it must have, or a tuple of those it may have."""
        last = max(0, int(np.ceil(self.duration_s / self.window_s)) - 1)  # answers after the end count in the last
        index = min(int((time.monotonic() - self.began) // self.window_s), last)
        while len(self.windows) <= index:
            self.windows.append(Window())
        window = self.windows[index]
        code = GRPC_AS_HTTP.get(status, 500) if protocol == "grpc" and isinstance(status, str) else status
        window.classes[f"{code}"[0] + "xx" if isinstance(code, int) else "other"] += 1
        self.statuses[(protocol, kind, status)] += 1
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if status in (200, "OK") and allowed == (status,):  # the good requests' latency, not the flooder's
            window.latencies.append(latency)
        if status not in allowed or (isinstance(code, int) and code >= 500):
            if len(self.unexpected) < 50:
                self.unexpected.append(f"{protocol} {kind}: got {status}, expected {expected}")


def http_requests(rows: list[tuple[str, str]], limits: dict) -> list[tuple[str, str, bytes, int, dict]]:
    """(kind, path, body, expected status, extra headers), cycled by every HTTP client."""
    good: list[tuple[str, str, bytes, int, dict]] = []
    for i in range(0, min(len(rows), 200), 4):
        prompt = rows[i][0]
        responses = [r for _, r in rows[i:i + 1 + i % 4]]
        good.append(("score", "/score", json.dumps({"prompt": prompt, "responses": responses}).encode(), 200, {}))
        good.append(("score group", "/score", json.dumps({"prompt": prompt, "responses": responses[:2] * 2,
                                                          "values": "group"}).encode(), 200, {}))
        good.append(("compare", "/compare", json.dumps({"prompt": prompt, "response_a": rows[i][1],
                                                        "response_b": rows[i + 1][1]}).encode(), 200, {}))
        good.append(("get_reward", "/get_reward", json.dumps({"query": [prompt + rows[i][1]], "prompts": [prompt]}).encode(),
                     200, {"X-Request-Timeout": "30"}))
    bad = [
        ("blank response", "/score", json.dumps({"prompt": "hi", "responses": ["ok", " \n"]}).encode(), 422, {}),
        ("invalid JSON", "/score", b'{"prompt": "hi", "response": ', 422, {}),
        ("NaN", "/compare", b'{"prompt": "hi", "response_a": NaN, "response_b": "b"}', 422, {}),
        ("wrong type", "/score", json.dumps({"prompt": ["hi"], "response": 7}).encode(), 422, {}),
        ("unknown field", "/compare", json.dumps({"prompt": "hi", "response_a": "a", "response_b": "b", "x": 1}).encode(), 422, {}),
        ("empty list", "/score", json.dumps({"prompt": "hi", "responses": []}).encode(), 422, {}),
        ("too many responses", "/score", json.dumps({"prompt": "hi", "responses": ["a"] * (limits["responses"] + 1)}).encode(),
         422, {}),
        ("text too long", "/score", json.dumps({"prompt": rows[0][0], "response": "y" * (limits["chars"] + 1)}).encode(),
         422, {}),
        ("nested too deep", "/get_reward", b'{"query": ["a"], "labels": ' + b"[" * 40 + b"]" * 40 + b"}", 422, {}),
        ("bad timeout header", "/score", json.dumps({"prompt": "hi", "response": "ok"}).encode(), 422,
         {"X-Request-Timeout": "soon"}),
        ("bad UTF-8", "/score", b'{"prompt": "hi", "response": "\xc3\x28"}', 422, {}),
    ]
    # Four good requests for each bad one.
    mixed = []
    for i, request in enumerate(good):
        mixed.append(request)
        if i % 4 == 3:
            mixed.append(bad[(i // 4) % len(bad)])
    return mixed


async def post(conn: Connection, path: str, body: bytes, headers: dict) -> int:
    if not headers:
        status, _ = await conn.post(path, body)
        return status
    # loadgen's Connection writes a fixed head; requests with extra headers get their own connection.
    reader, writer = await asyncio.open_connection(conn.host, conn.port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in {**AUTH, **headers}.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     f"{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readline()
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def declared_too_large(host: str, port: int) -> int:
    """A head announcing 5 MB and no body: the server must answer 413 without waiting for it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}"
                     "\r\nContent-Length: 5000000\r\n\r\n".encode())
        status_line = await reader.readline()
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def http_client(soak: Soak, port: int, requests: list, offset: int, stop_at: float) -> None:
    conn = Connection("127.0.0.1", port, AUTH)
    i = offset
    try:
        while time.monotonic() < stop_at:
            kind, path, body, expected, headers = requests[i % len(requests)]
            i += 1
            began = time.monotonic()
            try:
                if i % 97 == 0:
                    kind, expected, status = "declared too large", 413, await declared_too_large("127.0.0.1", port)
                else:
                    status = await post(conn, path, body, headers)
            except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                status = type(e).__name__
                await conn.close()
            soak.record("http", kind, status, expected, time.monotonic() - began)
    finally:
        await conn.close()


METADATA = (("authorization", f"Bearer {KEY}"),)


async def grpc_client(soak: Soak, target: str, rows: list, offset: int, stop_at: float) -> None:
    import grpc

    from rmserve.proto import reward_pb2 as pb
    from rmserve.proto import reward_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        raw = channel.unary_unary("/rmserve.v1.RewardModel/Score", request_serializer=None, response_deserializer=None)
        i = offset
        while time.monotonic() < stop_at:
            i += 1
            prompt, response = rows[i % len(rows)]
            began = time.monotonic()
            if i % 5 == 0:
                kind, expected = "invalid UTF-8 bytes", "INVALID_ARGUMENT"
                call = raw(b"\x12\x02\xff\xfe", timeout=30, metadata=METADATA)
            elif i % 5 == 1:
                kind, expected = "blank response", "INVALID_ARGUMENT"
                call = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=prompt), responses=["\t"]), timeout=30,
                                  metadata=METADATA)
            else:
                kind, expected = "Score", "OK"
                call = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=prompt), responses=[response]), timeout=30,
                                  metadata=METADATA)
            try:
                await call
                status = "OK"
            except grpc.aio.AioRpcError as e:
                status = e.code().name
            soak.record("grpc", kind, status, expected, time.monotonic() - began)


async def unauthenticated_bodies(soak: Soak, port: int, stop_at: float, pause: float) -> None:
    """4 MiB bodies without a key on a kept-alive connection, at a trickle (bench/attack.py floods)."""
    conn, body = RawConnection("127.0.0.1", port), flood_body()
    request = head("POST", "/score", len(body)) + body
    while time.monotonic() < stop_at:
        began = time.monotonic()
        try:
            status, _ = await conn.request(request)
        except (ConnectionError, OSError) as e:
            status = type(e).__name__
        soak.record("http", "unauthenticated 4 MiB body", status, 401, time.monotonic() - began)
        await asyncio.sleep(pause)  # the pace of this attacker, not synchronization
    await conn.close()


async def slow_client(soak: Soak, port: int, stop_at: float, kind: str, partial: bytes) -> None:
    """Half a request, then silence, again and again: each must end in 408 when its timeout fires."""
    while time.monotonic() < stop_at:
        began = time.monotonic()
        try:
            status: int | str = await slow_request("127.0.0.1", port, partial)
        except (ConnectionError, OSError) as e:
            status = type(e).__name__
        soak.record("http", kind, status, 408, time.monotonic() - began)


async def flooder(soak: Soak, port: int, stop_at: float, rows: int) -> None:
    """A client with a key of its own sending `rows`-row requests back to back: 200, or 429 once its share of
    the queue is full (then it waits Retry-After, as the rmserve client does)."""
    body = json.dumps({"prompt": "how are you doing today my friend",
                       "responses": ["one two three four five six seven eight nine ten"] * rows}).encode()
    request = head("POST", "/score", len(body), FLOODER_KEY, {"X-Request-Timeout": "300"}) + body
    conn = RawConnection("127.0.0.1", port)
    while time.monotonic() < stop_at:
        began = time.monotonic()
        try:
            status, _ = await conn.request(request)
        except (ConnectionError, OSError) as e:
            status = type(e).__name__
        soak.record("http", "flooder", status, (200, 429), time.monotonic() - began)
        if status == 429:
            await asyncio.sleep(1.0)  # Retry-After
    await conn.close()


def attack_mix(soak: Soak, port: int, stop_at: float, rows: int) -> list:
    return [unauthenticated_bodies(soak, port, stop_at, 0.2) for _ in range(2)] + [
        slow_client(soak, port, stop_at, "slow headers", HALF_HEAD),
        slow_client(soak, port, stop_at, "slow body", half_body(KEY)),
    ] + [flooder(soak, port, stop_at, rows) for _ in range(6)]


async def sample_rss(soak: Soak, pid: int, stop_at: float, samples: list[tuple[float, float]]) -> None:
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - soak.began, rss_mb(pid)))
        await asyncio.sleep(5)


async def run(args: argparse.Namespace, port: int, grpc_target: str, pid: int, rows: list, limits: dict) -> tuple[Soak, list]:
    soak = Soak(began=time.monotonic(), window_s=args.window, duration_s=args.duration)
    stop_at = soak.began + args.duration
    requests = http_requests(rows, limits)
    samples: list[tuple[float, float]] = []
    tasks = [http_client(soak, port, requests, k * 7, stop_at) for k in range(args.http_clients)]
    tasks += [grpc_client(soak, grpc_target, rows, k * 11, stop_at) for k in range(args.grpc_clients)]
    if not args.no_attack:
        tasks += attack_mix(soak, port, stop_at, args.flood_rows)
    await asyncio.gather(*tasks, sample_rss(soak, pid, stop_at, samples))
    samples.append((time.monotonic() - soak.began, rss_mb(pid)))
    return soak, samples


def report(args: argparse.Namespace, soak: Soak, samples: list[tuple[float, float]]) -> tuple[str, bool]:
    lines = ["| window | requests | good p50 ms | good p99 ms | 2xx | 4xx | 5xx | other | server RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, window in enumerate(soak.windows):
        end = (i + 1) * args.window
        rss = [mb for t, mb in samples if t <= end]
        lat = np.array(window.latencies) * 1000
        p50, p99 = (f"{np.percentile(lat, 50):.0f}", f"{np.percentile(lat, 99):.0f}") if len(lat) else ("", "")
        c = window.classes
        lines.append(f"| {i * args.window:.0f}–{min(end, args.duration):.0f} s | {sum(c.values())} | {p50} | {p99} | "
                     f"{c['2xx']} | {c['4xx']} | {c['5xx']} | {c['other']} | {rss[-1] if rss else float('nan'):.0f} |")
    after_warmup = [mb for t, mb in samples if t >= args.warmup]
    baseline, final = (after_warmup[0], samples[-1][1]) if after_warmup else (samples[0][1], samples[-1][1])
    growth = (final - baseline) / baseline
    five_xx = sum(w.classes["5xx"] for w in soak.windows)
    by_status: Counter = Counter()
    for (protocol, _, status), n in soak.statuses.items():
        by_status[f"{protocol} {status}"] += n
    ok = five_xx == 0 and not soak.unexpected and growth < RSS_GROWTH_LIMIT
    summary = [
        f"- answers by status: {', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))}",
        f"- 5xx: {five_xx}; unexpected answers: {len(soak.unexpected)}"
        + (f" (e.g. {'; '.join(soak.unexpected[:5])})" if soak.unexpected else ""),
        f"- server RSS: {samples[0][1]:.0f} MB at start, {baseline:.0f} MB after the {args.warmup:.0f} s warm-up, "
        f"{final:.0f} MB at the end (growth after warm-up {growth:+.1%}), max {max(mb for _, mb in samples):.0f} MB",
        f"- verdict: {'pass' if ok else 'FAIL'} (zero 5xx, zero unexpected answers, RSS growth after warm-up < 5 %)",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(summary), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "artifacts" / "default-bundle"))
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (bounded)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline is taken")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per report window")
    parser.add_argument("--http-clients", type=int, default=6)
    parser.add_argument("--grpc-clients", type=int, default=2)
    parser.add_argument("--flood-rows", type=int, default=128, help="rows per flooder request (default 128)")
    parser.add_argument("--no-attack", action="store_true", help="only the good and bad requests, no attack mix")
    parser.add_argument("--note", default="", help="a remark for the record (e.g. what else ran on the machine)")
    parser.add_argument("--no-write", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    from rmserve.service.settings import Settings

    defaults = Settings()
    if not 0 < args.duration <= 3600 or not 0 <= args.warmup < args.duration:
        parser.error("need 0 < --duration <= 3600 and 0 <= --warmup < --duration")
    if not 1 <= args.flood_rows <= defaults.max_responses_per_request:
        parser.error(f"--flood-rows must be 1 to {defaults.max_responses_per_request} (max_responses_per_request)")
    limits = {"responses": defaults.max_responses_per_request, "chars": defaults.max_text_chars}
    rows = hh_rows(400)
    # artifacts/ holds the shared bundle and checkpoint, read only: the log goes to the temporary directory.
    log = Path(tempfile.gettempdir()) / f"rmserve-soak-server-{os.getpid()}.log"
    server = start_rmserve(args.bundle, ["--device", "cpu"], env={"RMSERVE_API_KEYS": f"{KEY},{FLOODER_KEY}"},
                           log_path=log)
    try:
        print(f"soaking {server.url} (gRPC {server.grpc_target}) for {args.duration:.0f} s: {args.http_clients} HTTP "
              f"and {args.grpc_clients} gRPC clients; server log {log}", flush=True)
        soak, samples = asyncio.run(run(args, server.port, server.grpc_target, server.proc.pid, rows, limits))
    finally:
        stop(server.proc)
    text, ok = report(args, soak, samples)
    print(text)
    if not args.no_write:
        bundle_id = json.loads((Path(args.bundle) / "bundle.json").read_text())["bundle_id"]
        record_run("Soak", f"bundle `{bundle_id}`, {args.duration:.0f} s, {args.http_clients} HTTP and "
                   f"{args.grpc_clients} gRPC closed-loop clients, one bad request for every four good ones"
                   + ("" if args.no_attack else f"; attack mix: 2 senders of unauthenticated 4 MiB bodies (one each "
                      f"0.2 s), a half-head and a half-body slow client, 6 flooder connections of {args.flood_rows}-row "
                      "requests under a key of their own") + (f"; {args.note}" if args.note else ""), text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
