"""Serving A/B: two or more `rmserve serve` configurations at one load point, in alternation, each compared
with the engine alone on the same texts (the yardstick of bench/serve.py). Prints a table and appends it to
docs/benchmarks.md.

    python bench/serve_ab.py "--max-padding-ratio 0.02" "--max-padding-ratio 0.1"
    python bench/serve_ab.py "" "--max-batch-size 1" --protocol http --concurrency 8 --repeats 3 --no-write

Configurations run A, B, ..., A, B, ... (`--repeats` rounds), each on a fresh server, so that the machine's
drift spreads over all of them instead of favouring the one measured first.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import record_run  # noqa: E402
from bench.serve import (  # noqa: E402
    SameTexts,
    batching_figures,
    engine_limit,
    grpc_load_point,
    hh_rows,
    load_point,
    scrape,
    start_rmserve,
    stop,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="Extra `rmserve serve` flags of each configuration ('' for defaults).")
    parser.add_argument("--bundle", default="artifacts/default-bundle")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=40.0, help="Measured seconds per configuration and round.")
    parser.add_argument("--parts", type=int, default=8, help="Windows per measurement, each followed by the engine alone.")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds over all configurations.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()

    bundle_dir = ROOT / args.bundle
    rows = hh_rows(3000)
    ceiling, limit, _ = engine_limit(bundle_dir, rows[:400], 0, "cpu")
    print(f"engine: {ceiling.label}, {limit:.1f} texts/s on the first pass")
    ratios: dict[str, list[float]] = {c: [] for c in args.configs}
    batches: dict[str, list[float]] = {c: [] for c in args.configs}
    for _ in range(args.repeats):
        for config in args.configs:
            server = start_rmserve(bundle_dir, shlex.split(config))
            try:
                same = SameTexts(ceiling, rows)
                before = scrape(server.url)
                if args.protocol == "grpc":
                    res = grpc_load_point(server.grpc_target, rows, args.concurrency, args.seconds, args.parts, same)
                else:
                    res = load_point(server.port, rows, 1, args.concurrency, args.seconds, parts=args.parts, between=same)
                mean_batch, _ = batching_figures(before, scrape(server.url))
            finally:
                stop(server.proc)
            ratios[config].append(res.rows_per_s / same.rate)
            batches[config].append(mean_batch)
            print(f"[{config or 'defaults'}] {res.rows_per_s:.1f} texts/s, engine alone {same.rate:.1f}: "
                  f"{ratios[config][-1]:.2f} x", flush=True)

    lines = ["| configuration | × engine, same texts (each round) | mean | mean batch |", "|---|---|---|---|"]
    for config in args.configs:
        lines.append(f"| `{config or 'defaults'}` | {', '.join(f'{r:.2f}' for r in ratios[config])} | "
                     f"**{np.mean(ratios[config]):.2f}** | {np.mean(batches[config]):.1f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        bundle_id = json.loads((bundle_dir / "bundle.json").read_text())["bundle_id"]
        record_run("Serving A/B", f"bundle `{bundle_id}`, {args.protocol} c={args.concurrency}, {args.seconds:.0f} s in "
                   f"{args.parts} windows per configuration and round, engine alone: {ceiling.label}", text)


if __name__ == "__main__":
    main()
