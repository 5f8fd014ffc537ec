"""Serving benchmark: rmserve against the engine limit and a naive per-request peer, in one run.

All on the same real texts (HH-RLHF dialogues from the shipped data, their real length mix) and the same
bundle, on 127.0.0.1 only, bounded in time. Prints a table and appends it to docs/benchmarks.md.

    python bench/serve.py                     # defaults: default bundle + checkpoint, 16 s per load point
    python bench/serve.py --seconds 5 --concurrency 1 32 --skip-naive --no-write

Rows:
  engine limit   in-process ONNX Runtime, pre-tokenized, sorted by length, idle workers allowed to spin: the
                 best of 1, 2, 4, 8, 16 and 32-row batches (CUDA: 1 to 256), each timed on the first texts after
                 a warm-up pass. Each load point is measured in windows; between windows the load pauses and
                 the engine alone, in that shape, scores exactly the texts the window counted, and the point is
                 compared with those engine runs (same texts, seconds apart)
  rmserve c=N    HTTP or gRPC, N closed-loop clients, one response per request
  rmserve x16    HTTP, 16 responses per request
  naive c=32     bench/naive_server.py (torch eager, one request at a time, no batching)
  overload       rmserve with a small queue at 4x the concurrency it admits: 429 latency, all admitted OK
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.loadgen import Between, LoadResult, run_grpc_load, run_load, score_body  # noqa: E402
from bench.record import record_run  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.service.core.engine import OnnxRewardModel  # noqa: E402
from rmserve.service.core.inputs import InputEncoder  # noqa: E402
from rmserve.training.data import load_pairs, shipped_data  # noqa: E402
from tests.integration.server import free_port  # noqa: E402


def hh_rows(count: int, seed: int = 0) -> list[tuple[str, str]]:
    pairs = load_pairs(shipped_data("dev"), skip_bad_rows=True).pairs + load_pairs(shipped_data("train"), skip_bad_rows=True).pairs
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    random.Random(seed).shuffle(rows)
    return rows[:count]


class EngineCeiling:
    """The in-process ONNX Runtime ceiling at one batch shape: the engine alone, fed pre-tokenized texts sorted
    by length into batches (in shuffled order, so lengths mix over time as in serving), nothing else running.

    `seconds(texts)` times one pass over exactly the texts given. After each window of a load point it runs on
    exactly the texts that window counted, so the two are compared on the same work, seconds apart: one text
    costs from a few ms to 80 ms here, so one time window holds a different mix of lengths than another, and
    the shared machine's speed drifts by 10-20 % within minutes."""

    def __init__(self, engine: OnnxRewardModel, encoder: InputEncoder, max_rows: int, max_tokens: int):
        self.engine, self.encoder, self.max_rows, self.max_tokens = engine, encoder, max_rows, max_tokens
        self.label = f"sorted, ≤{max_rows} rows, ≤{max_tokens} tokens" if max_rows > 1 else "one text at a time"

    def rate(self, texts: list[tuple[str, str]]) -> float:
        """Texts/s over one pass through `texts`."""
        return len(texts) / self.seconds(texts)

    def seconds(self, texts: list[tuple[str, str]]) -> float:
        """Seconds for one pass through `texts` (tokenized beforehand, untimed)."""
        batches, current = [], []
        for e in sorted(self.encoder.encode(texts), key=lambda e: len(e.ids)):
            if current and (len(current) >= self.max_rows or len(e.ids) * (len(current) + 1) > self.max_tokens):
                batches.append(current)
                current = []
            current.append(e)
        batches.append(current)
        random.Random(1).shuffle(batches)
        began = time.perf_counter()
        for batch in batches:
            self.engine(self.encoder.pad(batch))
        return time.perf_counter() - began


def engine_alone(model_path: str, threads: int, device: str) -> OnnxRewardModel:
    """The engine as it runs with nothing else on the machine: the server's session options, except that
    ONNX Runtime's idle workers may spin (the server turns spinning off to leave the CPU to its event loop
    and tokenizer; alone, spinning is worth ~10 % on CPU)."""
    import onnxruntime as ort

    engine = OnnxRewardModel(model_path, device=device, intra_op_threads=threads)  # type: ignore[arg-type]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    engine.session = ort.InferenceSession(model_path, sess_options=options, providers=engine.session.get_providers())
    return engine


def engine_limit(bundle_dir: Path, rows: list, threads: int, device: str) -> tuple[EngineCeiling, float, float]:
    """Choose the engine's best batch shape: every shape scores all of `rows` (the first texts the load points
    send) once untimed, to warm ONNX Runtime's memory for its shapes, then once timed; the fastest timed shape
    is the ceiling. Returns it, its rate on `rows`, and single-text latency (ms, p50)."""
    bundle = load_bundle(bundle_dir)
    engine = engine_alone(str(bundle.model_path), threads, device)
    encoder = bundle.encoder()
    max_length = bundle.manifest.input.max_length
    sizes = (1, 2, 4, 8, 16, 32) if device != "cuda" else (1, 32, 64, 128, 256)
    shapes = [EngineCeiling(engine, encoder, n, 10**9 if n == 1 else n * max_length) for n in sizes]
    for ceiling in shapes:
        ceiling.seconds(rows)  # warm-up pass
    best: EngineCeiling | None = None
    best_rate = 0.0
    for ceiling in shapes:
        rate = ceiling.rate(rows)
        print(f"  engine, {ceiling.label}: {rate:.1f} texts/s", flush=True)
        if rate > best_rate:
            best, best_rate = ceiling, rate
    assert best is not None
    encoded = encoder.encode(rows)
    latencies = []
    for e in random.Random(2).sample(encoded, min(60, len(encoded))):
        t0 = time.perf_counter()
        engine(encoder.pad([e]))
        latencies.append(time.perf_counter() - t0)
    return best, best_rate, float(np.median(latencies) * 1000)


def start(cmd: list[str], env: dict, url: str, timeout: float = 120.0, ready_path: str = "/readyz",
          log_path: Path | None = None) -> subprocess.Popen:
    """Start a server process and wait until `ready_path` answers 200."""
    import httpx

    stderr = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr)
    where = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}{where}")
        try:
            if httpx.get(url + ready_path, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"{cmd[0]} did not become ready{where}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Rmserve:
    """A `rmserve serve` process on free 127.0.0.1 ports."""

    proc: subprocess.Popen
    port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_rmserve(bundle_dir: str | Path, extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                  log_path: Path | None = None, cpus: str | None = None) -> Rmserve:
    """Start `rmserve serve` on fresh ports and wait until it is ready; `env` adds RMSERVE_* settings, `cpus`
    pins it (a taskset CPU list)."""
    port, grpc_port = free_port(), free_port()
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = start([*pin, sys.executable, "-m", "rmserve.cli", "serve", "--bundle", str(bundle_dir), "--host", "127.0.0.1",
                  "--port", str(port), "--grpc-port", str(grpc_port), *extra_args],
                 {"RMSERVE_LOG_LEVEL": "warning", **(env or {})}, f"http://127.0.0.1:{port}", log_path=log_path)
    return Rmserve(proc, port, grpc_port)


def batching_figures(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(mean rows per batch, share of batch tokens that were padding) between two `scrape`s."""
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    mean_batch = delta.get("rmserve_batch_size_sum", 0) / max(delta.get("rmserve_batch_size_count", 0), 1)
    waste = 1 - delta.get("rmserve_input_tokens_total", 0) / max(delta.get("rmserve_batch_tokens_sum", 0), 1)
    return mean_batch, waste


def start_infinity(binary: str, model_dir: str, port: int, url: str) -> subprocess.Popen:
    return start([binary, "v2", "--model-id", model_dir, "--engine", "torch", "--device", "cpu", "--port", str(port),
                  "--host", "127.0.0.1"], {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}, url,
                 timeout=240.0, ready_path="/health", log_path=ROOT / "artifacts" / "infinity.log")


def scrape(url: str) -> dict[str, float]:
    import httpx

    values: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        m = re.match(r"^(rmserve_(?:batch_size|batch_tokens)_(?:sum|count)|rmserve_input_tokens_total|rmserve_dropped_rows_total|rmserve_rejected_rows_total)(\{[^}]*\})? (\S+)$", line)
        if m:
            values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
    return values


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request_texts(rows: list, number: int, per_request: int) -> tuple[str, list[str]]:
    """The prompt and responses of request `number`: one prompt with `per_request` responses, taken in turn."""
    first = number * per_request
    return rows[first % len(rows)][0], [rows[(first + k) % len(rows)][1] for k in range(per_request)]


def counted_texts(rows: list, numbers: list[int], per_request: int = 1) -> list[tuple[str, str]]:
    """Every (prompt, response) text of the requests numbered `numbers`."""
    texts = []
    for number in numbers:
        prompt, responses = request_texts(rows, number, per_request)
        texts += [(prompt, r) for r in responses]
    return texts


class SameTexts:
    """Between the windows of a load point, times the engine alone on exactly the texts that window counted
    (in a thread, while the load is paused and the server idle); `rate` is over all windows together."""

    def __init__(self, ceiling: EngineCeiling, rows: list, per_request: int = 1):
        self.ceiling, self.rows, self.per_request = ceiling, rows, per_request
        self.texts, self.elapsed = 0, 0.0

    async def __call__(self, numbers: list[int]) -> None:
        texts = counted_texts(self.rows, numbers, self.per_request)
        if texts:
            self.elapsed += await asyncio.to_thread(self.ceiling.seconds, texts)
            self.texts += len(texts)

    @property
    def rate(self) -> float:
        return self.texts / self.elapsed if self.elapsed else float("nan")


def load_point(port: int, rows: list, per_request: int, concurrency: int, seconds: float, path: str = "/score",
               parts: int = 1, between: Between | None = None) -> LoadResult:
    def make_body(i: int) -> tuple[bytes, int]:
        prompt, responses = request_texts(rows, i, per_request)
        return score_body(prompt, responses), per_request

    return asyncio.run(run_load("127.0.0.1", port, path, make_body, concurrency, seconds, parts, between))


def grpc_load_point(target: str, rows: list, concurrency: int, seconds: float, parts: int = 1,
                    between: Between | None = None) -> LoadResult:
    from rmserve.proto import reward_pb2 as pb

    def make_request(i: int) -> tuple[object, int]:
        prompt, responses = request_texts(rows, i, 1)
        return pb.ScoreRequest(prompt=pb.Prompt(text=prompt), responses=responses), 1

    return asyncio.run(run_grpc_load(target, make_request, concurrency, seconds, parts, between))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default-bundle")
    parser.add_argument("--checkpoint", default="artifacts/default-checkpoint", help="For the naive torch peer.")
    parser.add_argument("--seconds", type=float, default=16.0, help="Measured seconds per load point.")
    parser.add_argument("--parts", type=int, default=4,
                        help="Windows each load point's seconds are split into; after each window the load pauses "
                        "and the engine alone scores exactly the texts that window counted.")
    parser.add_argument("--ceiling-texts", type=int, default=400,
                        help="Texts every engine-limit batch shape scores (the first texts the load points send).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--grpc-concurrency", type=int, nargs="*", default=[1, 8, 32, 128],
                        help="Concurrency levels for the gRPC path (none to skip).")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores).")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Execution provider for rmserve and the engine limit.")
    parser.add_argument("--server-args", default="", help="Extra `rmserve serve` flags, e.g. '--max-batch-size 64'.")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--infinity-bin", default=None,
                        help="Path of an `infinity_emb` executable (PyPI infinity-emb, installed in its own venv); "
                        "serves the same checkpoint through its /rerank endpoint as a peer row.")
    parser.add_argument("--note", default="", help="A remark for the record, e.g. that the machine was shared.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()

    bundle_dir = ROOT / args.bundle
    rows = hh_rows(3000)
    print(f"texts: {len(rows)} HH dialogues (prompt + response), bundle {bundle_dir}")
    ceiling, limit, single_ms = engine_limit(bundle_dir, rows[: args.ceiling_texts], args.threads, args.device)
    print(f"engine limit: {limit:.1f} texts/s ({ceiling.label}); single text p50 {single_ms:.1f} ms")

    def row(label: str, res: LoadResult, same: SameTexts, batching: str, waste: str = "") -> tuple[str, ...]:
        line = (label, f"{res.rows_per_s:.1f}", f"{same.rate:.1f}", f"**{res.rows_per_s / same.rate:.2f}**",
                f"{res.rows_per_s / limit:.2f}", f"{res.percentile_ms(50):.1f}", f"{res.percentile_ms(99):.1f}", batching,
                waste, f"{res.client_cpu_share:.0%}")
        print(line, flush=True)
        return line

    table = [(f"engine limit (in-process ORT, {ceiling.label})", f"{limit:.1f}", "", "", "1.00", "", "", "timed pass after a warm-up pass", "", "")]
    server_env = {"RMSERVE_DEVICE": args.device, "RMSERVE_INTRA_OP_THREADS": str(args.threads)}
    server = start_rmserve(bundle_dir, shlex.split(args.server_args), server_env)
    port, url = server.port, server.url
    results = {}
    try:
        # (label, responses per request, windows, run(windows, between)); 16-response requests take seconds
        # each, so that point keeps one window, or a window would hold only a handful of requests
        Run = Callable[[int, Between], LoadResult]
        points: list[tuple[str, int, int, Run]] = [
            (f"rmserve HTTP c={c}", 1, args.parts, lambda n, b, c=c: load_point(port, rows, 1, c, args.seconds, parts=n, between=b))
            for c in args.concurrency]
        points.append(("rmserve HTTP c=8 (16 responses/request)", 16, 1,
                       lambda n, b: load_point(port, rows, 16, 8, args.seconds, parts=n, between=b)))
        points += [(f"rmserve gRPC c={c}", 1, args.parts,
                    lambda n, b, c=c: grpc_load_point(server.grpc_target, rows, c, args.seconds, parts=n, between=b))
                   for c in args.grpc_concurrency]
        for label, per_request, parts, run in points:
            same = SameTexts(ceiling, rows, per_request)
            before = scrape(url)
            res = run(parts, same)
            mean_batch, waste = batching_figures(before, scrape(url))
            results[label] = res
            table.append(row(label, res, same, f"mean batch {mean_batch:.1f}", f"{waste:.1%}"))
    finally:
        stop(server.proc)

    overload_line = ""
    server = start_rmserve(bundle_dir, ["--max-queue-rows", "8"], server_env)
    try:
        rss0 = rss_mb(server.proc.pid)
        res = load_point(server.port, rows, 1, 32, args.seconds)
        rss1 = rss_mb(server.proc.pid)
        other = {k: v for k, v in res.status_counts.items() if k not in (200, 429)}
        overload_line = (f"queue 8 rows, 32 clients: {res.status_counts.get(200, 0)} scored, "
                         f"{res.status_counts.get(429, 0)} refused with 429 (p50 {res.percentile_ms(50, True):.1f} ms, "
                         f"p99 {res.percentile_ms(99, True):.1f} ms), other statuses {other or 'none'}; "
                         f"server RSS {rss0:.0f} → {rss1:.0f} MB")
        print(overload_line)
    finally:
        stop(server.proc)

    if not args.skip_naive:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        naive = start([sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port), "--log-level", "warning"],
                      {"RM_CHECKPOINT": str(ROOT / args.checkpoint)}, url)
        try:
            same = SameTexts(ceiling, rows)
            res = load_point(port, rows, 1, 32, args.seconds, parts=args.parts, between=same)
            table.append(row("naive peer c=32 (torch eager per request)", res, same, "no batching"))
            naive_rate = res.rows_per_s
        finally:
            stop(naive)
        ours = results.get("rmserve HTTP c=32")
        if ours:
            print(f"rmserve / naive at c=32: {ours.rows_per_s / naive_rate:.2f}x")

    if args.infinity_bin:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        model_dir = str(ROOT / args.checkpoint)
        infinity = start_infinity(args.infinity_bin, model_dir, port, url)
        try:
            def make_body(i: int) -> tuple[bytes, int]:
                prompt, responses = request_texts(rows, i, 1)
                return json.dumps({"model": model_dir, "query": prompt, "documents": responses}).encode(), 1

            same = SameTexts(ceiling, rows)
            res = asyncio.run(run_load("127.0.0.1", port, "/rerank", make_body, 32, args.seconds, args.parts, same))
            bad = {k: v for k, v in res.status_counts.items() if k != 200}
            table.append(row("infinity-emb c=32 (torch, /rerank)", res, same,
                             "its own batching" + (f", errors {bad}" if bad else "")))
        finally:
            stop(infinity)

    header = ("| path | texts/s | engine alone, same texts (texts/s) | × engine, same texts | × first-pass limit "
              "| p50 ms | p99 ms | batching | padding waste | client CPU |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in table]
    text = "\n".join(lines)
    spread = (f"- engine limit: {ceiling.label} was the fastest shape on the first {args.ceiling_texts} texts. Each load "
              f"point's {args.seconds:.0f} s are measured in {args.parts} windows (one for 16-response requests); after "
              "each window the load pauses, the server drains, and the engine alone, in that shape, scores exactly the "
              "texts the window counted: × engine, same texts compares the point with those engine runs, so both see the "
              "same work and the same machine within seconds; × first-pass limit compares with the first measurement")
    print(text)
    print(spread)
    print(f"single text engine latency p50: {single_ms:.1f} ms")
    print(overload_line)
    if not args.no_write:
        bundle_id = json.loads((bundle_dir / "bundle.json").read_text())["bundle_id"]
        record_run("Serving", f"bundle `{bundle_id}`, {args.seconds:.0f} s per load point, texts: shipped HH dialogues "
                   "(real length mix)" + (f"; {args.note}" if args.note else ""), f"{text}\n\n{spread}\n- single-text engine latency p50: {single_ms:.1f} ms\n"
                   f"- overload: {overload_line}", args.device)


if __name__ == "__main__":
    main()
