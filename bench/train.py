"""Training benchmark: rmserve's trainer against TRL's RewardTrainer (PyPI `trl`), several seeds each, in one run.

Same base model (all-MiniLM-L6-v2), recipe (rmserve's default: training/config.py), 16 pairs a step and the
same number of steps for every run (the recipe's epochs over the shipped HH harmless train split, bad rows
skipped), threads and seeds; CPU, fp32. Each run trains in its own process (bench/train_runs.py says exactly
how each trainer is set up); only the training steps are timed. Every trained model is then scored on the
same dev pairs by one scorer here. Trainers:

  rmserve                   every training pair (it cuts over-long prompts from the left)
  rmserve on TRL's pairs    only the pairs TRL keeps: the same pairs as TRL
  TRL (random)              RewardTrainer as it comes (it drops pairs longer than max_length)
  TRL (group_by_length)     with the Trainer's length-grouped sampler, the closest it has to rmserve's batches

Accuracy is reported per trainer as mean ± sd over the seeds, and for each comparison as the difference of
the seed means with a 95 % interval from a bootstrap that resamples both the dev prompts (the same prompts
for both trainers: paired) and each trainer's seeds. Prints the tables and appends them to docs/benchmarks.md.

    python bench/train.py                                   # 3 seeds x 4 trainers, the default recipe
    python bench/train.py --seeds 0 --steps 5 --limit-train 160 --limit-dev 40 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.record import record_run  # noqa: E402
from bench.train_runs import BATCH_PAIRS, steps_for, train_pairs, trl_fits, trl_texts, write_pairs  # noqa: E402
from rmserve.training import bootstrap  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.data import load_pairs, shipped_data  # noqa: E402
from rmserve.training.evaluate import labels_of  # noqa: E402
from rmserve.training.metrics import pair_credit  # noqa: E402
from rmserve.training.records import PreferencePair  # noqa: E402
from rmserve.training.splits import prompt_key  # noqa: E402

TRAINERS = {  # name: (trainer, TRL sampler, trains on TRL's pairs only)
    "rmserve": ("rmserve", None, False),
    "rmserve on TRL's pairs": ("rmserve", None, True),
    "TRL (random)": ("trl", "random", False),
    "TRL (group_by_length)": ("trl", "group_by_length", False),
}
COMPARISONS = (("rmserve", "TRL (random)"), ("rmserve", "TRL (group_by_length)"),
               ("rmserve on TRL's pairs", "TRL (random)"), ("rmserve on TRL's pairs", "TRL (group_by_length)"),
               ("rmserve", "rmserve on TRL's pairs"))
DIFFERENCE_RESAMPLES = 2000


# ---------------------------------------------------------------- scoring (one scorer for every model)


def score_ids(model_dir: str, rows: list[list[int]], pad_id: int, batch_size: int = 32) -> list[float]:
    """Rewards of token-id rows from a saved model directory: same loader, precision and batching for
    every trainer's model, so that only the input formatting differs."""
    import torch

    from rmserve.training.model import RewardModel, load_hf_model

    model = RewardModel(load_hf_model(model_dir)).eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    scores = [0.0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(rows[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            for i, reward in zip(chunk, model(ids, mask).tolist()):
                scores[i] = reward
    return scores


def rmserve_rows(model_dir: str, dev: list[PreferencePair]) -> tuple[list[list[int]], list[list[int]], int]:
    """Dev rows as rmserve trained on them: its InputEncoder (pair template, prompt cut from the left)."""
    from tokenizers import Tokenizer

    from rmserve.service.core.inputs import InputEncoder
    from rmserve.training.model import CHECKPOINT_META, TOKENIZER_FILE, CheckpointMeta

    meta = CheckpointMeta(**json.loads((Path(model_dir) / CHECKPOINT_META).read_text()))
    encoder = InputEncoder(Tokenizer.from_file(str(Path(model_dir) / TOKENIZER_FILE)), meta.input_spec)
    chosen = [e.ids for e in encoder.encode([(p.prompt, p.chosen) for p in dev])]
    rejected = [e.ids for e in encoder.encode([(p.prompt, p.rejected) for p in dev])]
    return chosen, rejected, encoder.spec.pad_id


def trl_rows(model_dir: str, dev: list[PreferencePair], eos: str, max_length: int) -> tuple[list, list, int]:
    """Dev rows as TRL trained on them (prompt + reply + EOS through its saved tokenizer). TRL has no
    truncation (it drops long pairs), so rows over max_length are cut from the left here, keeping the end
    of the response."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.truncation_side = "left"
    chosen_text, rejected_text = trl_texts(dev, eos)
    cut = tokenizer(chosen_text + rejected_text, truncation=True, max_length=max_length)["input_ids"]
    return cut[: len(dev)], cut[len(dev) :], tokenizer.pad_token_id


def dev_credit(result: dict, dev: list[PreferencePair], max_length: int) -> list[float]:
    """Each dev pair's credit for the run's model: 1 right, ½ equal scores, 0 wrong (training's own rule)."""
    if "eos" in result:
        chosen, rejected, pad_id = trl_rows(result["model_dir"], dev, result["eos"], max_length)
    else:
        chosen, rejected, pad_id = rmserve_rows(result["model_dir"], dev)
    scores = np.array(score_ids(result["model_dir"], chosen + rejected, pad_id))
    return pair_credit(scores[: len(dev)] - scores[len(dev) :], labels_of(dev)).tolist()


# ---------------------------------------------------------------- statistics


def seed_summary(runs: list[dict], keep: np.ndarray) -> tuple[float, float]:
    """(mean, sd) over seeds of the accuracy on the dev pairs in `keep`."""
    values = [float(np.mean(np.asarray(r["credit"])[keep])) for r in runs]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_difference(a: list[dict], b: list[dict], keep: np.ndarray, prompts: np.ndarray,
                      resamples: int = DIFFERENCE_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean over a's seeds − mean over b's seeds, 95 % interval): each resample draws the dev prompts
    (bootstrap.resample: the same pairs for both trainers) and, with replacement, each trainer's seeds."""
    credit_a = np.array([r["credit"] for r in a])[:, keep]
    credit_b = np.array([r["credit"] for r in b])[:, keep]
    groups = bootstrap.group_ids(prompts[keep].tolist())
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pairs = bootstrap.resample(groups, rng)
        seeds_a = rng.integers(0, len(credit_a), len(credit_a))
        seeds_b = rng.integers(0, len(credit_b), len(credit_b))
        values.append(credit_a[seeds_a][:, pairs].mean() - credit_b[seeds_b][:, pairs].mean())
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(credit_a.mean() - credit_b.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- parent


def run_name(name: str, seed: int) -> str:
    trainer, sampler, on_trl_pairs = TRAINERS[name]
    return f"{trainer}{'-trl-pairs' if on_trl_pairs else ''}{'-' + sampler if sampler else ''}-seed{seed}"


def run_one(name: str, seed: int, args: argparse.Namespace, trl_pairs_file: Path) -> dict:
    trainer, sampler, on_trl_pairs = TRAINERS[name]
    run = run_name(name, seed)
    result = Path(args.work_dir) / f"{run}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "train_runs.py"), trainer, "--name", run, "--result", str(result),
           "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(seed), "--work-dir", args.work_dir]
    cmd += ["--sampler", sampler] if sampler else []
    cmd += ["--train-file", str(trl_pairs_file)] if on_trl_pairs else []
    cmd += ["--limit-train", str(args.limit_train)] if args.limit_train and not on_trl_pairs else []
    cmd += ["--limit-dev", str(args.limit_dev)] if args.limit_dev else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"--- {name}, seed {seed}: {' '.join(cmd[1:])}", flush=True)
    began = time.strftime("%Y-%m-%d %H:%M")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return {"trainer": name, "seed": seed, "measured_at": began, **json.loads(result.read_text())}


def recipe_key(recipe: TrainConfig, args: argparse.Namespace) -> str:
    """What decides a run's result besides trainer and seed: the recipe, steps, threads and data limits."""
    text = json.dumps({"recipe": dataclasses.asdict(recipe), "steps": args.steps, "threads": args.threads,
                       "limit_train": args.limit_train, "limit_dev": args.limit_dev}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tables(runs: dict[str, list[dict]], fits: np.ndarray, prompts: np.ndarray) -> str:
    every = np.ones(len(fits), dtype=bool)
    lines = ["| trainer | seeds | train pairs used | steps (pairs) | train s | pairs/s | peak RSS MB | dev accuracy, "
             f"all {len(fits)} pairs (mean ± sd) | dev accuracy, {int(fits.sum())} pairs that fit TRL (mean ± sd) |",
             "|" + "---|" * 9]
    for name, rs in runs.items():
        acc, acc_fit = seed_summary(rs, every), seed_summary(rs, fits)
        seconds = statistics.fmean(r["train_seconds"] for r in rs)
        rate = statistics.fmean(r["pairs_trained"] / r["train_seconds"] for r in rs)
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | {rs[0]['pairs_used']}/"
                     f"{rs[0]['pairs_available']} | {rs[0]['steps']} ({rs[0]['pairs_trained']}) | {seconds:.0f} | "
                     f"{rate:.2f} | {max(r['peak_rss_mb'] for r in rs):.0f} | {acc[0]:.4f} ± {acc[1]:.4f} | "
                     f"{acc_fit[0]:.4f} ± {acc_fit[1]:.4f} |")
    lines += ["", "| comparison | Δ accuracy, all pairs [95 % interval] | Δ accuracy, pairs that fit TRL [95 % interval] |",
              "|---|---|---|"]
    for a, b in COMPARISONS:
        if a in runs and b in runs:
            cells = [paired_difference(runs[a], runs[b], keep, prompts) for keep in (every, fits)]
            lines.append(f"| {a} − {b} | " + " | ".join(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of every trainer (default 0 1 2).")
    parser.add_argument("--trainers", nargs="+", choices=list(TRAINERS), default=list(TRAINERS), metavar="NAME",
                        help=f"Trainers to run, of: {', '.join(repr(t) for t in TRAINERS)}. Default: all.")
    parser.add_argument("--steps", type=int, default=None,
                        help="Optimizer steps of 16 pairs for every run. Default: the recipe's epochs over all pairs.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each run. Default: torch's default.")
    parser.add_argument("--limit-train", type=int, default=None, help="Use only the first N training pairs.")
    parser.add_argument("--limit-dev", type=int, default=None, help="Evaluate on the first N dev pairs only.")
    parser.add_argument("--work-dir", default=str(ROOT / "artifacts" / "bench-train"), help="Where trained models go.")
    parser.add_argument("--keep-models", action="store_true", help="Keep every trained model (about 90 MB each).")
    parser.add_argument("--json", default=None, help="Also write every run (with each dev pair's credit) here.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoTokenizer

    from rmserve.training.model import default_base_model

    recipe = TrainConfig()
    pairs = train_pairs(None, args.limit_train)
    args.steps = args.steps or steps_for(len(pairs), recipe)
    args.threads = args.threads or torch.get_num_threads()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(default_base_model()))
    eos = tokenizer.eos_token or tokenizer.sep_token
    kept = [p for p, fit in zip(pairs, trl_fits(pairs, tokenizer, eos, recipe.max_length)) if fit]
    trl_pairs_file = write_pairs(kept, Path(args.work_dir) / "trl-pairs.jsonl")
    dev = load_pairs(shipped_data("dev"), args.limit_dev, skip_bad_rows=True).pairs
    fits = np.array(trl_fits(dev, tokenizer, eos, recipe.max_length))
    prompts = np.array([prompt_key(p.prompt) for p in dev], dtype=object)
    print(f"{len(pairs)} training pairs ({len(kept)} fit TRL's max_length {recipe.max_length}), {args.steps} steps of "
          f"{BATCH_PAIRS} pairs, seeds {args.seeds}, {args.threads} torch threads; {len(dev)} dev pairs")

    runs: dict[str, list[dict]] = {}
    resumed: list[str] = []  # runs kept from an earlier invocation: their speed was measured then
    for seed in args.seeds:  # seed-outer: a run stopped early still has every trainer on the same seeds
        for name in args.trainers:
            # A scored run is kept under its recipe's name, so the same command again (after a stop) resumes.
            scored = Path(args.work_dir) / f"{run_name(name, seed)}-{recipe_key(recipe, args)}.scored.json"
            if scored.is_file():
                result = json.loads(scored.read_text())
                print(f"--- {name}, seed {seed}: done before ({scored})", flush=True)
                resumed.append(f"{name} seed {seed} ({result.get('measured_at', 'time not recorded')})")
            else:
                result = run_one(name, seed, args, trl_pairs_file)
                result["credit"] = dev_credit(result, dev, recipe.max_length)
                scored.write_text(json.dumps(result))
            runs.setdefault(name, []).append(result)
            if not args.keep_models:
                shutil.rmtree(result["model_dir"], ignore_errors=True)
    mismatched = [f"{r['trainer']} seed {r['seed']}: {r['pairs_used']}" for rs in runs.values() for r in rs
                  if r["trainer"].startswith("TRL") and r["pairs_used"] != len(kept)]
    text = tables(runs, fits, prompts)
    trl_version = next((r["trl_version"] for rs in runs.values() for r in rs if "trl_version" in r), "not run")
    notes = [
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}; {args.threads} torch "
        f"threads in each run's own process, CPU, fp32. Recipe (rmserve's default, both trainers): max_length "
        f"{recipe.max_length}, AdamW lr {recipe.learning_rate}, {recipe.lr_schedule} schedule after "
        f"{int(args.steps * recipe.warmup_ratio)} warm-up steps, weight decay {recipe.weight_decay}, clipping "
        f"{recipe.max_grad_norm}, dropout {'on' if recipe.dropout else 'off'}, reward centering {recipe.center_rewards}; "
        f"{args.steps} steps of {BATCH_PAIRS} pairs for every run",
        "train s: the training steps only (rmserve's own clock around its step loop, TRL's from on_train_begin to "
        "on_train_end), mean over seeds; pairs/s = pairs trained / train s; peak RSS: the highest over seeds",
        f"train pairs used: TRL drops every pair whose prompt + reply + EOS ([SEP] here) exceeds max_length "
        f"({len(pairs) - len(kept)} of {len(pairs)}); 'rmserve on TRL's pairs' trains on exactly the {len(kept)} it keeps "
        f"(TRL's own filter reimplemented and checked against TRL's count"
        + (f": MISMATCH {mismatched})" if mismatched else ")") + "; rmserve holds out no calibration split here",
        f"dev accuracy: {len(dev)} shipped dev pairs (bad rows skipped), every model scored by one scorer here (saved "
        "directory, eager attention, fp32), each with the input format it was trained on (rmserve: its InputEncoder; "
        "TRL: prompt + reply + EOS, cut from the left when over max_length); equal scores count half",
        f"Δ: difference of the seed means; [95 % interval]: percentile bootstrap, {DIFFERENCE_RESAMPLES} resamples, "
        "each drawing the dev prompts (the same for both sides: paired) and each trainer's seeds with replacement",
    ]
    if resumed:  # accuracy does not depend on when a run trained; its speed depends on the machine's state then
        notes.append(f"resumed: {len(resumed)} of {sum(len(rs) for rs in runs.values())} runs were kept from an earlier "
                     f"invocation, and their train s and pairs/s were measured then, not beside the others: "
                     f"{'; '.join(resumed)}")
    print(text)
    print("\n".join(f"- {n}" for n in notes))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "threads": args.threads, "runs": runs}, indent=2))
    if not args.no_write:
        record_run("Training vs TRL, several seeds", f"base model all-MiniLM-L6-v2, shipped HH harmless train split, "
                   f"{len(args.seeds)} seeds per trainer", text + "\n\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
