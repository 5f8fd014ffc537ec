"""Training benchmark: rmserve's trainer against TRL's RewardTrainer (PyPI `trl`), in one run.

Same base model (all-MiniLM-L6-v2), pairs (shipped HH harmless train split, bad rows skipped), max_length,
batch size, learning rate and schedule, seed, threads and number of steps; CPU, fp32, dropout off. Each
trainer runs in its own subprocess (its own peak RSS); only the training steps are timed. Both trained
models are then scored on the same dev pairs by one scorer here. Prints a table and appends it to
docs/benchmarks.md; the notes it prints say exactly how each side was set up and measured.

    python bench/train.py                                  # one epoch (104 steps of 16 pairs)
    python bench/train.py --steps 5 --limit-train 160 --no-write

TRL gets its fairest setup: gradient checkpointing and bf16 off (its defaults are on), SDPA attention as
rmserve uses, no evaluation or checkpoints during training, pairs as explicit prompt/chosen/rejected
text. It appends an EOS ([SEP] for this BERT tokenizer, which has none) and drops pairs longer than
max_length, where rmserve cuts the prompt from the left. Two TRL rows by default: its random batches, and
the Trainer's length-grouped sampler, the closest it has to rmserve's length-grouped batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.record import record_run  # noqa: E402
from rmserve.service.core.inputs import InputSpec, render_prompt  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.data import load_pairs, shipped_data  # noqa: E402
from rmserve.training.records import PreferencePair  # noqa: E402

BATCH_PAIRS = 16
MAX_LENGTH = 256
SAMPLERS = ("random", "group_by_length")


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float | None:
    """This process's resident set size now (Linux only)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def train_pairs(limit: int | None) -> list[PreferencePair]:
    return load_pairs(shipped_data("train"), limit, skip_bad_rows=True).pairs


def trl_texts(pairs: list[PreferencePair], eos: str) -> tuple[list[str], list[str]]:
    """Chosen and rejected texts exactly as TRL builds them from an explicit-prompt row: prompt + reply + EOS."""
    spec = InputSpec()
    prompts = [render_prompt(p.prompt, spec) for p in pairs]
    return ([q + p.chosen + eos for q, p in zip(prompts, pairs)],
            [q + p.rejected + eos for q, p in zip(prompts, pairs)])


# ---------------------------------------------------------------- child processes (one trainer each)


def _before(module, name: str, hook) -> None:
    """Run hook(*args) ahead of each call of module.name, if the trainer has it: measures, changes nothing."""
    if hasattr(module, name):
        inner = getattr(module, name)

        def wrapped(*a, **k):
            hook(*a, **k)
            return inner(*a, **k)

        setattr(module, name, wrapped)


def child_rmserve(args: argparse.Namespace) -> dict:
    import dataclasses

    import rmserve.training.train as rm_train

    seen: dict[str, float] = {}
    # train() opens its progress bar as the step loop starts and evaluates on the dev set right after it.
    _before(rm_train, "tqdm", lambda *_, **__: seen.setdefault("rss_start_mb", rss_mb()))
    _before(rm_train, "dev_metrics", lambda *_, **__: seen.setdefault("peak_rss_mb", peak_rss_mb()))
    defaults = TrainConfig()
    out = Path(args.work_dir) / "rmserve"
    options = dict(
        output_dir=str(out), max_length=MAX_LENGTH, batch_size=BATCH_PAIRS, max_steps=args.steps,
        learning_rate=defaults.learning_rate, warmup_ratio=defaults.warmup_ratio, weight_decay=defaults.weight_decay,
        dropout=False, seed=args.seed, limit_train=args.limit_train, limit_dev=args.limit_dev, skip_bad_rows=True,
        threads=args.threads, progress=False,
        device="cpu", tensorboard=False, bf16=False, gradient_checkpointing=False,  # where the trainer has them
    )
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    metrics = rm_train.train(TrainConfig(**{k: v for k, v in options.items() if k in fields}))
    return {
        "model_dir": str(out),
        "train_seconds": metrics["train_seconds"],  # rmserve's own clock around its step loop
        "steps": metrics["train_steps"],
        "pairs_trained": metrics["train_pairs_seen"],
        "tokens_trained": metrics["train_tokens"],
        "padded_tokens": metrics["train_tokens"] / (1 - metrics["train_padding"]),
        "peak_rss_mb": seen.get("peak_rss_mb", peak_rss_mb()),  # at process end if the hook never ran
        "peak_at": "end of training" if "peak_rss_mb" in seen else "end of process (after evaluation and saving)",
        "rss_start_mb": seen.get("rss_start_mb"),
        "pairs_available": metrics["train_pairs"],
        "pairs_used": metrics["train_pairs"],
        "truncated_rows": metrics["truncated_rows"],
        "own_dev_accuracy": metrics["dev_accuracy"],
    }


def child_trl(args: argparse.Namespace) -> dict:
    import time

    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rmserve.training.model import default_base_model

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    defaults = TrainConfig()
    base = default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    eos = tokenizer.eos_token or tokenizer.sep_token  # BERT has no EOS; TRL needs one to append
    pairs = train_pairs(args.limit_train)
    spec = InputSpec()
    columns = {
        "prompt": [render_prompt(p.prompt, spec) for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
    }
    grouped = args.sampler == "group_by_length"
    if grouped:
        # The Trainer's length-grouped sampler needs a length column (RewardTrainer's rows have no input_ids);
        # the longer of the two texts sets the padded width of a pair.
        chosen, rejected = trl_texts(pairs, eos)
        lengths = tokenizer(chosen + rejected)["input_ids"]
        columns["length"] = [max(len(lengths[i]), len(lengths[len(pairs) + i])) for i in range(len(pairs))]

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.rss_start_mb = rss_mb()
            self.began = time.perf_counter()

        def on_train_end(self, *_, **__):
            self.seconds = time.perf_counter() - self.began
            self.peak_rss_mb = peak_rss_mb()

    clock = Clock()
    out = Path(args.work_dir) / f"trl-{args.sampler}"
    config = RewardConfig(
        output_dir=str(out), max_length=MAX_LENGTH, per_device_train_batch_size=BATCH_PAIRS,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=defaults.learning_rate,
        lr_scheduler_type="linear", warmup_steps=int(args.steps * defaults.warmup_ratio),
        weight_decay=defaults.weight_decay, max_grad_norm=1.0, seed=args.seed, disable_dropout=True,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, eos_token=eos,
        eval_strategy="no", save_strategy="no", report_to="none", logging_steps=max(1, args.steps // 5),
        disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy=args.sampler, remove_unused_columns=not grouped,
        model_init_kwargs={"attn_implementation": "sdpa"},
    )

    class CountingRewardTrainer(RewardTrainer):
        pairs_trained = tokens_trained = padded_tokens = 0

        def compute_loss(self, model, inputs, *a, **k):
            if model.training:
                self.pairs_trained += inputs["input_ids"].shape[0] // 2  # chosen rows, then rejected rows
                self.tokens_trained += int(inputs["attention_mask"].sum())
                self.padded_tokens += inputs["attention_mask"].numel()
            return super().compute_loss(model, inputs, *a, **k)

    trainer = CountingRewardTrainer(model=str(base), args=config, train_dataset=datasets.Dataset.from_dict(columns),
                                    processing_class=tokenizer, callbacks=[clock])
    kept = len(trainer.train_dataset)
    trainer.train()
    trainer.save_model(str(out))
    return {
        "model_dir": str(out),
        "train_seconds": clock.seconds,
        "steps": trainer.state.global_step,
        "pairs_trained": trainer.pairs_trained,
        "peak_rss_mb": clock.peak_rss_mb,
        "rss_start_mb": clock.rss_start_mb,
        "pairs_available": len(pairs),
        "pairs_used": kept,
        "tokens_trained": trainer.tokens_trained,
        "padded_tokens": trainer.padded_tokens,
        "trl_version": trl.__version__,
        "eos": eos,
    }


# ---------------------------------------------------------------- evaluation (one scorer for both)


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


def accuracy(chosen: list[float], rejected: list[float], keep: list[bool]) -> float:
    wins = [c > r for c, r, k in zip(chosen, rejected, keep) if k]
    return sum(wins) / len(wins) if wins else float("nan")


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


def trl_rows(model_dir: str, dev: list[PreferencePair], eos: str) -> tuple[list[list[int]], list[list[int]], int, list[bool]]:
    """Dev rows as TRL trained on them (prompt + reply + EOS through its saved tokenizer). TRL has no
    truncation (it drops long pairs), so rows over max_length are cut from the left here, keeping the end
    of the response; also says which pairs fit without cutting."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.truncation_side = "left"
    chosen_text, rejected_text = trl_texts(dev, eos)
    full = tokenizer(chosen_text + rejected_text)["input_ids"]
    cut = tokenizer(chosen_text + rejected_text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    n = len(dev)
    fits = [len(full[i]) <= MAX_LENGTH and len(full[n + i]) <= MAX_LENGTH for i in range(n)]
    return cut[:n], cut[n:], tokenizer.pad_token_id, fits


def evaluate(results: dict[str, dict], dev: list[PreferencePair]) -> list[bool]:
    """Adds dev accuracy (all pairs, and pairs that fit TRL's max_length) to each result; returns the fit mask."""
    from transformers import AutoTokenizer

    from rmserve.training.model import default_base_model

    base = AutoTokenizer.from_pretrained(str(default_base_model()))
    fits = trl_rows(str(default_base_model()), dev, base.eos_token or base.sep_token)[3]
    for name, result in results.items():
        if name == "rmserve":
            chosen, rejected, pad_id = rmserve_rows(result["model_dir"], dev)
        else:
            chosen, rejected, pad_id, _ = trl_rows(result["model_dir"], dev, result["eos"])
        chosen_scores = score_ids(result["model_dir"], chosen + rejected, pad_id)
        c, r = chosen_scores[: len(dev)], chosen_scores[len(dev) :]
        result["dev_accuracy"] = accuracy(c, r, [True] * len(dev))
        result["dev_accuracy_fit"] = accuracy(c, r, fits)
    return fits


# ---------------------------------------------------------------- parent


def run_child(name: str, args: argparse.Namespace, sampler: str = "random") -> dict:
    out = Path(args.work_dir) / f"{name}-{sampler}-result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-result", str(out),
           "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
           "--work-dir", args.work_dir, "--sampler", sampler]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    if args.limit_dev:
        cmd += ["--limit-dev", str(args.limit_dev)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"--- {name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return json.loads(out.read_text())


def table(results: dict[str, dict]) -> str:
    rates = {name: r["pairs_trained"] / r["train_seconds"] for name, r in results.items()}
    lines = ["| trainer | steps (pairs) | train s | pairs/s | rmserve × | peak RSS MB (at start) | dev accuracy (all) | "
             "dev accuracy (fit 256) | train pairs used | tokens/pair | padding | tokens/s |", "|" + "---|" * 12]
    for name, r in results.items():
        ratio = f"{rates['rmserve'] / rates[name]:.2f}" if "rmserve" in rates else ""
        if name == "rmserve":
            used = f"{r['pairs_used']}/{r['pairs_available']} ({r['truncated_rows']} rows cut)"
        else:
            used = f"{r['pairs_used']}/{r['pairs_available']} ({r['pairs_available'] - r['pairs_used']} dropped)"
        tokens = r["tokens_trained"]
        token_cells = (f"{tokens / r['pairs_trained']:.0f} | {1 - tokens / r['padded_tokens']:.1%} | "
                       f"{tokens / r['train_seconds']:.0f}") if tokens else " |  | "
        lines.append(f"| {name} | {r['steps']} ({r['pairs_trained']}) | {r['train_seconds']:.1f} | {rates[name]:.2f} | "
                     f"{ratio} | {r['peak_rss_mb']:.0f} ({r['rss_start_mb'] or 0:.0f}) | {r['dev_accuracy']:.4f} | {r['dev_accuracy_fit']:.4f} | "
                     f"{used} | {token_cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps of 16 pairs. Default: one epoch.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each trainer. Default: torch's default.")
    parser.add_argument("--only", choices=["rmserve", "trl"], default=None, help="Run one side only.")
    parser.add_argument("--sampler", nargs="+", choices=SAMPLERS, default=list(SAMPLERS),
                        help="TRL batch orders to run: its default random batches and/or the Trainer's length-grouped sampler.")
    parser.add_argument("--limit-train", type=int, default=None, help="Use only the first N training pairs.")
    parser.add_argument("--limit-dev", type=int, default=None, help="Evaluate on the first N dev pairs only.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(ROOT / "artifacts" / "bench-train"), help="Where trained models go.")
    parser.add_argument("--json", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    parser.add_argument("--child", choices=["rmserve", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--child-result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "rmserve":
            result = child_rmserve(args)
        else:
            args.sampler = args.sampler[0]
            result = child_trl(args)
        Path(args.child_result).write_text(json.dumps(result, indent=2))
        return

    import torch
    import transformers

    pairs = train_pairs(args.limit_train)
    args.steps = args.steps or math.ceil(len(pairs) / BATCH_PAIRS)
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    print(f"{len(pairs)} training pairs, {args.steps} steps of {BATCH_PAIRS} pairs, max_length {MAX_LENGTH}, "
          f"{args.threads} torch threads")

    results: dict[str, dict] = {}
    if args.only in (None, "rmserve"):
        results["rmserve"] = run_child("rmserve", args)
    if args.only in (None, "trl"):
        for sampler in args.sampler:
            results[f"TRL RewardTrainer ({sampler})"] = run_child("trl", args, sampler)

    dev = load_pairs(shipped_data("dev"), args.limit_dev, skip_bad_rows=True).pairs
    fits = evaluate(results, dev)
    text = table(results)
    trl_version = next((r["trl_version"] for r in results.values() if "trl_version" in r), "not run")
    warmup = int(args.steps * TrainConfig().warmup_ratio)
    notes = [
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}; "
        f"{args.threads} torch threads in each trainer's own process, CPU, fp32, dropout off, AdamW lr "
        f"{TrainConfig().learning_rate}, {warmup} warm-up steps then linear decay to 0 (TRL's warm-up starts at 0, "
        f"rmserve's at lr/{warmup + 1}), gradient clipping 1.0, seed {args.seed}",
        "train s: the training steps only (model loading, tokenization, evaluation and saving excluded): rmserve's "
        "own clock around its step loop, TRL's from on_train_begin to on_train_end; pairs/s = pairs trained / "
        "train s (16 pairs a step; an epoch's last batch may be shorter)",
        "peak RSS: ru_maxrss of each trainer's own process read when training ends; at start: RSS when the step "
        "loop begins (model and data loaded, before optimizer state; TRL's process also holds datasets/pyarrow/accelerate)",
        f"dev accuracy: {len(dev)} shipped dev pairs (bad rows skipped), both models scored by one scorer (saved "
        "directory, eager attention, fp32, batches of 32 sorted by length; right = chosen scores strictly higher), "
        "each with the input format it was trained on: rmserve's InputEncoder (pair template, prompt cut from the "
        "left); TRL's prompt + reply + EOS through its saved tokenizer, cut from the left when over max_length "
        f"(TRL itself would drop such pairs); 'fit 256' = the {sum(fits)} pairs whose TRL rows fit uncut",
        "train pairs used: TRL drops every pair whose prompt + response (with [CLS], [SEP] and its EOS, [SEP] "
        "here) exceeds max_length; rmserve keeps all and cuts the prompt from the left. tokens/pair: non-pad "
        "tokens (chosen + rejected) per pair trained (TRL trains none of the pairs over max_length); padding: "
        "share of the padded batches that is padding; tokens/s: non-pad tokens trained per second",
        "TRL samplers: random = its default batches; group_by_length = the Trainer's LengthGroupedSampler "
        "(length column = the longer row of a pair; remove_unused_columns off so the column reaches it)",
    ]
    if "rmserve" in results:
        rm = results["rmserve"]
        notes.append(f"rmserve's own dev evaluation inside `train()`: {rm['own_dev_accuracy']:.4f}")
        if rm["peak_at"] != "end of training":
            notes.append(f"rmserve's peak RSS read at the {rm['peak_at']}")
    print(text)
    print("\n".join(f"- {n}" for n in notes))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "threads": args.threads, "results": results}, indent=2))
    if not args.no_write:
        record_run("Training vs TRL", f"base model all-MiniLM-L6-v2, shipped HH harmless train split, max_length "
                   f"{MAX_LENGTH}, {args.steps} steps of {BATCH_PAIRS} pairs", text + "\n\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
