"""Pairwise Bradley–Terry training of a reward model, with a progress bar and a dev evaluation.

Chosen and rejected responses of a batch go through the model in one forward pass. Batches are drawn in
length-grouped order (shuffled windows, sorted inside) so that padding costs little. The result is a
checkpoint directory that `training.export` turns into a bundle.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from service.inputs import EncodedInput, InputEncoder, InputSpec
from training.config import TrainConfig
from training.data import PreferencePair, load_pairs, shipped_data
from training.losses import bradley_terry_loss, pairwise_accuracy
from training.model import (
    TOKENIZER_FILE,
    CheckpointMeta,
    RewardModel,
    default_base_model,
    disable_dropout,
    load_hf_model,
    pad_id_of,
    save_checkpoint,
    score_rows,
)


def _length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def evaluate_pairs(model: RewardModel, encoder: InputEncoder, pairs: list[PreferencePair]) -> dict[str, float]:
    chosen = torch.tensor(score_rows(model, encoder, [(p.prompt, p.chosen) for p in pairs]))
    rejected = torch.tensor(score_rows(model, encoder, [(p.prompt, p.rejected) for p in pairs]))
    return {
        "pairs": len(pairs),
        "loss": float(bradley_terry_loss(chosen, rejected)),
        "accuracy": pairwise_accuracy(chosen, rejected),
    }


def train(config: TrainConfig) -> dict:
    """Train, evaluate on the dev set, save the checkpoint; returns the metrics."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    base = Path(config.base_model) if config.base_model else default_base_model()
    train_path = Path(config.train_data) if config.train_data else shipped_data("train")
    dev_path = Path(config.dev_data) if config.dev_data else shipped_data("dev")
    train_file = load_pairs(train_path, config.limit_train, config.skip_bad_rows)
    dev_file = load_pairs(dev_path, config.limit_dev, config.skip_bad_rows)
    for skipped in train_file.skipped + dev_file.skipped:
        print(f"skipped bad row: {skipped}")

    tokenizer_path = base / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{base} has no {TOKENIZER_FILE}; rmserve needs a fast tokenizer file")
    hf_model = load_hf_model(base, attention="sdpa")
    if not config.dropout:
        disable_dropout(hf_model)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    spec = InputSpec(max_length=config.max_length, pad_id=pad_id_of(tokenizer, hf_model.config))
    encoder = InputEncoder(tokenizer, spec)
    model = RewardModel(hf_model)

    pairs = train_file.pairs
    chosen_rows = encoder.encode([(p.prompt, p.chosen) for p in pairs])
    rejected_rows = encoder.encode([(p.prompt, p.rejected) for p in pairs])
    truncated = sum(r.truncated for r in chosen_rows + rejected_rows)
    lengths = [max(len(c.ids), len(r.ids)) for c, r in zip(chosen_rows, rejected_rows)]

    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = int(total_steps * config.warmup_ratio)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    print(
        f"training {base.name} on {len(pairs)} pairs from {train_path.name} "
        f"(max_length {spec.max_length}, {truncated} of {2 * len(pairs)} rows truncated), "
        f"{total_steps} steps of {config.batch_size} pairs"
    )
    model.train()
    started = time.perf_counter()
    step, losses, accuracies = 0, [], []
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not config.progress)
    while step < total_steps:
        for batch_ids in _length_grouped_batches(lengths, config.batch_size, rng):
            if step >= total_steps:
                break
            rows: list[EncodedInput] = [chosen_rows[i] for i in batch_ids] + [rejected_rows[i] for i in batch_ids]
            batch = encoder.pad(rows)
            rewards = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
            chosen, rejected = rewards[: len(batch_ids)], rewards[len(batch_ids) :]
            loss = bradley_terry_loss(chosen, rejected)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            accuracies.append(pairwise_accuracy(chosen.detach(), rejected.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(accuracies[-20:]):.2f}")
    bar.close()
    train_seconds = time.perf_counter() - started

    dev = evaluate_pairs(model, encoder, dev_file.pairs)
    metrics = {
        "train_pairs": len(pairs),
        "train_steps": step,
        "train_seconds": round(train_seconds, 1),
        "train_loss_last20": float(np.mean(losses[-20:])),
        "truncated_rows": truncated,
        "skipped_rows": len(train_file.skipped) + len(dev_file.skipped),
        "dev_pairs": dev["pairs"],
        "dev_loss": dev["loss"],
        "dev_accuracy": dev["accuracy"],
    }
    print(
        f"dev: accuracy {dev['accuracy']:.4f}, loss {dev['loss']:.4f} on {dev['pairs']} pairs; "
        f"training took {train_seconds:.0f} s"
    )
    meta = CheckpointMeta(
        base_model=str(base),
        input=spec.model_dump(),
        training={**asdict(config), "train_data": str(train_path), "dev_data": str(dev_path)},
        metrics=metrics,
    )
    save_checkpoint(Path(config.output_dir), model, tokenizer_path, meta)
    print(f"checkpoint written to {config.output_dir}")
    return metrics
