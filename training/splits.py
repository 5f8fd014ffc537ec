"""Splitting preference data by prompt, so that no prompt is on both sides of a split.

Pairs that share a prompt are not independent (a ranking of K responses is K(K-1)/2 pairs of one prompt,
and HH dialogues repeat openings), so every split here, and the evaluation bootstrap, takes whole prompts:
  - `prompt_key`: the identity of a prompt (text, or chat messages as canonical JSON);
  - the calibration split: a fixed share of a training file's prompts, chosen by a hash of the prompt
    (so the same prompts whatever the file's order or `--limit-train`), held out from training to fit the
    calibration temperature on pairs the model never trained on;
  - k folds for cross-validation (`rmserve tune`): the file's distinct prompts shuffled with a seed and
    dealt round-robin, so fold sizes differ by at most one prompt. Raw rows are split, not parsed
    groups, so that a fold file is the same format as its source (ratings stay ratings).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import replace

from rmserve.service.core.inputs import Prompt
from rmserve.training.data import split_dialogue
from rmserve.training.records import DataError, PreferenceFile, PreferenceGroup, Where, prompt_field


def prompt_key(prompt: Prompt) -> str:
    """A prompt's identity: the text itself, or its messages as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def hash_unit(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def in_calibration_split(prompt: Prompt, fraction: float) -> bool:
    return fraction > 0 and hash_unit(prompt_key(prompt)) < fraction


def hold_out_calibration(loaded: PreferenceFile, fraction: float) -> tuple[PreferenceFile, list[PreferenceGroup]]:
    """(the file without the calibration split's prompts, the held-out groups). `fraction` 0 holds out none,
    and so does a file so small that the split would take every prompt (training needs some; export then
    fits the temperature on the dev data and says so)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--calibration-split must be in [0, 1), got {fraction}")
    held = [g for g in loaded.groups if in_calibration_split(g.prompt, fraction)]
    kept = [g for g in loaded.groups if not in_calibration_split(g.prompt, fraction)]
    if not held or not kept:
        return loaded, []
    return replace(loaded, groups=kept), held


def row_prompt_key(row: dict | DataError, where: Where) -> str | None:
    """The prompt key of a raw data row (a pair, dialogue, ranking or rating), None when it has none that
    parses (a bad row: training skips or reports it, wherever it lands)."""
    if isinstance(row, DataError):
        return None
    try:
        if row.get("prompt") is not None:
            return prompt_key(prompt_field(row["prompt"], where))
    except DataError:
        return None
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        split = split_dialogue(chosen, rejected)
        return prompt_key(split[0]) if split else None
    return None


def assign_folds(keys: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """Each distinct key's fold in [0, folds): sorted, shuffled with `seed`, dealt round-robin."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    distinct = sorted(set(keys))
    if len(distinct) < folds:
        raise ValueError(f"{len(distinct)} distinct prompts cannot make {folds} folds")
    random.Random(seed).shuffle(distinct)
    return {key: i % folds for i, key in enumerate(distinct)}


def fold_rows(rows: Iterable[tuple[Where, dict | DataError]], folds: int, seed: int) -> list[list[dict]]:
    """The raw rows of a file dealt into `folds` lists by prompt. A row without a parseable prompt goes to
    the fold its line number's hash picks (it is bad: training leaves it out or stops on it, as it would
    on the whole file); a line that is not JSON is dropped here."""
    rows = list(rows)
    keys = [row_prompt_key(row, where) for where, row in rows]
    fold_of = assign_folds((k for k in keys if k is not None), folds, seed)
    out: list[list[dict]] = [[] for _ in range(folds)]
    for (where, row), key in zip(rows, keys):
        if isinstance(row, DataError):
            continue
        fold = fold_of[key] if key is not None else int(hash_unit(f"{seed}:{where}") * folds)
        out[fold].append(row)
    return out
