"""The generated process-supervision data set on disk: train, dev and test splits, best-of-N candidates and
outcome pairs, written by `rmserve data generate-steps`.

Files in the output directory (JSONL, one row a line; every row also has `problem`, its problem's id, and
`answer`, the right final answer):
  train.jsonl, dev.jsonl, test.jsonl   stepwise rows {prompt, completions, labels, problem, answer, error}:
                                       per problem, one right chain and one with an injected error
                                       (`error`: {kind, step}, null for a right chain), in shuffled order.
  test-best-of-N.jsonl                 N candidate chains for every test problem, as stepwise rows grouped
                                       by `problem`: between 1 and N/2 of them right (uniformly), the others
                                       each with a different error where the problem has enough. Selection
                                       accuracy of random choice is the mean share of right candidates (in
                                       manifest.json).
  train-pairs.jsonl, dev-pairs.jsonl   outcome preference pairs {prompt, chosen, rejected, problem} of the
                                       same problems, for training the outcome reward model that best-of-N
                                       selection is compared with: chosen is the right chain, rejected the
                                       wrong one, their steps joined by newlines.
  manifest.json                        the settings, the counts, and the shortcut baselines of every split.

Each split draws its problems from its own random stream (seeded by the seed and the split), keeping only
those whose hashed arithmetic falls in its share (prm_generator.split_of): splits never share a problem, and
the test split is the same whatever --train asks for.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rmserve.training.prm_generator import (
    GeneratorConfig,
    Problem,
    Work,
    chain_row,
    random_problem,
    split_of,
    wrong_chain,
)
from rmserve.training.records import Where
from rmserve.training.step_shortcuts import shortcut_aucs
from rmserve.training.steps import StepChain, parse_stepwise

SPLITS = ("train", "dev", "test")
STREAM = {"train": 0, "dev": 1, "test": 2, "best-of": 3}
Wrong = tuple[list[Work], str, int]  # a wrong solution, its error's kind and step


def split_problems(split: str, count: int, seed: int, config: GeneratorConfig) -> list[tuple[Problem, Wrong]]:
    """`count` distinct problems of `split`, drawn from the split's own stream, each with a wrong chain
    (problems where no error can change the answer are passed over)."""
    rng = np.random.default_rng([seed, STREAM[split]])
    problems: list[tuple[Problem, Wrong]] = []
    seen: set[tuple] = set()
    misses = 0
    while len(problems) < count:
        problem = random_problem(rng, config)
        wrong = None
        if problem is not None and problem.key not in seen and split_of(problem.key) == split:
            seen.add(problem.key)
            wrong = wrong_chain(problem, rng, config)
        if wrong is None:
            misses += 1
            if misses > 1000 * (count + 10):
                raise ValueError(f"cannot find {count} distinct {split} problems with these settings "
                                 f"(found {len(problems)}); allow longer chains or larger values")
            continue
        problems.append((problem, wrong))
    return problems


def _problem_id(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def split_rows(split: str, problems: list[tuple[Problem, Wrong]], seed: int) -> list[dict]:
    """One right and one wrong chain per problem, shuffled."""
    rng = np.random.default_rng([seed, STREAM[split], 1])
    rows = []
    for index, (problem, (works, error, step)) in enumerate(problems):
        problem_id = _problem_id(split, index)
        rows.append(chain_row(problem, problem_id, problem.solution(), rng))
        rows.append(chain_row(problem, problem_id, works, rng, (error, step)))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def best_of_rows(problems: list[Problem], n: int, seed: int, config: GeneratorConfig) -> list[dict]:
    """`n` candidates per problem: 1 to n/2 right, the rest wrong, with distinct errors as far as the problem
    has them (a short problem with few possible errors repeats some, worded anew)."""
    if n < 2:
        raise ValueError(f"best-of-N needs N >= 2 candidates, got {n}")
    rng = np.random.default_rng([seed, STREAM["best-of"]])
    rows = []
    for index, problem in enumerate(problems):
        right = int(rng.integers(1, n // 2 + 1))
        wrong: dict[tuple, tuple[str, int]] = {}
        drawn: list[tuple[tuple, tuple[str, int]]] = []
        for _ in range(20 * n):
            if len(wrong) == n - right:
                break
            found = wrong_chain(problem, rng, config)
            if found is not None:
                wrong.setdefault(tuple(found[0]), (found[1], found[2]))
                drawn.append((tuple(found[0]), (found[1], found[2])))
        chosen = list(wrong.items())
        chosen += [drawn[int(rng.integers(len(drawn)))] for _ in range(n - right - len(chosen))]
        problem_id = _problem_id("test", index)
        candidates = [chain_row(problem, problem_id, problem.solution(), rng) for _ in range(right)]
        candidates += [chain_row(problem, problem_id, list(works), rng, error) for works, error in chosen]
        rows.extend(candidates[i] for i in rng.permutation(n))
    return rows


def outcome_pairs(rows: list[dict]) -> list[dict]:
    """Each problem's right chain against each of its wrong ones, as whole responses (steps joined by newlines)."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["problem"], []).append(row)
    pairs = []
    for problem_id, chains in by_problem.items():
        right = [r for r in chains if all(r["labels"])]
        wrong = [r for r in chains if not all(r["labels"])]
        pairs.extend({"prompt": r["prompt"], "chosen": "\n".join(r["completions"]),
                      "rejected": "\n".join(w["completions"]), "problem": problem_id} for r in right for w in wrong)
    return pairs


def chains_of(rows: list[dict], name: str) -> list[StepChain]:
    """Rows as the records every reader makes (through the stepwise reader itself)."""
    return [parse_stepwise(row, Where(Path(name), i + 1)) for i, row in enumerate(rows)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_splits(output: str | Path, counts: dict[str, int], seed: int = 0, best_of: int = 8,
                 config: GeneratorConfig | None = None) -> dict:
    """Write the data set (see the module docstring) and return its manifest."""
    config = config or GeneratorConfig()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"seed": seed, "generator": asdict(config), "best_of": best_of, "files": {},
                      "shortcut_baselines": {}}
    test_problems: list[Problem] = []
    for split in SPLITS:
        problems = split_problems(split, counts.get(split, 0), seed, config)
        if split == "test":
            test_problems = [problem for problem, _ in problems]
        rows = split_rows(split, problems, seed)
        _write_jsonl(output / f"{split}.jsonl", rows)
        manifest["files"][f"{split}.jsonl"] = {"problems": len(problems), "chains": len(rows)}
        if rows:
            manifest["shortcut_baselines"][split] = shortcut_aucs(chains_of(rows, split))
        if split != "test":
            pairs = outcome_pairs(rows)
            _write_jsonl(output / f"{split}-pairs.jsonl", pairs)
            manifest["files"][f"{split}-pairs.jsonl"] = {"pairs": len(pairs)}
    if best_of and test_problems:
        rows = best_of_rows(test_problems, best_of, seed, config)
        name = f"test-best-of-{best_of}.jsonl"
        _write_jsonl(output / name, rows)
        right_share = float(np.mean([all(r["labels"]) for r in rows])) if rows else None
        manifest["files"][name] = {"problems": len(rows) // best_of, "chains": len(rows),
                                   "random_choice_accuracy": right_share}
        if rows:
            manifest["shortcut_baselines"][name] = shortcut_aucs(chains_of(rows, name))
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
