"""Cheap attacks on a real `rmserve serve` that has an API key, measured beside the service they must not
disturb (issue 18's acceptance):

- a flood of unauthenticated 4 MiB bodies (`[{},{},...]`), `--flooders` at a time, each on a connection of
  its own and sent whole, from a process of its own: every 401 must come back in under 50 ms (p99), timed
  from the connect (on a kept-alive connection a request's head would wait behind the previous body in
  the kernel's buffers, which measures the pipe, not the server);
- meanwhile `/healthz`, polled on a connection of its own, must answer with a p99 under 50 ms;
- and an authenticated client scoring at a steady pace must keep its p99 within 2x its p99 without the flood.

The yardstick (the p99s without the flood) is measured in the same run, on the same server, in blocks that
alternate with the flooded ones (quiet, flood, quiet, flood, ...), so that load from other work on the machine
falls on both alike. The server's CPU use in each condition is reported beside them: on one machine the
attacker's own work (writing the bodies) competes with the server for cores, which a remote attacker's
would not. The hand-written HTTP pieces here (a kept-alive raw connection, a slow client) are also
the attack mix of bench/soak.py.

    python bench/attack.py                                # 3 rounds of 10 s quiet + 10 s flooded
    python bench/attack.py --rounds 1 --block 5 --no-write
    python bench/attack.py --server-cpus 1 --attacker-cpus 0   # the attacker off the server's core
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import record_run  # noqa: E402

KEY = "attack-bench-key"
LIMIT_MS = 50.0  # 401s and /healthz under the flood, p99
SCORING_RATIO_LIMIT = 2.0  # the authenticated client's p99, flooded over quiet
HALF_HEAD = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: app"


def flood_body(size: int = 4 << 20) -> bytes:
    """About `size` bytes of `[{},{},...]`: the body that used to cost seconds of parsing before its 401."""
    return b"[" + b",".join([b"{}"] * (size // 3 - 1)) + b"]"


def head(method: str, path: str, length: int | None = None, key: str | None = None,
         headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawConnection:
    """One kept-alive HTTP/1.1 connection written by hand: an attacker that costs little CPU, and a probe
    whose timings hold nothing of an HTTP library."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, request: bytes) -> tuple[int, float]:
        """Send one request (head and body) and read its whole answer: (status, seconds). The answer may come
        before all of the body is sent (a refusal from the head); the rest is sent before the next request."""
        began = time.perf_counter()
        status_line = await self._send(request, retry=self.writer is not None)
        assert self.reader is not None and self.writer is not None
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        seconds = time.perf_counter() - began
        if close:
            await self.close()
        else:
            await self.writer.drain()  # the rest of a refused body, before the next request goes out
        return int(status_line.split()[1]), seconds

    async def _send(self, request: bytes, retry: bool) -> bytes:
        """Write `request` and read the status line. A kept-alive connection the server closed while idle
        (after keep_alive_timeout_seconds) never saw the request: it is sent again on a new one."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            status_line = await self.reader.readline()
        except ConnectionResetError:
            status_line = b""
        if status_line:
            return status_line
        await self.close()
        if retry:
            return await self._send(request, retry=False)
        raise ConnectionError("closed without an answer")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


async def slow_request(host: str, port: int, partial: bytes) -> int | str:
    """Send `partial` (half a head, or a head and half its body), then nothing: the status the server answers
    before it closes the connection, or "closed" when it closes without one."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(partial)
        data = await reader.read()  # until the server closes
    finally:
        writer.close()
    return int(data.split()[1]) if data else "closed"


def half_body(key: str) -> bytes:
    body = json.dumps({"prompt": "hello there", "response": "i am fine thanks"}).encode()
    return head("POST", "/score", len(body), key) + body[: len(body) // 2]


def cpu_list(text: str) -> set[int]:
    """A taskset-style CPU list ("0", "0-1", "0,2-3") as a set."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _flood(port: int, flooders: int, cpus: str | None, started, stop, results) -> None:
    """The attacker's process: `flooders` senders of unauthenticated 4 MiB bodies back to back, each body on a
    new connection, written whole (the kernel sends what the 401 leaves unsent after the close)."""
    if cpus:
        os.sched_setaffinity(0, cpu_list(cpus))
    body = flood_body()
    request, outcomes = head("POST", "/score", len(body)) + body, []

    async def flooder() -> None:
        while not stop.is_set():
            conn = RawConnection("127.0.0.1", port)
            try:
                outcomes.append(await conn.request(request))
            except (ConnectionError, OSError) as e:
                outcomes.append((type(e).__name__, float("nan")))
            await conn.close()
            started.set()

    async def main() -> None:
        await asyncio.gather(*(flooder() for _ in range(flooders)))

    asyncio.run(main())
    results.put(outcomes)


async def paced(conn: RawConnection, request: bytes, rate: float, seconds: float) -> list:
    """`rate` requests a second for `seconds`: (status, seconds) of each."""
    outcomes, next_at, stop_at = [], time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < stop_at:
        try:
            outcomes.append(await conn.request(request))
        except (ConnectionError, OSError) as e:
            outcomes.append((type(e).__name__, float("nan")))
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the pace of the probe, not synchronization
    return outcomes


def percentiles(outcomes: list, ok: int) -> tuple[int, int, float, float]:
    """(answers, answers other than `ok`, p50 ms, p99 ms of the `ok` ones)."""
    ms = np.array([s for status, s in outcomes if status == ok]) * 1000
    p50, p99 = (float(np.percentile(ms, q)) for q in (50, 99)) if len(ms) else (float("nan"),) * 2
    return len(outcomes), sum(status != ok for status, _ in outcomes), p50, p99


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, port: int, pid: int, score_body: bytes) -> dict[str, dict[str, list]]:
    context = multiprocessing.get_context("spawn")
    seen: dict[str, dict[str, list]] = {phase: {"health": [], "scoring": [], "401": [], "cpu": []}
                                        for phase in ("quiet", "flood")}
    health, scoring = RawConnection("127.0.0.1", port), RawConnection("127.0.0.1", port)
    score_request = head("POST", "/score", len(score_body), KEY) + score_body

    async def block(phase: str) -> None:
        cpu, began = cpu_seconds(pid), time.monotonic()
        results = await asyncio.gather(paced(health, head("GET", "/healthz"), args.health_rate, args.block),
                                       paced(scoring, score_request, args.rate, args.block))
        seen[phase]["health"] += results[0]
        seen[phase]["scoring"] += results[1]
        seen[phase]["cpu"].append((cpu_seconds(pid) - cpu) / (time.monotonic() - began))

    async def main() -> None:
        await block("quiet")  # warm-up, not counted
        seen["quiet"] = {"health": [], "scoring": [], "401": [], "cpu": []}
        for round_number in range(args.rounds):
            await block("quiet")
            started, stop, results = context.Event(), context.Event(), context.Queue()
            attacker = context.Process(target=_flood, args=(port, args.flooders, args.attacker_cpus, started, stop,
                                                            results), daemon=True)
            attacker.start()
            if not await asyncio.to_thread(started.wait, 120):
                raise RuntimeError("the flood never got an answer")
            await block("flood")
            stop.set()
            seen["flood"]["401"] += await asyncio.to_thread(results.get, True, 120)
            attacker.join(60)
            print(f"round {round_number + 1}/{args.rounds} done", flush=True)
        await health.close()
        await scoring.close()

    asyncio.run(main())
    return seen


def report(args: argparse.Namespace, seen: dict[str, dict[str, list]], rss: tuple[float, float]) -> tuple[str, bool]:
    lines = ["| condition | what | answers | not the expected status | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    p99: dict[tuple[str, str], float] = {}
    failures = 0
    for phase in ("quiet", "flood"):
        for what, ok in (("health", 200), ("scoring", 200), ("401", 401)):
            if not seen[phase][what]:
                continue
            count, other, p50, p99[phase, what] = percentiles(seen[phase][what], ok)
            failures += other
            label = {"health": "`GET /healthz`", "scoring": "authenticated `/score`",
                     "401": "unauthenticated 4 MiB body"}[what]
            lines.append(f"| {phase} | {label} | {count} | {other} | {p50:.1f} | {p99[phase, what]:.1f} |")
    lines += ["", "| condition | server CPU (cores busy, mean of blocks) |", "|---|---|"]
    lines += [f"| {phase} | {np.mean(seen[phase]['cpu']):.2f} |" for phase in ("quiet", "flood")]
    ratio = p99["flood", "scoring"] / p99["quiet", "scoring"]
    checks = {
        f"401 p99 {p99['flood', '401']:.1f} ms < {LIMIT_MS:.0f} ms": p99["flood", "401"] < LIMIT_MS,
        f"/healthz p99 under the flood {p99['flood', 'health']:.1f} ms < {LIMIT_MS:.0f} ms": p99["flood", "health"] < LIMIT_MS,
        f"authenticated p99 flooded / quiet {ratio:.2f}x <= {SCORING_RATIO_LIMIT:.0f}x": ratio <= SCORING_RATIO_LIMIT,
        f"every answer the expected one ({failures} others)": failures == 0,
    }
    ok = all(checks.values())
    summary = [f"- {'pass' if passed else 'FAIL'}: {check}" for check, passed in checks.items()]
    summary.append(f"- server RSS {rss[0]:.0f} MB before, {rss[1]:.0f} MB after")
    return "\n".join(lines) + "\n\n" + "\n".join(summary), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "artifacts" / "default-bundle"))
    parser.add_argument("--rounds", type=int, default=3, help="quiet + flooded blocks (default 3)")
    parser.add_argument("--block", type=float, default=10.0, help="seconds per block (default 10)")
    parser.add_argument("--flooders", type=int, default=4, help="unauthenticated bodies in flight at once (default 4)")
    parser.add_argument("--rate", type=float, default=2.0, help="authenticated /score requests a second (default 2)")
    parser.add_argument("--health-rate", type=float, default=20.0, help="/healthz polls a second (default 20)")
    parser.add_argument("--server-cpus", default=None, help="taskset CPU list for the server, e.g. 1")
    parser.add_argument("--attacker-cpus", default=None, help="CPU list for the attacker's process, e.g. 0 (on one "
                        "machine it otherwise takes the server's cores, as a remote attacker could not)")
    parser.add_argument("--note", default="", help="a remark for the record (e.g. what else ran on the machine)")
    parser.add_argument("--no-write", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    if args.rounds < 1 or args.block <= 0 or args.flooders < 1 or args.rate <= 0 or args.health_rate <= 0:
        parser.error("--rounds, --block, --flooders, --rate and --health-rate must be positive")

    from bench.serve import hh_rows, rss_mb, start_rmserve, stop

    rows = hh_rows(8)
    score_body = json.dumps({"prompt": rows[0][0], "responses": [r for _, r in rows[:4]]}).encode()
    log = Path(tempfile.gettempdir()) / f"rmserve-attack-server-{os.getpid()}.log"
    server = start_rmserve(args.bundle, ["--device", "cpu"], env={"RMSERVE_API_KEYS": KEY}, log_path=log,
                           cpus=args.server_cpus)
    try:
        print(f"attacking {server.url}: {args.rounds} x ({args.block:.0f} s quiet + {args.block:.0f} s with "
              f"{args.flooders} unauthenticated 4 MiB bodies at a time); server log {log}", flush=True)
        before = rss_mb(server.proc.pid)
        seen = run(args, server.port, server.proc.pid, score_body)
        rss = (before, rss_mb(server.proc.pid))
    finally:
        stop(server.proc)
    text, ok = report(args, seen, rss)
    print(text)
    if not args.no_write:
        record_run("Cheap attacks: unauthenticated 4 MiB bodies", f"{args.rounds} rounds of {args.block:.0f} s quiet "
                   f"and {args.block:.0f} s flooded, {args.flooders} bodies at a time, each on a new connection, from a process of their own; "
                   f"/healthz at {args.health_rate:g}/s and 4-response /score at {args.rate:g}/s on kept-alive "
                   "connections" + (f"; server on CPUs {args.server_cpus}" if args.server_cpus else "")
                   + (f", attacker on CPUs {args.attacker_cpus}" if args.attacker_cpus else "")
                   + (f"; {args.note}" if args.note else ""), text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
