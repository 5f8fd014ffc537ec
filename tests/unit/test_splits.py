"""Splits by prompt: the calibration hold-out and the cross-validation folds never put a prompt on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmserve.training.data import load_preferences, shipped_data
from rmserve.training.evaluate import calibration_pairs
from rmserve.training.records import jsonl_rows
from rmserve.training.splits import (
    assign_folds,
    fold_rows,
    hold_out_calibration,
    in_calibration_split,
    prompt_key,
    row_prompt_key,
)


def test_prompt_key_is_the_text_or_canonical_json():
    assert prompt_key("hi") == "hi"
    messages = [{"role": "user", "content": "hé"}]
    assert prompt_key(messages) == '[{"content": "hé", "role": "user"}]'


def test_calibration_split_is_a_fixed_share_of_prompts_whatever_the_order():
    loaded = load_preferences(shipped_data("train"), skip_bad_rows=True)
    kept, held = hold_out_calibration(loaded, 0.1)
    assert len(kept.groups) + len(held) == len(loaded.groups)
    assert 0.08 < len(held) / len(loaded.groups) < 0.12
    held_keys = {prompt_key(g.prompt) for g in held}
    assert not held_keys & {prompt_key(g.prompt) for g in kept.groups}
    # the first 300 rows hold out exactly the held-out prompts among them: a prompt's side is its own
    first = load_preferences(shipped_data("train"), 300, skip_bad_rows=True)
    assert {prompt_key(g.prompt) for g in hold_out_calibration(first, 0.1)[1]} == \
        {prompt_key(g.prompt) for g in first.groups} & held_keys
    assert hold_out_calibration(loaded, 0.0) == (loaded, [])
    with pytest.raises(ValueError, match="calibration-split must be in"):
        hold_out_calibration(loaded, 1.0)


def test_a_file_too_small_to_spare_a_prompt_keeps_it(tmp_path):
    prompt = next(f"p{i}" for i in range(1000) if in_calibration_split(f"p{i}", 0.1))
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "chosen": "a", "rejected": "b"}) + "\n")
    loaded = load_preferences(path)
    assert hold_out_calibration(loaded, 0.1) == (loaded, [])
    assert calibration_pairs({"calibration_split": 0.1, "train_data": str(path)}) is None


def test_calibration_pairs_are_the_held_out_prompts_of_the_recorded_training_file():
    training = {"calibration_split": 0.1, "train_data": str(shipped_data("train")), "limit_train": 200}
    pairs, source = calibration_pairs(training)
    held = hold_out_calibration(load_preferences(shipped_data("train"), 200, skip_bad_rows=True), 0.1)[1]
    assert [p.chosen for p in pairs] == [g.responses[0] for g in held]
    assert source == "train.jsonl.gz, calibration split (0.1 of its prompts by hash, held out from training)"
    assert calibration_pairs({**training, "calibration_split": 0.0}) is None
    assert calibration_pairs({}) is None  # a checkpoint from before the split existed


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_folds_deal_whole_prompts_of_every_row_shape(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "a", "chosen": "z", "rejected": "y"},  # same prompt: same fold
        {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: sure", "rejected": "\n\nHuman: hi\n\nAssistant: nope"},
        {"prompt": [{"role": "user", "content": "b"}], "responses": ["1", "2", "3"]},
        {"prompt": "c", "response": "r", "rating": 3},
        {"prompt": "d", "chosen": "x", "rejected": "y"},
        {"prompt": "e", "chosen": "x", "rejected": "y"},
        {"chosen": "no prompt in common", "rejected": "at all"},  # bad: lands somewhere, kept for training to skip
        "not json",
    ]
    path = write_rows(tmp_path / "mixed.jsonl", rows)
    folds = fold_rows(jsonl_rows(path), 3, seed=1)
    assert sorted(json.dumps(r) for part in folds for r in part) == sorted(json.dumps(r) for r in rows[:-1])
    where = {json.dumps(r): k for k, part in enumerate(folds) for r in part}
    assert where[json.dumps(rows[0])] == where[json.dumps(rows[1])]
    assert where[json.dumps(rows[2])] == where[json.dumps(rows[3])]
    prompts_per_fold = [{row_prompt_key(r, None) for r in part} - {None} for part in folds]
    assert sorted(len(p) for p in prompts_per_fold) == [2, 2, 2]  # 6 prompts dealt round-robin
    assert fold_rows(jsonl_rows(path), 3, seed=1) == folds  # the seed fixes the deal
    assert fold_rows(jsonl_rows(path), 3, seed=2) != folds


def test_fold_assignment_is_balanced_and_checked():
    dealt = assign_folds([f"p{i}" for i in range(11)] * 2, 5, seed=0)
    sizes = sorted(list(dealt.values()).count(k) for k in range(5))
    assert len(dealt) == 11 and sizes == [2, 2, 2, 2, 3]
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(["a", "b"], 1, 0)
    with pytest.raises(ValueError, match="2 distinct prompts cannot make 3 folds"):
        assign_folds(["a", "b", "a"], 3, 0)
