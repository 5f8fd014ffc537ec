"""The training loop: preference groups → reward model checkpoint, on one process or many (torchrun).

Each optimizer step takes `batch_size` preference rows (pairs or whole rankings) in a length-grouped
order that depends only on (seed, epoch); with several processes each rank takes every world-size-th
row of the step's batch, and with gradient accumulation the rank's share is split into micro-batches.
The loss of a micro-batch is scaled by its share of the step's rows (and pairs, for the centering
term), so one process, several processes and any accumulation give the same update for the same batch.
Only rank 0 writes: the training log (JSONL, and TensorBoard when installed), resumable states and the
final checkpoint, which `rmserve.training.export` turns into a bundle.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from rmserve.service.core.inputs import InputEncoder
from rmserve.training.batching import EncodedGroup, collate, encode_groups, length_grouped_batches
from rmserve.training.config import TrainConfig
from rmserve.training.data import load_preferences, shipped_data
from rmserve.training.distributed import World, barrier, setup, sum_over_ranks, teardown
from rmserve.training.evaluate import TIE, pair_credit
from rmserve.training.log import TrainLog
from rmserve.training.losses import centering_penalty, listwise_mean, pair_losses
from rmserve.training.model import (
    TOKENIZER_FILE,
    CheckpointMeta,
    RewardModel,
    default_base_model,
    disable_dropout,
    input_spec_for,
    load_hf_model,
    save_checkpoint,
)
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import PreferencePair
from rmserve.training.splits import hold_out_calibration
from rmserve.training.state import clear_states, load_state, resolve_state, save_state

SCHEDULES = ("linear", "cosine", "constant")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def pair_accuracy_counts(delta: torch.Tensor, label: torch.Tensor) -> tuple[float, int]:
    """(right, counted) over pairs with a preference, as `rmserve eval` counts them (one rule,
    rmserve.training.evaluate.pair_credit): ties (label 0.5) have no right answer and are not counted; a pair the
    model scores exactly equal counts half."""
    delta_np, label_np = delta.detach().float().cpu().numpy(), label.detach().float().cpu().numpy()
    decided = label_np != TIE
    return float(pair_credit(delta_np[decided], label_np[decided]).sum()), int(decided.sum())


@torch.no_grad()
def dev_metrics(model: RewardModel, encoder: InputEncoder, pairs: list[PreferencePair], device: torch.device,
                batch_size: int = 32) -> dict[str, float]:
    """Dev loss (with each pair's label) and accuracy over pairs that have a preference."""
    was_training = model.training
    model.eval()
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    encoded = encoder.encode(rows)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    scores = torch.zeros(len(encoded))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = encoder.pad([encoded[i] for i in chunk])
        out = model(torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device))
        scores[chunk] = out.float().cpu()
    model.train(was_training)
    n = len(pairs)
    delta = scores[:n] - scores[n:]
    label = torch.tensor([p.label for p in pairs])
    right, counted = pair_accuracy_counts(delta, label)
    return {"pairs": n, "loss": float(pair_losses(delta, label, torch.zeros(n)).mean()),
            "accuracy": right / max(counted, 1)}


def _wrap_lora(hf_model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as e:
        raise RuntimeError("--lora-r needs the `peft` package (pip install peft)") from e
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(hf_model, lora)


def _micro_batches(ids: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(ids) / max(parts, 1))
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@dataclass
class StepStats:
    loss: float = 0.0
    right: float = 0.0  # equal scores count half
    counted: int = 0
    tokens: int = 0
    padded_tokens: int = 0

    def add(self, other: StepStats, weight: float) -> None:
        if weight:  # a zero-weight pass (a rank with no rows) contributes nothing
            for f in fields(self):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_list(self) -> list[float]:
        return list(astuple(self))


def train_step(model: torch.nn.Module, encoder: InputEncoder, groups: list[EncodedGroup], batch_ids: list[int],
               config: TrainConfig, world: World) -> StepStats:
    """Forward and backward for one optimizer step; returns this rank's share of the step's figures."""
    total_groups = len(batch_ids)
    total_pairs = sum(len(groups[i].better) for i in batch_ids)
    local, weight = batch_ids[world.rank :: world.size], 1.0
    if not local:  # fewer rows than ranks: join the collective with a zero-weight pass
        local, weight = batch_ids[:1], 0.0
    chunks = _micro_batches(local, config.gradient_accumulation_steps)
    stats = StepStats()
    for k, chunk in enumerate(chunks):
        batch = collate(encoder, [groups[i] for i in chunk]).to(world.device)
        last = k == len(chunks) - 1
        sync = contextlib.nullcontext() if (world.size == 1 or last) else model.no_sync()
        with sync:
            with torch.autocast(device_type=world.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                rewards = batch.rewards(model)
            better, worse = rewards[batch.better], rewards[batch.worse]
            per_pair = pair_losses(better - worse, batch.label, batch.margin)
            loss = listwise_mean(per_pair, batch.group_of_pair, batch.groups) * (batch.groups / total_groups)
            if config.center_rewards:
                loss = loss + config.center_rewards * centering_penalty(better, worse) * (len(per_pair) / total_pairs)
            # DDP averages gradients over ranks; the shares above already sum to the step's mean.
            (loss * weight * world.size).backward()
        right, counted = pair_accuracy_counts((better - worse).detach(), batch.label)
        stats.add(StepStats(float(loss.detach()), right, counted, batch.tokens, batch.padded_tokens), weight)
    return stats


def train(config: TrainConfig) -> dict:
    """Train, evaluate on the dev set, save the checkpoint; returns the metrics (on every rank)."""
    if config.lr_schedule not in SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, not {config.lr_schedule!r}")
    world = setup(config.device)
    try:
        return _train(config, world)
    finally:
        teardown(world)


def _train(config: TrainConfig, world: World) -> dict:
    say = print if world.is_main else (lambda *a, **k: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    output_dir = Path(config.output_dir)
    base = Path(config.base_model) if config.base_model else default_base_model()
    train_path = Path(config.train_data) if config.train_data else shipped_data("train")
    dev_path = Path(config.dev_data) if config.dev_data else shipped_data("dev")
    ratings = RatingOptions.from_config(config)
    train_file = load_preferences(train_path, config.limit_train, config.skip_bad_rows, ratings)
    train_file, calibration = hold_out_calibration(train_file, config.calibration_split)
    if calibration:
        say(f"held out {len(calibration)} of {len(train_file.groups) + len(calibration)} training rows, whose prompts "
            f"are in the calibration split (--calibration-split {config.calibration_split}): export fits the "
            "calibration temperature on them")
    dev_file = load_preferences(dev_path, config.limit_dev, config.skip_bad_rows, ratings)
    for name, loaded in (("train", train_file), ("dev", dev_file)):
        if loaded.ratings:  # a ratings file: say what became of every rated response
            say(f"{name} ratings {loaded.path.name}: {loaded.ratings.summary()}")
    skipped = train_file.skipped + dev_file.skipped
    for bad in skipped:
        say(f"skipped bad row: {bad}")
    if skipped:
        say(f"skipped {len(skipped)} bad rows ({len(train_file.skipped)} train, {len(dev_file.skipped)} dev)")

    tokenizer_path = base / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{base} has no {TOKENIZER_FILE}; rmserve needs a fast tokenizer file")
    hf_model = load_hf_model(base, attention="sdpa", layers=config.base_layers)
    if not config.dropout:
        disable_dropout(hf_model)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    spec = input_spec_for(hf_model, tokenizer, config.max_length)
    encoder = InputEncoder(tokenizer, spec)
    if config.gradient_checkpointing:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora_r:
        hf_model = _wrap_lora(hf_model, config)
    model = RewardModel(hf_model).to(world.device)

    groups = encode_groups(encoder, train_file.groups)
    pair_count = sum(len(g.better) for g in groups)
    rows = sum(len(g.rows) for g in groups)
    truncated = sum(g.truncated_rows for g in groups)
    lengths = [g.length for g in groups]
    steps_per_epoch = math.ceil(len(groups) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel: on CPU one AdamW step of MiniLM took 2.2 s single-tensor, 0.15 s fused (bench/train.py).
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, config.lr_schedule))
    start_step = 0
    if config.resume_from:
        state_path = resolve_state(config.resume_from, output_dir)
        start_step = load_state(state_path, model, optimizer, scheduler, config)
        say(f"resumed from {state_path} at step {start_step}")
    elif world.is_main and (cleared := clear_states(output_dir)):
        say(f"removed {cleared} resumable training states of an earlier run from {output_dir / 'training_state'}")
    ddp_model: torch.nn.Module = model
    if world.size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)

    say(f"training {base.name} on {len(groups)} rows ({pair_count} pairs, {rows} responses) from {train_path.name}: "
        f"max_length {spec.max_length}, {truncated} of {rows} responses truncated (prompt cut first), "
        f"{total_steps} steps of {config.batch_size} rows on {world.size} × {world.device.type}")
    log = TrainLog(output_dir, config.tensorboard, resumed=start_step > 0) if world.is_main else None
    model.train()
    started, step_seconds = time.perf_counter(), 0.0
    recent_loss, recent_acc, pairs_done, tokens_done, padded_done = [], [], 0, 0.0, 0.0
    epoch_batches: dict[int, list[list[int]]] = {}
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not (config.progress and world.is_main))
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: length_grouped_batches(lengths, config.batch_size, config.seed, epoch)}
        batch_ids = epoch_batches[epoch][index]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        stats = train_step(ddp_model, encoder, groups, batch_ids, config, world)
        grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm) if config.max_grad_norm > 0
                     else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None])))
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        step_seconds += time.perf_counter() - t0
        loss, right, counted, tokens, padded = sum_over_ranks(stats.as_list(), world)
        tokens_done, padded_done = tokens_done + tokens, padded_done + padded
        step_pairs = sum(len(groups[i].better) for i in batch_ids)
        pairs_done += step_pairs
        recent_loss.append(loss)
        recent_acc.append(right / max(counted, 1))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent_loss[-20:]):.3f}", acc=f"{np.mean(recent_acc[-20:]):.2f}")
        done = step + 1
        if log and (done % max(config.log_steps, 1) == 0 or done == total_steps):
            log.write({"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": loss,
                       "accuracy": recent_acc[-1], "lr": lr_used, "grad_norm": float(grad_norm),
                       "pairs_per_s": pairs_done / max(step_seconds, 1e-9)})
        if config.eval_steps and done % config.eval_steps == 0 and done != total_steps:
            if world.is_main:
                dev = dev_metrics(model, encoder, dev_file.pairs, world.device)
                log.write({"step": done, "dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"]})  # type: ignore[union-attr]
            barrier(world)
        if config.save_steps and done % config.save_steps == 0 and done != total_steps:
            if world.is_main:
                save_state(output_dir, done, model, optimizer, scheduler, config, config.save_total_limit)
            barrier(world)
    bar.close()
    train_seconds = time.perf_counter() - started

    metrics: dict = {}
    if world.is_main:
        dev = dev_metrics(model, encoder, dev_file.pairs, world.device)
        metrics = {
            "train_rows": len(groups),
            "train_pairs": pair_count,
            "train_steps": total_steps,
            "resumed_at_step": start_step,
            "train_seconds": round(train_seconds, 1),
            "train_pairs_seen": pairs_done,
            "train_pairs_per_s": round(pairs_done / max(step_seconds, 1e-9), 2),
            "train_tokens": int(tokens_done),
            "train_padding": round(1 - tokens_done / max(padded_done, 1), 4),
            "train_loss_last20": float(np.mean(recent_loss[-20:])) if recent_loss else None,
            "truncated_rows": truncated,
            "skipped_rows": len(skipped),
            "world_size": world.size,
            "dev_pairs": dev["pairs"],
            "dev_loss": dev["loss"],
            "dev_accuracy": dev["accuracy"],
        }
        log.write({"step": total_steps, "dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"]})  # type: ignore[union-attr]
        log.close()  # type: ignore[union-attr]
        say(f"dev: accuracy {dev['accuracy']:.4f}, loss {dev['loss']:.4f} on {dev['pairs']} pairs; "
            f"training took {train_seconds:.0f} s ({metrics['train_pairs_per_s']} pairs/s)")
        if config.lora_r:
            model.hf_model = model.hf_model.merge_and_unload()  # a plain model directory, as export expects
        meta = CheckpointMeta(
            base_model=str(base),
            input=spec.model_dump(),
            training={**asdict(config), "train_data": str(train_path), "dev_data": str(dev_path)},
            metrics=metrics,
        )
        save_checkpoint(output_dir, model, tokenizer_path, meta)
        say(f"checkpoint written to {output_dir}")
    barrier(world)
    return metrics
