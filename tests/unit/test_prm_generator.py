"""The step-labelled problem generator: right chains are right, each wrong chain has exactly the error it
claims and everything after it is labelled bad, splits share no problem, and shortcuts stay weak."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from rmserve.cli import main
from rmserve.training.prm_generator import (
    ACTIONS,
    GeneratorConfig,
    parse_error_kinds,
    random_problem,
    split_of,
)
from rmserve.training.prm_splits import best_of_rows, outcome_pairs, split_problems, split_rows, write_splits
from rmserve.training.step_shortcuts import shortcut_aucs
from rmserve.training.steps import StepChain, load_steps

WORK = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
VERB_KIND = {phrase.split("{n}")[0].strip(): kind for kind, actions in ACTIONS.items() for _, phrase in actions}


def problem_numbers(prompt):
    """(start, [(kind, operand), ...]) read back from the problem's words."""
    sentences = prompt.split(". ")
    start = int(re.search(r"has (\d+)", sentences[0]).group(1))
    operations = []
    for sentence in sentences[1:-1] + [sentences[-1].split("?")[0]]:
        number = re.search(r"\d+", sentence)
        if number is None:
            continue
        kind = next(k for k, actions in ACTIONS.items()
                    if any(re.fullmatch(re.escape(t.split("{n}")[0]).replace(r"\{name\}", ".*").replace(r"\{item\}", ".*")
                                        + r"\d+.*", sentence) for t, _ in actions))
        operations.append((kind, int(number.group())))
    return start, operations


def step_kind(step):
    """The operation a step's own words name (whatever its arithmetic does)."""
    lowered = step.lower()
    return next(kind for verb, kind in VERB_KIND.items() if verb.lower() in lowered)


def check_chain(row):
    start, operations = problem_numbers(row["prompt"])
    works = [WORK.search(step).groups() for step in row["completions"]]
    assert len(works) == len(operations) == len(row["labels"])
    error = row["error"]
    first_bad = error["step"] if error else len(works)
    assert row["labels"] == [i < first_bad for i in range(len(works))]  # every step from the error on is bad
    value = start
    for i, ((left, symbol, operand, result), (kind, n)) in enumerate(zip(works, operations)):
        left, operand, result = int(left), int(operand), int(result)
        assert operand == n and step_kind(row["completions"][i]) == kind  # the step names the problem's action
        right_arithmetic = APPLY[symbol](left, operand) == result
        if error and i == error["step"]:
            assert {"operation": symbol != SYMBOL[kind] and right_arithmetic and left == value,
                    "arithmetic": symbol == SYMBOL[kind] and not right_arithmetic and left == value,
                    "copy": symbol == SYMBOL[kind] and right_arithmetic and left != value}[error["kind"]], (i, row)
        else:  # a right step, or one that computes correctly from the wrong value it was handed
            assert symbol == SYMBOL[kind] and right_arithmetic and left == value, (i, row)
        value = result
    assert (value == int(row["answer"])) == (error is None)  # an error always changes the final answer


def test_right_and_wrong_chains_hold_what_they_claim():
    config = GeneratorConfig()
    rows = split_rows("dev", split_problems("dev", 300, 5, config), 5)
    for row in rows:
        check_chain(row)
    errors = Counter(row["error"]["kind"] for row in rows if row["error"])
    assert set(errors) == {"operation", "arithmetic", "copy"} and sum(errors.values()) == 300
    assert Counter(len(r["completions"]) for r in rows).keys() == set(range(2, 8))
    # Errors fall early more often (error_decay) but at every step.
    positions = Counter(r["error"]["step"] for r in rows if r["error"])
    assert positions[0] > positions[1] > positions[2] > 0 and max(positions) >= 4


def test_splits_share_no_problem_and_test_does_not_depend_on_train_size(tmp_path):
    config = GeneratorConfig()
    keys = {split: [p.key for p, _ in split_problems(split, n, 3, config)] for split, n in
            (("train", 400), ("dev", 100), ("test", 100))}
    assert all(len(set(k)) == len(k) for k in keys.values())
    assert not set(keys["train"]) & set(keys["dev"]) and not set(keys["train"]) & set(keys["test"])
    assert not set(keys["dev"]) & set(keys["test"])
    assert all(split_of(key) == split for split, ks in keys.items() for key in ks)
    write_splits(tmp_path / "a", {"train": 50, "dev": 10, "test": 30}, seed=3)
    write_splits(tmp_path / "b", {"train": 80, "dev": 10, "test": 30}, seed=3)
    write_splits(tmp_path / "c", {"train": 50, "dev": 10, "test": 30}, seed=4)
    for name in ("test.jsonl", "test-best-of-8.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_same_seed_same_files(tmp_path):
    for out in ("x", "y"):
        write_splits(tmp_path / out, {"train": 30, "dev": 5, "test": 10}, seed=11)
    for path in (tmp_path / "x").iterdir():
        assert path.read_bytes() == (tmp_path / "y" / path.name).read_bytes(), path.name


def test_best_of_n_candidates():
    config = GeneratorConfig()
    problems = [p for p, _ in split_problems("test", 60, 2, config)]
    rows = best_of_rows(problems, 8, 2, config)
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["problem"], []).append(row)
        check_chain(row)
    assert len(by_problem) == 60
    distinct = 0
    for candidates in by_problem.values():
        right = [c for c in candidates if all(c["labels"])]
        wrong = [tuple(c["completions"]) for c in candidates if not all(c["labels"])]
        assert len(candidates) == 8 and 1 <= len(right) <= 4
        assert len({c["prompt"] for c in candidates}) == 1 and len({c["answer"] for c in candidates}) == 1
        distinct += len({tuple(WORK.findall(" ".join(w))) for w in wrong}) == len(wrong)
    assert distinct >= 54  # different errors, but for a short problem that has too few of them
    with pytest.raises(ValueError, match="N >= 2"):
        best_of_rows(problems, 1, 2, config)


def test_outcome_pairs_put_the_right_chain_first():
    rows = split_rows("train", split_problems("train", 20, 1, GeneratorConfig()), 1)
    pairs = outcome_pairs(rows)
    assert len(pairs) == 20
    right = {r["problem"]: "\n".join(r["completions"]) for r in rows if all(r["labels"])}
    assert all(p["chosen"] == right[p["problem"]] and p["rejected"] != p["chosen"] for p in pairs)


def test_shortcut_aucs_on_literal_chains():
    chains = [StepChain("I have 1 and 2.", ("a short one 1", "a much longer step 39"), (True, False)),
              StepChain("I have 1 and 2.", ("tiny 2", "also a longer step 12"), (True, True))]
    aucs = shortcut_aucs(chains)
    assert aucs["step_length"] == pytest.approx(5 / 6)  # bad 21 chars vs good 13, 6, 21 (a tie counts half)
    assert aucs["step_position"] == pytest.approx(5 / 6)  # bad at 1 vs good at 0, 0, 1
    assert aucs["new_digit"] == 1.0  # only "39" has a digit the prompt lacks
    assert shortcut_aucs(chains[1:])["step_length"] is None  # no bad step: undefined


def test_shortcut_baselines_stay_weak_at_the_default_difficulty(tmp_path):
    manifest = write_splits(tmp_path, {"train": 0, "dev": 0, "test": 500}, seed=0, best_of=0)
    baselines = manifest["shortcut_baselines"]["test"]
    assert set(baselines) == {"step_length", "step_position", "relative_position", "new_digit"}
    assert all(value <= 0.60 for value in baselines.values()), baselines
    # The same measure on uniform error positions is what the decay is for.
    spread = write_splits(tmp_path / "spread", {"test": 500}, seed=0, best_of=0,
                          config=GeneratorConfig(error_decay=1.0))["shortcut_baselines"]["test"]
    assert spread["step_position"] > baselines["step_position"] + 0.03


def test_problems_are_valid_whatever_the_settings():
    rng = np.random.default_rng(0)
    config = GeneratorConfig(min_steps=3, max_steps=3, max_start=30, max_value=60, max_operand=5)
    for _ in range(200):
        problem = random_problem(rng, config)
        if problem is None:
            continue
        assert len(problem.operations) == 3
        assert all(1 <= work.result <= 60 for work in problem.solution())


@pytest.mark.parametrize("kwargs, message", [
    ({"min_steps": 4, "max_steps": 3}, "min_steps"),
    ({"error_kinds": (("typo", 1.0),)}, "error kinds"),
    ({"error_kinds": (("copy", 0.0),)}, "error kinds"),
    ({"error_decay": 0.0}, "error_decay"),
    ({"max_start": 400}, "max_start"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**kwargs)


def test_parse_error_kinds():
    assert parse_error_kinds("operation=2, copy") == (("operation", 2.0), ("copy", 1.0))
    with pytest.raises(ValueError, match="must be a number"):
        parse_error_kinds("copy=lots")


def test_generate_steps_command(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["data", "generate-steps", "--output", str(out), "--train", "40", "--dev", "10", "--test", "20",
                 "--best-of", "4", "--seed", "7", "--error-kinds", "operation=1"]) == 0
    printed = capsys.readouterr().out
    assert "test-best-of-4.jsonl: problems 20, chains 80" in printed and "shortcut step AUC on test:" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "dev-pairs.jsonl", "dev.jsonl", "manifest.json", "test-best-of-4.jsonl", "test.jsonl",
        "train-pairs.jsonl", "train.jsonl"]
    train = load_steps(out / "train.jsonl")  # the stepwise reader takes what the generator writes
    assert len(train.chains) == 80 and sum(c.correct for c in train.chains) == 40
    assert all(c.group and c.group.startswith("train-") and c.answer for c in train.chains)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert {r["error"]["kind"] for r in rows if r["error"]} == {"operation"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["generator"]["error_decay"] == GeneratorConfig().error_decay
    assert main(["data", "generate-steps", "--output", str(out), "--error-kinds", "typo=1"]) == 2
    assert "error kinds" in capsys.readouterr().err
