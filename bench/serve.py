"""Serving benchmark: rmserve against the engine limit and a naive per-request peer, in one run.

All on the same real texts (HH-RLHF dialogues from the shipped data, their real length mix) and the same
bundle, on 127.0.0.1 only, bounded in time. Prints a table and appends it to docs/benchmarks.md.

    python bench/serve.py                     # defaults: default bundle + checkpoint, 10 s per load point
    python bench/serve.py --seconds 5 --concurrency 1 32 --skip-naive --no-write

Rows:
  engine limit   in-process ONNX Runtime, pre-tokenized, sorted by length, best of several batch shapes
  rmserve c=N    HTTP, N closed-loop clients, one response per request
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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.loadgen import LoadResult, run_grpc_load, run_load, score_body  # noqa: E402
from bench.record import record_run  # noqa: E402
from service.bundle import load_bundle  # noqa: E402
from service.engine import OnnxRewardModel  # noqa: E402
from tests.integration.server import free_port  # noqa: E402
from training.data import load_pairs, shipped_data  # noqa: E402


def hh_rows(count: int, seed: int = 0) -> list[tuple[str, str]]:
    pairs = load_pairs(shipped_data("dev"), skip_bad_rows=True).pairs + load_pairs(shipped_data("train"), skip_bad_rows=True).pairs
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def engine_limit(bundle_dir: Path, rows: list, threads: int, device: str) -> tuple[float, str, float]:
    """Best in-process texts/s over batch shapes, each scoring all of `rows` (the same texts the load
    points send first); also single-text latency (ms, p50)."""
    bundle = load_bundle(bundle_dir)
    engine = OnnxRewardModel(str(bundle.model_path), device=device, intra_op_threads=threads)  # type: ignore[arg-type]
    encoder = bundle.encoder()
    encoded = sorted(encoder.encode(rows), key=lambda e: len(e.ids))
    engine(encoder.pad(encoded[:8]))  # warm-up
    best, best_shape = 0.0, ""
    shapes = ((1, 10**9), (8, 4096), (16, 4096), (32, 8192))
    if device == "cuda":
        shapes = ((1, 10**9), (32, 8192), (64, 16384), (128, 32768), (256, 65536))
    for max_rows, max_tokens in shapes:
        batches, current = [], []
        for e in encoded:
            if current and (len(current) >= max_rows or len(e.ids) * (len(current) + 1) > max_tokens):
                batches.append(current)
                current = []
            current.append(e)
        batches.append(current)
        random.Random(1).shuffle(batches)  # sorted batches, but lengths mixed over time as in serving
        began = time.perf_counter()
        for batch in batches:
            engine(encoder.pad(batch))
        rate = len(encoded) / (time.perf_counter() - began)
        print(f"  engine, batches of ≤{max_rows} rows / ≤{max_tokens} tokens: {rate:.1f} texts/s", flush=True)
        if rate > best:
            best, best_shape = rate, f"sorted, ≤{max_rows} rows, ≤{max_tokens} tokens" if max_rows > 1 else "one text at a time"
    latencies = []
    for e in random.Random(2).sample(encoded, min(60, len(encoded))):
        t0 = time.perf_counter()
        engine(encoder.pad([e]))
        latencies.append(time.perf_counter() - t0)
    return best, best_shape, float(np.median(latencies) * 1000)


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


def load_point(port: int, rows: list, per_request: int, concurrency: int, seconds: float, path: str = "/score") -> LoadResult:
    def make_body(i: int) -> tuple[bytes, int]:
        prompt = rows[(i * per_request) % len(rows)][0]
        responses = [rows[(i * per_request + k) % len(rows)][1] for k in range(per_request)]
        return score_body(prompt, responses), per_request

    return asyncio.run(run_load("127.0.0.1", port, path, make_body, concurrency, seconds))


def grpc_load_point(target: str, rows: list, concurrency: int, seconds: float) -> LoadResult:
    from service.grpc_gen import reward_pb2 as pb

    def make_request(i: int) -> tuple[object, int]:
        prompt, response = rows[i % len(rows)]
        return pb.ScoreRequest(prompt=pb.Prompt(text=prompt), responses=[response]), 1

    return asyncio.run(run_grpc_load(target, make_request, concurrency, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default-bundle")
    parser.add_argument("--checkpoint", default="artifacts/default-checkpoint", help="For the naive torch peer.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per load point.")
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
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()

    bundle_dir = ROOT / args.bundle
    rows = hh_rows(3000)
    print(f"texts: {len(rows)} HH dialogues (prompt + response), bundle {bundle_dir}")
    limit, shape, single_ms = engine_limit(bundle_dir, rows[: args.ceiling_texts], args.threads, args.device)
    print(f"engine limit: {limit:.1f} texts/s ({shape}); single text p50 {single_ms:.1f} ms")

    table = [("engine limit (in-process ORT)", f"{limit:.1f}", "1.00", "", "", shape, "", "")]
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {"RMSERVE_GRPC_PORT": str(grpc_port), "RMSERVE_DEVICE": args.device, "RMSERVE_LOG_LEVEL": "warning", "RMSERVE_INTRA_OP_THREADS": str(args.threads)}
    server = start([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--port", str(port),
                    *args.server_args.split()], server_env, url)
    results = {}
    try:
        points: list[tuple[str, Callable[[], LoadResult]]] = [
            (f"rmserve HTTP c={c}", lambda c=c: load_point(port, rows, 1, c, args.seconds)) for c in args.concurrency]
        points.append(("rmserve HTTP c=8 (16 responses/request)", lambda: load_point(port, rows, 16, 8, args.seconds)))
        points += [(f"rmserve gRPC c={c}", lambda c=c: grpc_load_point(f"127.0.0.1:{grpc_port}", rows, c, args.seconds))
                   for c in args.grpc_concurrency]
        for label, run in points:
            before = scrape(url)
            res = run()
            delta = {k: v - before.get(k, 0) for k, v in scrape(url).items()}
            mean_batch = delta.get("rmserve_batch_size_sum", 0) / max(delta.get("rmserve_batch_size_count", 0), 1)
            waste = 1 - delta.get("rmserve_input_tokens_total", 0) / max(delta.get("rmserve_batch_tokens_sum", 0), 1)
            results[label] = res
            table.append((label, f"{res.rows_per_s:.1f}", f"{res.rows_per_s / limit:.2f}", f"{res.percentile_ms(50):.1f}",
                          f"{res.percentile_ms(99):.1f}", f"mean batch {mean_batch:.1f}", f"{waste:.1%}",
                          f"{res.client_cpu_share:.0%}"))
            print(table[-1])
    finally:
        stop(server)

    overload_line = ""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle_dir), "--port", str(port),
                    "--max-queue-rows", "8"], server_env, url)
    try:
        rss0 = rss_mb(server.pid)
        res = load_point(port, rows, 1, 32, args.seconds)
        rss1 = rss_mb(server.pid)
        other = {k: v for k, v in res.status_counts.items() if k not in (200, 429)}
        overload_line = (f"queue 8 rows, 32 clients: {res.status_counts.get(200, 0)} scored, "
                         f"{res.status_counts.get(429, 0)} refused with 429 (p50 {res.percentile_ms(50, True):.1f} ms, "
                         f"p99 {res.percentile_ms(99, True):.1f} ms), other statuses {other or 'none'}; "
                         f"server RSS {rss0:.0f} → {rss1:.0f} MB")
        print(overload_line)
    finally:
        stop(server)

    if not args.skip_naive:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        naive = start([sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port), "--log-level", "warning"],
                      {"RM_CHECKPOINT": str(ROOT / args.checkpoint)}, url)
        try:
            res = load_point(port, rows, 1, 32, args.seconds)
            table.append(("naive peer c=32 (torch eager per request)", f"{res.rows_per_s:.1f}", f"{res.rows_per_s / limit:.2f}",
                          f"{res.percentile_ms(50):.1f}", f"{res.percentile_ms(99):.1f}", "no batching", "", f"{res.client_cpu_share:.0%}"))
            print(table[-1])
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
                prompt, response = rows[i % len(rows)]
                return json.dumps({"model": model_dir, "query": prompt, "documents": [response]}).encode(), 1

            res = asyncio.run(run_load("127.0.0.1", port, "/rerank", make_body, 32, args.seconds))
            bad = {k: v for k, v in res.status_counts.items() if k != 200}
            table.append(("infinity-emb c=32 (torch, /rerank)", f"{res.rows_per_s:.1f}", f"{res.rows_per_s / limit:.2f}",
                          f"{res.percentile_ms(50):.1f}", f"{res.percentile_ms(99):.1f}",
                          "its own batching" + (f", errors {bad}" if bad else ""), "", f"{res.client_cpu_share:.0%}"))
            print(table[-1])
        finally:
            stop(infinity)

    header = "| path | texts/s | × engine limit | p50 ms | p99 ms | batching | padding waste | client CPU |"
    lines = [header, "|---|---|---|---|---|---|---|---|"] + ["| " + " | ".join(row) + " |" for row in table]
    text = "\n".join(lines)
    print(text)
    print(f"single text engine latency p50: {single_ms:.1f} ms")
    print(overload_line)
    if not args.no_write:
        bundle_id = json.loads((bundle_dir / "bundle.json").read_text())["bundle_id"]
        record_run("Serving", f"bundle `{bundle_id}`, {args.seconds:.0f} s per load point, texts: shipped HH dialogues "
                   "(real length mix)", f"{text}\n\n- single-text engine latency p50: {single_ms:.1f} ms\n"
                   f"- overload: {overload_line}", args.device)


if __name__ == "__main__":
    main()
