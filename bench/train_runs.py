"""The training runs bench/train.py compares, each in its own process (its own peak RSS): rmserve's trainer
and TRL's RewardTrainer (PyPI `trl`) on the same recipe, and the pairs TRL keeps.

    python bench/train_runs.py rmserve|trl --result FILE --steps N --seed S --threads T --work-dir DIR
                               [--train-file PAIRS] [--sampler random|group_by_length] [--limit-train N]

Both trainers get rmserve's default recipe (training/config.py: max_length, learning rate, schedule,
warm-up, weight decay, clipping, dropout, reward centering) with 16 pairs a step, CPU, fp32, SDPA attention,
no evaluation or checkpoints during training. TRL gets its fairest setup: gradient checkpointing and bf16
off (its defaults are on), pairs as explicit prompt/chosen/rejected text. It appends an EOS ([SEP] for this
BERT tokenizer, which has none) and drops every pair whose prompt + reply + EOS is longer than max_length;
`trl_fits` says which pairs those are, by TRL's own rule, so rmserve can be given the same pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rmserve.service.core.inputs import InputSpec, render_prompt  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.data import load_pairs, shipped_data  # noqa: E402
from rmserve.training.records import PreferencePair  # noqa: E402

BATCH_PAIRS = 16
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


def train_pairs(path: str | Path | None = None, limit: int | None = None) -> list[PreferencePair]:
    return load_pairs(path or shipped_data("train"), limit, skip_bad_rows=True).pairs


def steps_for(pairs: int, recipe: TrainConfig) -> int:
    """Optimizer steps of the default recipe's epochs over `pairs` pairs, 16 a step."""
    return max(1, math.ceil(pairs / BATCH_PAIRS * recipe.epochs))


def trl_texts(pairs: list[PreferencePair], eos: str) -> tuple[list[str], list[str]]:
    """Chosen and rejected texts exactly as TRL builds them from an explicit-prompt row: prompt + reply + EOS."""
    spec = InputSpec()
    prompts = [render_prompt(p.prompt, spec) for p in pairs]
    return ([q + p.chosen + eos for q, p in zip(prompts, pairs)],
            [q + p.rejected + eos for q, p in zip(prompts, pairs)])


def trl_fits(pairs: list[PreferencePair], tokenizer, eos: str, max_length: int) -> list[bool]:
    """TRL's filter: both texts, tokenized with the tokenizer's special tokens, within max_length."""
    chosen, rejected = trl_texts(pairs, eos)
    ids = tokenizer(chosen + rejected)["input_ids"]
    n = len(pairs)
    return [len(ids[i]) <= max_length and len(ids[n + i]) <= max_length for i in range(n)]


def write_pairs(pairs: list[PreferencePair], path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs))
    return path


def _before(module, name: str, hook) -> None:
    """Run hook(*args) ahead of each call of module.name, if the trainer has it: measures, changes nothing."""
    if hasattr(module, name):
        inner = getattr(module, name)

        def wrapped(*a, **k):
            hook(*a, **k)
            return inner(*a, **k)

        setattr(module, name, wrapped)


def run_rmserve(args: argparse.Namespace) -> dict:
    import dataclasses

    import rmserve.training.train as rm_train

    seen: dict[str, float] = {}
    # train() opens its progress bar as the step loop starts and evaluates on the dev set right after it.
    _before(rm_train, "tqdm", lambda *_, **__: seen.setdefault("rss_start_mb", rss_mb()))
    _before(rm_train, "dev_metrics", lambda *_, **__: seen.setdefault("peak_rss_mb", peak_rss_mb()))
    out = Path(args.work_dir) / args.name
    recipe = dataclasses.replace(
        TrainConfig(), output_dir=str(out), train_data=args.train_file, batch_size=BATCH_PAIRS, max_steps=args.steps,
        seed=args.seed, limit_train=args.limit_train, limit_dev=args.limit_dev, skip_bad_rows=True,
        calibration_split=0.0,  # the same pairs as TRL: none held out for calibration
        threads=args.threads, progress=False, device="cpu", tensorboard=False, bf16=False, gradient_checkpointing=False)
    metrics = rm_train.train(recipe)
    return {
        "model_dir": str(out),
        "train_seconds": metrics["train_seconds"],  # rmserve's own clock around its step loop
        "steps": metrics["train_steps"],
        "pairs_trained": metrics["train_pairs_seen"],
        "tokens_trained": metrics["train_tokens"],
        "padded_tokens": metrics["train_tokens"] / (1 - metrics["train_padding"]),
        "peak_rss_mb": seen.get("peak_rss_mb", peak_rss_mb()),  # at process end if the hook never ran
        "rss_start_mb": seen.get("rss_start_mb"),
        "pairs_available": metrics["train_pairs"],
        "pairs_used": metrics["train_pairs"],
        "truncated_rows": metrics["truncated_rows"],
    }


def run_trl(args: argparse.Namespace) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rmserve.training.model import default_base_model

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    recipe = TrainConfig()
    base = default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    eos = tokenizer.eos_token or tokenizer.sep_token  # BERT has no EOS; TRL needs one to append
    pairs = train_pairs(args.train_file, args.limit_train)
    spec = InputSpec()
    columns = {"prompt": [render_prompt(p.prompt, spec) for p in pairs],
               "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs]}
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
    out = Path(args.work_dir) / args.name
    config = RewardConfig(
        output_dir=str(out), max_length=recipe.max_length, per_device_train_batch_size=BATCH_PAIRS,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_schedule, warmup_steps=int(args.steps * recipe.warmup_ratio),
        weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm, seed=args.seed,
        disable_dropout=not recipe.dropout, center_rewards_coefficient=recipe.center_rewards or None,
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
        "model_dir": str(out), "train_seconds": clock.seconds, "steps": trainer.state.global_step,
        "pairs_trained": trainer.pairs_trained, "peak_rss_mb": clock.peak_rss_mb, "rss_start_mb": clock.rss_start_mb,
        "pairs_available": len(pairs), "pairs_used": kept, "tokens_trained": trainer.tokens_trained,
        "padded_tokens": trainer.padded_tokens, "trl_version": trl.__version__, "eos": eos,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainer", choices=["rmserve", "trl"])
    parser.add_argument("--name", required=True, help="Run name: the model directory under --work-dir.")
    parser.add_argument("--result", required=True, help="JSON file to write the run's figures to.")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--train-file", default=None, help="Pairs to train on. Default: the shipped train split.")
    parser.add_argument("--sampler", choices=SAMPLERS, default="random", help="TRL's batch order.")
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-dev", type=int, default=None)
    args = parser.parse_args()
    result = run_rmserve(args) if args.trainer == "rmserve" else run_trl(args)
    Path(args.result).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
