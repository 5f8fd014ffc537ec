"""ONNX Runtime session options, measured: which settings the engine uses, and why.

In-process, on the shipped HH texts, sorted token-budget batches: texts/s for graph optimization levels,
intra-op thread counts, and batch shapes. Every configuration scores the same texts, all of them, once
untimed (ONNX Runtime's memory reaches its working size) and once timed, so that each figure is for the
same work. Prints a table and appends it to docs/benchmarks.md.

    python bench/ort_options.py [--bundle artifacts/default-bundle] [--texts 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import record_run  # noqa: E402
from bench.serve import hh_rows  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402


def throughput(session: ort.InferenceSession, batches: list) -> float:
    """Texts/s over one timed pass through `batches`, after an untimed one."""
    for _ in range(2):  # the second pass is the one timed
        began = time.perf_counter()
        for batch in batches:
            session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    return sum(batch.input_ids.shape[0] for batch in batches) / (time.perf_counter() - began)


def make_batches(encoder, encoded, max_rows: int, max_tokens: int) -> list:
    batches, current = [], []
    for e in encoded:
        if current and (len(current) >= max_rows or len(e.ids) * (len(current) + 1) > max_tokens):
            batches.append(encoder.pad(current))
            current = []
        current.append(e)
    batches.append(encoder.pad(current))
    order = list(range(len(batches)))
    import random

    random.Random(0).shuffle(order)
    return [batches[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default-bundle")
    parser.add_argument("--texts", type=int, default=600, help="HH texts each configuration scores (twice).")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(ROOT / args.bundle)
    encoder = bundle.encoder()
    encoded = sorted(encoder.encode(hh_rows(args.texts)), key=lambda e: len(e.ids))
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    configs = [("all", 0, 16, 4096), ("extended", 0, 16, 4096), ("basic", 0, 16, 4096), ("all", 1, 16, 4096),
               ("all", 0, 1, 10**9), ("all", 0, 4, 1024), ("all", 0, 8, 2048), ("all", 0, 32, 8192),
               ("all", 0, 64, 16384)]
    rows = []
    for level, threads, max_rows, max_tokens in configs:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(bundle.model_path), options, providers=["CPUExecutionProvider"])
        rate = throughput(session, make_batches(encoder, encoded, max_rows, max_tokens))
        shape = "one text at a time" if max_rows == 1 else f"≤{max_rows} rows, ≤{max_tokens} tokens"
        rows.append((level, threads or "all cores", shape, rate))
        print(rows[-1], flush=True)
    lines = ["| graph optimization | intra-op threads | batch shape (sorted) | texts/s |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d:.1f} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        record_run("ONNX Runtime session options", f"onnxruntime {ort.__version__}, bundle `{bundle.manifest.bundle_id}`",
                   table)


if __name__ == "__main__":
    main()
