"""Training batches: preference groups → token rows → padded tensors with comparison indices.

Each response of a group (two for a pair, K for a ranking) is encoded once and becomes one row of the
batch (the rows of a batch run in a few length-sorted forward passes under one backward); a group's
comparisons index into those rows, so a ranking of K responses costs K rows however many of its
K(K-1)/2 pairs the loss uses (InstructGPT's reason for keeping a prompt's ranking together).
Batches are length-grouped (shuffled windows, sorted inside) so padding costs little, and the order is a
pure function of (seed, epoch) so that a resumed or distributed run sees the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rmserve.service.core.inputs import EncodedInput, InputEncoder
from rmserve.training.records import PreferenceGroup

# Groups sorted by length within windows of this many batches: long enough to pad little, short enough
# that successive batches still mix lengths (a fully sorted epoch trains on short rows, then long ones).
LENGTH_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class EncodedGroup:
    rows: list[EncodedInput]
    better: list[int]
    worse: list[int]
    label: list[float]
    margin: list[float]

    @property
    def length(self) -> int:
        return max(len(r.ids) for r in self.rows)

    @property
    def truncated_rows(self) -> int:
        return sum(r.truncated for r in self.rows)


def encode_groups(encoder: InputEncoder, groups: list[PreferenceGroup]) -> list[EncodedGroup]:
    """Tokenize every response of every group in one batch call to the fast tokenizer."""
    flat = [(g.prompt, response) for g in groups for response in g.responses]
    encoded = encoder.encode(flat)
    out, start = [], 0
    for g in groups:
        rows = encoded[start : start + len(g.responses)]
        start += len(g.responses)
        out.append(EncodedGroup(
            rows=rows,
            better=[c.better for c in g.comparisons],
            worse=[c.worse for c in g.comparisons],
            label=[c.label for c in g.comparisons],
            margin=[c.margin for c in g.comparisons],
        ))
    return out


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled, sorted by length inside windows, batches shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * LENGTH_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def split_by_length(lengths: list[int], pass_cost: int) -> list[list[int]]:
    """Row indices in forward passes: rows sorted by length, cut into contiguous runs that minimise padded
    tokens plus `pass_cost` tokens per pass (what one more pass costs, in tokens). A chosen reply of 40
    tokens beside a rejected one of 250 then no longer pads to 250; with one pass per step the batch
    wasted 12.5 % of its tokens on the shipped data, with this split about 9 %."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 in one pass, padded to the longest (the last)
            cost = best[i] + (j - i) * sorted_lengths[j - 1] + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


@dataclass
class ForwardPass:
    rows: torch.Tensor  # [n] indices of these rows in the batch
    input_ids: torch.Tensor  # [n, longest of these rows]
    attention_mask: torch.Tensor


@dataclass
class TrainBatch:
    """Rows in length-sorted forward passes, and per comparison the rows it compares and its target."""

    passes: list[ForwardPass]
    better: torch.Tensor  # [pairs] row index of the preferred response
    worse: torch.Tensor
    label: torch.Tensor  # [pairs] P(better ≻ worse)
    margin: torch.Tensor
    group_of_pair: torch.Tensor  # [pairs] index of the pair's group within this batch
    groups: int
    tokens: int  # real tokens
    padded_tokens: int  # tokens the model computes, padding included

    def to(self, device: torch.device) -> TrainBatch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        moved["passes"] = [ForwardPass(p.rows.to(device), p.input_ids.to(device), p.attention_mask.to(device))
                           for p in self.passes]
        return TrainBatch(**moved)

    def rewards(self, model: torch.nn.Module) -> torch.Tensor:
        """One reward per row, in batch order; the passes share one autograd graph (one backward)."""
        outputs = [model(p.input_ids, p.attention_mask).float() for p in self.passes]
        order = torch.cat([p.rows for p in self.passes])
        rewards = torch.empty(len(order), device=order.device, dtype=torch.float32)
        return rewards.index_put((order,), torch.cat(outputs))


def collate(encoder: InputEncoder, groups: list[EncodedGroup], pass_cost: int | None = None) -> TrainBatch:
    """`pass_cost`: tokens one more forward pass is worth (default: max_length); 10**9 gives one pass."""
    rows: list[EncodedInput] = []
    better, worse, label, margin, group_of_pair = [], [], [], [], []
    for g_index, group in enumerate(groups):
        offset = len(rows)
        rows.extend(group.rows)
        better += [offset + i for i in group.better]
        worse += [offset + i for i in group.worse]
        label += group.label
        margin += group.margin
        group_of_pair += [g_index] * len(group.better)
    assert len(better) == len(worse) == len(label) == len(group_of_pair), "comparison arrays differ in length"
    lengths = [len(r.ids) for r in rows]
    passes = []
    for indices in split_by_length(lengths, encoder.spec.max_length if pass_cost is None else pass_cost):
        padded = encoder.pad([rows[i] for i in indices])
        passes.append(ForwardPass(torch.tensor(indices, dtype=torch.long), torch.from_numpy(padded.input_ids),
                                  torch.from_numpy(padded.attention_mask)))
    return TrainBatch(
        passes=passes,
        better=torch.tensor(better, dtype=torch.long),
        worse=torch.tensor(worse, dtype=torch.long),
        label=torch.tensor(label, dtype=torch.float32),
        margin=torch.tensor(margin, dtype=torch.float32),
        group_of_pair=torch.tensor(group_of_pair, dtype=torch.long),
        groups=len(groups),
        tokens=sum(lengths),
        padded_tokens=sum(p.input_ids.numel() for p in passes),
    )
