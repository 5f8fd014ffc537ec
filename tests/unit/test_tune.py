"""`rmserve tune`: candidates parsed by the options' own types, folds by prompt, per-fold results summarized
by hand-checkable arithmetic, and a real cross-validation of a tiny model that resumes instead of retraining."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rmserve.training.config import TrainConfig
from rmserve.training.tune import (
    RUNS_FILE,
    Candidate,
    best,
    candidate_list,
    complete_folds,
    format_table,
    parse_candidate,
    summarize,
    tune,
    write_folds,
)
from tests.unit.test_train_smoke import tiny_base  # noqa: F401  (a fixture)


def test_candidates_take_each_option_s_type_and_refuse_what_tune_sets():
    assert parse_candidate("learning-rate=6e-5 epochs=2 dropout=on max_length=128") == Candidate(
        "learning_rate=6e-05 epochs=2.0 dropout=True max_length=128",
        {"learning_rate": 6e-5, "epochs": 2.0, "dropout": True, "max_length": 128})
    listed = candidate_list(["learning_rate=1e-5,3e-5", "dropout=false"], ["learning_rate=1e-5 center_rewards=0.01"])
    assert [c.name for c in listed] == ["base", "learning_rate=1e-05", "learning_rate=3e-05", "dropout=False",
                                       "learning_rate=1e-05 center_rewards=0.01"]
    assert candidate_list(["epochs=2,2"], ["epochs=2"])[1:] == [Candidate("epochs=2.0", {"epochs": 2.0})]
    for bad, message in (("learnin_rate=1", "not a training option"), ("output_dir=x", "set by tune itself"),
                         ("max_length=1.5", "expected a int"), ("dropout=maybe", "expected true or false"),
                         ("epochs", "OPTION=VALUE")):
        with pytest.raises(ValueError, match=message):
            parse_candidate(bad)
    with pytest.raises(ValueError, match="OPTION=VALUE"):
        candidate_list(["epochs="], [])


def record(candidate: str, fold: int, accuracy: float, loss: float = 0.6, seconds: float = 10.0) -> dict:
    return {"candidate": candidate, "fold": fold, "accuracy": accuracy, "loss": loss, "train_seconds": seconds}


def test_summary_means_spreads_and_fold_by_fold_differences():
    records = [record("base", 0, 0.60), record("lr", 0, 0.64, 0.5), record("base", 1, 0.70), record("lr", 1, 0.72, 0.7),
               record("base", 2, 0.65), record("lr", 2, 0.71, 0.6, 20.0)]
    base, lr = summarize(records)
    assert base["accuracy"] == [0.60, 0.70, 0.65] and base["mean"] == pytest.approx(0.65)
    assert base["sd"] == pytest.approx(0.05)  # deviations -0.05, 0.05, 0: sqrt(0.005 / 2)
    assert (base["difference"], base["difference_sd"]) == (0.0, 0.0)
    assert lr["mean"] == pytest.approx(0.69) and lr["loss"] == pytest.approx(0.6)
    assert lr["difference"] == pytest.approx(0.04)  # +0.04, +0.02, +0.06
    assert lr["difference_sd"] == pytest.approx(0.02) and lr["train_seconds"] == pytest.approx(40 / 3)
    assert best([base, lr])["candidate"] == "lr"
    table = format_table([base, lr]).splitlines()
    assert table[0] == "| candidate | fold 0 | fold 1 | fold 2 | mean ± sd | Δ vs base (mean ± sd) | log-loss | train s / run |"
    assert table[3] == "| lr | 0.6400 | 0.7200 | 0.7100 | 0.6900 ± 0.0436 | +0.0400 ± 0.0200 | 0.6000 | 13 |"
    tied = summarize([record("base", 0, 0.6, 0.7), record("other", 0, 0.6, 0.65)])
    assert best(tied)["candidate"] == "other"  # equal accuracy: the lower log-loss


def test_fold_files_hold_each_prompt_once_and_the_source_rows(tmp_path):
    rows = [{"prompt": f"p{i % 7}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_folds(source, 3, 0, tmp_path / "work", limit=14)
    assert (tmp_path / "work" / "folds-3-seed-0-first-14").is_dir()
    held = [[json.loads(line) for line in held.read_text().splitlines()] for _, held in paths]
    assert sorted(r["chosen"] for part in held for r in part) == sorted(r["chosen"] for r in rows[:14])
    for k, (train, _) in enumerate(paths):
        trained = {json.loads(line)["prompt"] for line in train.read_text().splitlines()}
        assert not trained & {r["prompt"] for r in held[k]}
        assert len(train.read_text().splitlines()) + len(held[k]) == 14


def test_tune_cross_validates_a_tiny_model_and_resumes(tiny_base, tmp_path, monkeypatch):  # noqa: F811
    rows = [{"prompt": f"question {i}", "chosen": "sure i am fine thanks", "rejected": "no"} for i in range(12)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = TrainConfig(base_model=str(tiny_base), train_data=str(source), max_steps=2, batch_size=4, max_length=32,
                       learning_rate=1e-3, progress=False, tensorboard=False)
    candidates = candidate_list(["learning_rate=0"], [])
    said = []
    records = tune(base, candidates, folds=2, seed=0, work_dir=tmp_path / "work", say=said.append)
    assert [(r["candidate"], r["fold"]) for r in records] == [("base", 0), ("learning_rate=0.0", 0),
                                                              ("base", 1), ("learning_rate=0.0", 1)]
    assert all(r["held_out_pairs"] == 6 and r["train_pairs"] == 6 for r in records)  # no calibration hold-out here
    # every held-out pair prefers the same reply: training learns it, learning rate 0 leaves the model as it began
    trained, frozen = records[0::2], records[1::2]
    assert all(t["loss"] < f["loss"] and t["accuracy"] == 1.0 for t, f in zip(trained, frozen))
    assert len(said) == 4 and said[0].startswith("tune: base, fold 0: accuracy ")
    assert not (tmp_path / "work" / "runs").exists() or not any((tmp_path / "work" / "runs").iterdir())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("rmserve.training.tune.run_fold", no_training)
    assert tune(base, candidates, folds=2, seed=0, work_dir=tmp_path / "work", say=said.append) == records
    assert len((tmp_path / "work" / RUNS_FILE).read_text().splitlines()) == 4
    # without training, a new recipe's runs are simply missing and the finished ones are summarized
    partial = tune(base, candidate_list(["learning_rate=1e-4"], []), folds=2, seed=0, work_dir=tmp_path / "work",
                   train_missing=False)
    assert partial == records[0::2]
    with pytest.raises(AssertionError, match="trained again"):  # a new recipe is a new run
        tune(base, candidate_list(["learning_rate=1e-4"], []), folds=2, seed=0, work_dir=tmp_path / "work")
    # the same recipe as another command's base (a candidate run as its own process) is done, and named as asked
    as_base = tune(dataclasses.replace(base, learning_rate=0.0), candidate_list([], []), folds=2, seed=0,
                   work_dir=tmp_path / "work")
    assert [(r["candidate"], r["accuracy"]) for r in as_base] == [("base", f["accuracy"]) for f in frozen]


def test_cli_names_a_bad_candidate_and_exits_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "rmserve.cli", "tune", "--vary", "learning_rat=1e-5"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "rmserve tune: 'learning_rat' is not a training option" in done.stderr


def test_no_train_summaries_keep_only_the_folds_every_candidate_has():
    candidates = candidate_list(["learning_rate=6e-5"], [])
    records = [{"candidate": "base", "fold": 0}, {"candidate": "learning_rate=6e-05", "fold": 0},
               {"candidate": "base", "fold": 1}, {"candidate": "base", "fold": 2},
               {"candidate": "learning_rate=6e-05", "fold": 2}]
    kept, left_out = complete_folds(records, candidates)
    assert [(r["candidate"], r["fold"]) for r in kept] == [("base", 0), ("learning_rate=6e-05", 0), ("base", 2),
                                                           ("learning_rate=6e-05", 2)]
    assert left_out == [1]
