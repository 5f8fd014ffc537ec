"""Resumable training state: what a stopped run needs to end with the same weights as one that never stopped.

A state directory `OUTPUT_DIR/training_state/step-N/` holds the trainable weights, the optimizer and
scheduler states, torch's RNG state, the step, and the options that decide the result. The batch order
is not stored: it is a pure function of (seed, epoch) (training/batching.py), so the resumed run skips
the batches already seen. Options that do not change the result (progress bar, logging, where to save)
may differ on resume; any other difference is refused with the names of the options.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from rmserve.training.config import TrainConfig

STATE_DIR = "training_state"
# Options that may change between an interrupted run and its resumption without changing the result.
FREE_ON_RESUME = {"output_dir", "resume_from", "progress", "save_steps", "save_total_limit", "eval_steps",
                  "log_steps", "tensorboard", "threads"}


def result_options(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in FREE_ON_RESUME}


def save_state(output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig, keep: int) -> Path:
    root = output_dir / STATE_DIR
    target = root / f"step-{step}"
    partial = root / f".step-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(model.state_dict(), partial / "model.pt")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save({"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}, partial / "extra.pt")
    (partial / "state.json").write_text(json.dumps({"step": step, "options": result_options(config)}, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a state directory exists only once complete
    states = sorted(list_states(output_dir), key=lambda p: int(p.name.split("-")[1]))
    for old in states[: max(0, len(states) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_states(output_dir: Path) -> list[Path]:
    root = output_dir / STATE_DIR
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]


def clear_states(output_dir: Path) -> int:
    """Remove the states an earlier run left in `output_dir` (a new run there starts its own); returns how many.
    Left in place, pruning by step number would keep an older run's later steps and delete the new run's."""
    states = list_states(output_dir)
    shutil.rmtree(output_dir / STATE_DIR, ignore_errors=True)
    return len(states)


def resolve_state(resume_from: str, output_dir: Path) -> Path:
    if resume_from == "latest":
        states = list_states(output_dir)
        if not states:
            raise FileNotFoundError(f"--resume-from latest: no saved training state in {output_dir / STATE_DIR}")
        return max(states, key=lambda p: int(p.name.split("-")[1]))
    path = Path(resume_from)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume-from {path}: not a training state directory (no state.json)")
    return path


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig) -> int:
    """Restore a saved state into freshly built objects; returns the step to continue from."""
    meta = json.loads((path / "state.json").read_text())
    saved, now = meta["options"], result_options(config)
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise ValueError(f"cannot resume from {path}: options differ from the interrupted run ({detail})")
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    extra = torch.load(path / "extra.pt", map_location="cpu", weights_only=False)
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return int(meta["step"])
