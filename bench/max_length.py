"""Choose the default max_length: dev accuracy against training and serving speed.

For each max_length: train on the shipped HH train split (1 epoch, defaults otherwise), export a bundle,
measure pairwise accuracy on the shipped dev split with ONNX Runtime, and measure in-process ONNX Runtime
throughput on the dev texts (sorted by length, batches of 16). Prints a table and appends it to
docs/benchmarks.md.

    python bench/max_length.py --lengths 128 256 [--reuse]

--reuse takes an existing checkpoint in artifacts/maxlen-<L> instead of training again (its recorded
training time is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.record import record_run  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.service.core.engine import OnnxRewardModel  # noqa: E402
from rmserve.training.data import load_pairs, shipped_data  # noqa: E402
from rmserve.training.evaluate import engine_scores, pair_metrics  # noqa: E402


def engine_throughput(bundle_dir: Path, rows: list, repeats: int = 2) -> float:
    bundle = load_bundle(bundle_dir)
    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    encoder = bundle.encoder()
    engine_scores(engine, encoder, rows[:32])  # warm-up
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        engine_scores(engine, encoder, rows)
        best = max(best, len(rows) / (time.perf_counter() - began))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--reuse", action="store_true", help="Reuse artifacts/maxlen-<L> checkpoints if present.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()

    from rmserve.training.config import TrainConfig
    from rmserve.training.export import export_bundle
    from rmserve.training.train import train

    dev = load_pairs(shipped_data("dev"), skip_bad_rows=True).pairs
    rows = [(p.prompt, p.chosen) for p in dev] + [(p.prompt, p.rejected) for p in dev]
    results = []
    for length in args.lengths:
        checkpoint = ROOT / "artifacts" / f"maxlen-{length}"
        meta_path = checkpoint / "rmserve_checkpoint.json"
        if not (args.reuse and meta_path.is_file()):
            train(TrainConfig(output_dir=str(checkpoint), max_length=length, skip_bad_rows=True))
        train_metrics = json.loads(meta_path.read_text())["metrics"]
        bundle_dir = ROOT / "artifacts" / f"maxlen-{length}-bundle"
        export_bundle(checkpoint, bundle_dir)
        bundle = load_bundle(bundle_dir)
        engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
        chosen = engine_scores(engine, bundle.encoder(), [(p.prompt, p.chosen) for p in dev])
        rejected = engine_scores(engine, bundle.encoder(), [(p.prompt, p.rejected) for p in dev])
        metrics = pair_metrics(chosen, rejected)
        results.append({
            "max_length": length,
            "dev_accuracy": metrics["accuracy"],
            "dev_loss": metrics["loss"],
            "train_seconds": train_metrics["train_seconds"],
            "truncated_train_rows": f"{train_metrics['truncated_rows']}/{2 * train_metrics['train_pairs']}",
            "engine_texts_per_s": engine_throughput(bundle_dir, rows),
        })

    header = "| max_length | dev accuracy | dev loss | train time (1 epoch) | train rows truncated | ORT texts/s (dev, sorted, batch 16) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['max_length']} | {r['dev_accuracy']:.4f} | {r['dev_loss']:.4f} | {r['train_seconds']:.0f} s | "
                     f"{r['truncated_train_rows']} | {r['engine_texts_per_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        record_run("max_length sweep", "", table)


if __name__ == "__main__":
    main()
