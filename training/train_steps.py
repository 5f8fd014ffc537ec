"""Training a process reward model (`rmserve train --task prm`): step-labelled chains → a PRM checkpoint.

Each chain is one row: its prompt and its steps joined with the step separator (service/core/inputs.py
renders, tokenizes and truncates it exactly as serving will, keeping the last steps when it is too long).
The model (training/step_model.py) scores every position; the loss is binary cross-entropy between the
score at each separator and its step's label (good = 1), averaged over the steps of the batch; every other
position is ignored. Steps cut away by truncation have no separator and no loss. Batches hold
`batch_size` chains in a length-grouped order that depends only on (seed, epoch). One process (torchrun is
for outcome training); rank-0-only details do not apply.

At the end the checkpoint is scored on the dev chains with torch (step AUC, step accuracy, first-error
localisation: training/evaluate_steps.py computes them), and written with its tokenizer (separator
included), the input spec and the training log; `rmserve export` turns it into a PRM bundle.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from rmserve.service.core.inputs import InputEncoder, StepError, join_steps
from rmserve.training.batching import length_grouped_batches
from rmserve.training.config import TrainConfig
from rmserve.training.evaluate_steps import ScoredChains, group_ids, step_figures
from rmserve.training.log import TrainLog
from rmserve.training.model import TOKENIZER_FILE, CheckpointMeta, default_base_model, disable_dropout
from rmserve.training.step_model import (
    StepRewardModel,
    add_separator,
    load_token_model,
    save_step_checkpoint,
    step_spec_for,
)
from rmserve.training.steps import StepChain, StepFile, load_steps
from rmserve.training.train import lr_factor

IGNORE = -1.0  # target of a position that is not a step's end


@dataclass(frozen=True)
class EncodedChain:
    ids: list[int]
    labels: list[float]  # of the scored steps: the chain's labels without those truncation cut
    steps_cut: int


def encode_chains(encoder: InputEncoder, chains: list[StepChain]) -> list[EncodedChain]:
    """Every chain as the token row serving builds, with the labels of the steps that kept their separator."""
    separator = encoder.spec.step_separator
    assert separator is not None and encoder.step_id is not None, "a PRM encoder needs a step separator"
    rows = []
    for chain in chains:
        try:
            rows.append((chain.prompt, join_steps(chain.steps, separator)))
        except StepError as e:
            raise ValueError(f"{chain.source} field 'completions.{e.step}': {e}") from None
        text = chain.prompt if isinstance(chain.prompt, str) else " ".join(m["content"] for m in chain.prompt)
        if separator in text:
            raise ValueError(f"{chain.source} field 'prompt': contains the step separator {separator!r}; "
                             "choose another with --step-separator")
    encoded = []
    for chain, row in zip(chains, encoder.encode(rows)):
        labels = [float(good) for good in chain.labels[row.steps_cut :]]
        if encoder.steps_read(row) != len(chain.labels):
            raise ValueError(f"{chain.source}: {row.ids.count(encoder.step_id)} step separators in the row for "
                             f"{len(labels)} steps; the separator must not occur in the prompt or the template, "
                             "nor merge with the text beside it")
        encoded.append(EncodedChain(row.ids, labels, row.steps_cut))
    return encoded


def collate_steps(encoder: InputEncoder, chains: list[EncodedChain]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, targets): targets hold each step's label at its separator, IGNORE elsewhere."""
    batch = encoder.pad([c.ids for c in chains])
    at_separator = (batch.input_ids == encoder.step_id) & (batch.attention_mask == 1)
    targets = np.full(batch.input_ids.shape, IGNORE, dtype=np.float32)
    for row, chain in enumerate(chains):
        targets[row, np.flatnonzero(at_separator[row])] = chain.labels
    return torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask), torch.from_numpy(targets)


def step_loss(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(mean BCE over the step ends, steps, steps judged right at 0.5)."""
    scored = targets != IGNORE
    logits, labels = scores[scored], targets[scored]
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    right = int(((logits >= 0) == (labels > 0.5)).sum())
    return loss, int(scored.sum()), right


@torch.no_grad()
def score_encoded(model: StepRewardModel, encoder: InputEncoder, chains: list[EncodedChain], device: torch.device,
                  batch_size: int = 32) -> list[np.ndarray]:
    """Torch step rewards (probabilities) of encoded chains, in length-sorted batches."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(chains)), key=lambda i: len(chains[i].ids))
    out: list[np.ndarray] = [np.empty(0)] * len(chains)
    for start in range(0, len(order), batch_size):
        chunk = [chains[i] for i in order[start : start + batch_size]]
        ids, mask, targets = collate_steps(encoder, chunk)
        probs = torch.sigmoid(model(ids.to(device), mask.to(device))).float().cpu()
        for i, row_probs, row_targets in zip(order[start : start + batch_size], probs, targets):
            out[i] = row_probs[row_targets != IGNORE].numpy()
    model.train(was_training)
    return out


def dev_step_metrics(model: StepRewardModel, encoder: InputEncoder, dev: list[EncodedChain], chains: list[StepChain],
                     device: torch.device) -> dict:
    rewards = score_encoded(model, encoder, dev, device)
    scored = ScoredChains(rewards, [np.array(c.labels) > 0.5 for c in dev], group_ids([c.group for c in chains]),
                          np.array([c.steps_cut for c in dev]), np.array([c.correct for c in chains], dtype=bool))
    return {"chains": len(dev), **step_figures(scored)}


def _load(path: Path, limit: int | None, skip: bool, say) -> StepFile:  # noqa: ANN001
    loaded = load_steps(path, limit, skip)
    for bad in loaded.skipped:
        say(f"skipped bad row: {bad}")
    return loaded


def train_prm(config: TrainConfig) -> dict:
    """Train a PRM on `config.train_data` (step-labelled chains), evaluate it on `config.dev_data`, save the
    checkpoint; returns the metrics."""
    if not config.train_data or not config.dev_data:
        raise ValueError("--task prm needs --train-data and --dev-data: step-labelled chains (TRL stepwise, "
                         "Math-Shepherd or PRM800K rows; `rmserve data generate-steps` writes some)")
    say = print
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    output_dir = Path(config.output_dir)
    base = Path(config.base_model) if config.base_model else default_base_model()
    train_path, dev_path = Path(config.train_data), Path(config.dev_data)
    train_file = _load(train_path, config.limit_train, config.skip_bad_rows, say)
    dev_file = _load(dev_path, config.limit_dev, config.skip_bad_rows, say)

    tokenizer_path = base / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{base} has no {TOKENIZER_FILE}; rmserve needs a fast tokenizer file")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    hf_model = load_token_model(base, attention="sdpa", causal=config.step_causal, layers=config.base_layers)
    if not config.dropout:
        disable_dropout(hf_model)
    separator_id = add_separator(tokenizer, hf_model, config.step_separator)
    spec = step_spec_for(hf_model, tokenizer, config.max_length, config.step_separator, separator_id, base)
    encoder = InputEncoder(tokenizer, spec)
    if config.gradient_checkpointing:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = StepRewardModel(hf_model).to(device)

    train = encode_chains(encoder, train_file.chains)
    dev = encode_chains(encoder, dev_file.chains)
    steps_cut = sum(c.steps_cut for c in train)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, config.lr_schedule))
    shape = "".join([f", first {config.base_layers} layers" if config.base_layers else "",
                     ", causal attention" if config.step_causal else ""])
    say(f"training a process reward model from {base.name}{shape} on {len(train)} chains "
        f"({sum(len(c.labels) for c in train)} steps) from {train_path.name}: separator {config.step_separator!r} "
        f"(id {separator_id}), max_length {spec.max_length}, {steps_cut} steps cut by truncation, "
        f"{total_steps} steps of {config.batch_size} chains on {device.type}")

    log = TrainLog(output_dir, config.tensorboard)
    lengths = [len(c.ids) for c in train]
    recent_loss: list[float] = []
    recent_acc: list[float] = []
    started = time.perf_counter()
    epoch_batches: dict[int, list[list[int]]] = {}
    chains_done = 0
    model.train()
    bar = tqdm(total=total_steps, desc="train prm", unit="step", disable=not config.progress)
    for step in range(total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: length_grouped_batches(lengths, config.batch_size, config.seed, epoch)}
        batch = [train[i] for i in epoch_batches[epoch][index]]
        ids, mask, targets = collate_steps(encoder, batch)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
            scores = model(ids.to(device), mask.to(device))
        loss, steps, right = step_loss(scores.float(), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        chains_done += len(batch)
        recent_loss.append(float(loss.detach()))
        recent_acc.append(right / max(steps, 1))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent_loss[-20:]):.3f}", acc=f"{np.mean(recent_acc[-20:]):.2f}")
        done = step + 1
        if done % max(config.log_steps, 1) == 0 or done == total_steps:
            log.write({"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": recent_loss[-1],
                       "accuracy": recent_acc[-1], "lr": lr_used, "grad_norm": float(grad_norm),
                       "chains_per_s": chains_done / max(time.perf_counter() - started, 1e-9)})
        if config.eval_steps and done % config.eval_steps == 0 and done != total_steps:
            dev_figures = dev_step_metrics(model, encoder, dev, dev_file.chains, device)
            log.write({"step": done, "dev_step_auc": dev_figures["step_auc"],
                       "dev_accuracy": dev_figures["step_accuracy"],
                       "dev_first_error": dev_figures["first_error_localisation"]})
    bar.close()
    train_seconds = time.perf_counter() - started
    dev_figures = dev_step_metrics(model, encoder, dev, dev_file.chains, device)
    metrics = {"task": "prm", "train_chains": len(train), "train_steps": total_steps,
               "train_seconds": round(train_seconds, 1),
               "train_chains_per_s": round(chains_done / max(train_seconds, 1e-9), 2),
               "train_loss_last20": float(np.mean(recent_loss[-20:])), "steps_cut": steps_cut,
               "skipped_rows": len(train_file.skipped) + len(dev_file.skipped),
               **{f"dev_{k}": v for k, v in dev_figures.items()}}
    log.write({"step": total_steps, "dev_step_auc": dev_figures["step_auc"],
               "dev_accuracy": dev_figures["step_accuracy"], "dev_first_error": dev_figures["first_error_localisation"]})
    log.close()
    say(f"dev: step AUC {dev_figures['step_auc']:.4f}, step accuracy {dev_figures['step_accuracy']:.4f}, first-error "
        f"localisation {dev_figures['first_error_localisation']:.4f} on {len(dev)} chains; training took "
        f"{train_seconds:.0f} s ({metrics['train_chains_per_s']} chains/s)")
    meta = CheckpointMeta(base_model=str(base), input=spec.model_dump(),
                          training={**asdict(config), "train_data": str(train_path), "dev_data": str(dev_path)},
                          metrics=metrics)
    save_step_checkpoint(output_dir, model, tokenizer, base, meta)
    say(f"checkpoint written to {output_dir}")
    return metrics
