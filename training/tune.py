"""Choosing training settings by k-fold cross-validation on the training file, split by prompt (`rmserve tune`).

The training file's raw rows are dealt into k folds by prompt (training/splits.py), so no prompt is in two
folds. Each candidate recipe (the base recipe with some options changed) is trained k times, each time on
k − 1 folds, and scored on the fold it did not see with training's own dev evaluation (tie-aware pairwise
accuracy and log-loss at T = 1). The dev split is never read: it stays for the one final report.

Runs go fold by fold (every candidate on fold 0, then fold 1, ...), so a run stopped early still compares
every candidate on the same folds; each finished run is appended to `runs.jsonl` in the work directory,
keyed by everything that decides its result, and a rerun with the same arguments skips what is done.
Several tune processes may share a work directory (each candidate as its own process's base recipe, say):
a later command over all candidates then finds every run done and prints the whole table.
A candidate's accuracy is reported as its mean and sample sd over the folds, and beside it the paired
difference from the first candidate (the base) fold by fold: same pairs, so the fold-to-fold spread of the
data cancels out of the difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import statistics
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rmserve.training.config import TrainConfig
from rmserve.training.data import shipped_data
from rmserve.training.records import dataset_rows, jsonl_rows
from rmserve.training.splits import fold_rows

RUNS_FILE = "runs.jsonl"
# Options a candidate may not change: where the run's files and data go is tune's business.
FIXED = ("output_dir", "train_data", "dev_data", "limit_train", "limit_dev", "calibration_split", "resume_from", "save_steps",
         "eval_steps", "progress", "tensorboard")


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: dict[str, Any]


def _value(name: str, text: str) -> Any:
    """`text` as the type of TrainConfig field `name`."""
    kind = typing.get_type_hints(TrainConfig)[name]
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # "int | None" -> int
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
            raise ValueError(f"{name}={text}: expected true or false")
        return lowered in ("true", "on", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}={text}: expected a {kind.__name__}") from None


def _field(text: str) -> str:
    name = text.strip().replace("-", "_")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if name not in known:
        raise ValueError(f"{text!r} is not a training option (see `rmserve train --help`)")
    if name in FIXED:
        raise ValueError(f"{name} is set by tune itself and cannot vary")
    return name


def _label(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def parse_candidate(text: str) -> Candidate:
    """'learning_rate=6e-5 epochs=2' → a candidate changing both options of the base recipe."""
    overrides: dict[str, Any] = {}
    for part in text.split():
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--candidate {text!r}: expected OPTION=VALUE pairs, got {part!r}")
        overrides[_field(name)] = _value(_field(name), value)
    return Candidate(_label(overrides), overrides)


def one_factor_candidates(vary: list[str]) -> list[Candidate]:
    """'OPTION=V1,V2' per entry → one candidate per value, each changing that one option of the base."""
    out = []
    for text in vary:
        name, sep, values = text.partition("=")
        if not sep or not values:
            raise ValueError(f"--vary {text!r}: expected OPTION=VALUE[,VALUE...]")
        field = _field(name)
        out.extend(Candidate(_label({field: v}), {field: v}) for v in (_value(field, x) for x in values.split(",")))
    return out


def candidate_list(vary: list[str], explicit: list[str]) -> list[Candidate]:
    """The base first, then --vary's and --candidate's, each recipe once (an option set to its base value
    is the base)."""
    out, seen = [Candidate("base", {})], {"{}"}
    for c in one_factor_candidates(vary) + [parse_candidate(t) for t in explicit]:
        key = json.dumps(c.overrides, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _write_whole(path: Path, text: str) -> None:
    """Replace `path` in one step: another tune process sharing the work directory, reading its fold
    files as its run starts, sees the whole old file or the whole new one, never a half-written one."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_folds(train_data: Path, folds: int, seed: int, work_dir: Path, limit: int | None = None) -> list[tuple[Path, Path]]:
    """(train file, held-out file) per fold, written as JSONL of the source's own rows (its first `limit`)."""
    rows = dataset_rows(train_data) if train_data.is_dir() else jsonl_rows(train_data)
    dealt = fold_rows(itertools.islice(rows, limit), folds, seed)
    directory = work_dir / (f"folds-{folds}-seed-{seed}" + (f"-first-{limit}" if limit is not None else ""))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(folds):
        train_path, held_path = directory / f"fold-{k}-train.jsonl", directory / f"fold-{k}-held-out.jsonl"
        _write_whole(train_path, "".join(json.dumps(r) + "\n" for j, part in enumerate(dealt) if j != k for r in part))
        _write_whole(held_path, "".join(json.dumps(r) + "\n" for r in dealt[k]))
        paths.append((train_path, held_path))
    return paths


def run_key(base: TrainConfig, candidate: Candidate, fold: int, folds: int, seed: int, source: str) -> str:
    """Everything that decides a run's result, hashed: the recipe, the data, the split and the fold."""
    recipe = {k: v for k, v in dataclasses.asdict(base).items() if k not in FIXED}
    recipe.update(candidate.overrides)
    text = json.dumps({"recipe": recipe, "source": source, "limit": base.limit_train, "folds": folds, "seed": seed,
                       "fold": fold}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fold(base: TrainConfig, candidate: Candidate, fold: int, paths: tuple[Path, Path], work_dir: Path,
             keep: bool) -> dict[str, Any]:
    """Train the candidate on every fold but `fold` and score it on `fold`."""
    from rmserve.training.train import train

    output = work_dir / "runs" / f"{hashlib.sha256(candidate.name.encode()).hexdigest()[:8]}-fold-{fold}"
    config = dataclasses.replace(base, **candidate.overrides, output_dir=str(output), train_data=str(paths[0]),
                                 dev_data=str(paths[1]), limit_train=None, limit_dev=None, calibration_split=0.0, resume_from=None,
                                 save_steps=0, eval_steps=0, progress=False, tensorboard=False)
    metrics = train(config)
    if not keep:
        shutil.rmtree(output, ignore_errors=True)
    return {"accuracy": metrics["dev_accuracy"], "loss": metrics["dev_loss"], "held_out_pairs": metrics["dev_pairs"],
            "train_pairs": metrics["train_pairs"], "train_steps": metrics["train_steps"],
            "train_seconds": metrics["train_seconds"]}


def read_runs(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return {r["key"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def tune(base: TrainConfig, candidates: list[Candidate], folds: int = 5, seed: int = 0,
         work_dir: str | Path = "artifacts/tune", keep_checkpoints: bool = False,
         say=print, train_missing: bool = True) -> list[dict[str, Any]]:
    """Cross-validate every candidate on the same folds of the training file; returns one record per run
    (`train_missing` False: only the runs already in the work directory, training nothing)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(base.train_data) if base.train_data else shipped_data("train")
    paths = write_folds(source, folds, seed, work, base.limit_train)
    done = read_runs(work / RUNS_FILE)
    records = []
    bar = tqdm(total=folds * len(candidates), desc="tune", unit="run", disable=not base.progress)
    for fold in range(folds):
        for candidate in candidates:
            key = run_key(base, candidate, fold, folds, seed, str(source))
            if key not in done and not train_missing:
                continue
            if key not in done:
                result = run_fold(base, candidate, fold, paths[fold], work, keep_checkpoints)
                done[key] = {"key": key, "candidate": candidate.name, "overrides": candidate.overrides,
                             "fold": fold, **result}
                with open(work / RUNS_FILE, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
                say(f"tune: {candidate.name}, fold {fold}: accuracy {result['accuracy']:.4f}, loss "
                    f"{result['loss']:.4f} on {result['held_out_pairs']} held-out pairs "
                    f"({result['train_seconds']:.0f} s of training)")
            # Named as this command names it: the key is the recipe, so a run finished under another name (the
            # same recipe as another command's base, say, when candidates run in parallel processes) is reused.
            records.append({**done[key], "candidate": candidate.name, "overrides": candidate.overrides})
            bar.update(1)
    bar.close()
    return records


def complete_folds(records: list[dict[str, Any]], candidates: list[Candidate]) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of the folds every candidate has a run on (so that every mean is over the same folds),
    and the folds left out."""
    names = {c.name for c in candidates}
    folds = sorted({r["fold"] for r in records})
    kept = [f for f in folds if {r["candidate"] for r in records if r["fold"] == f} >= names]
    return [r for r in records if r["fold"] in kept], [f for f in folds if f not in kept]


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate, in first-seen order: fold accuracies, their mean and sd, mean loss, mean training
    seconds, and the fold-by-fold difference from the first candidate (mean and sd)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(r["candidate"], []).append(r)
    base = {r["fold"]: r["accuracy"] for r in next(iter(by_name.values()))}
    out = []
    for name, runs in by_name.items():
        runs = sorted(runs, key=lambda r: r["fold"])
        accuracy = [r["accuracy"] for r in runs]
        difference = [r["accuracy"] - base[r["fold"]] for r in runs if r["fold"] in base]
        out.append({
            "candidate": name, "folds": [r["fold"] for r in runs], "accuracy": accuracy,
            "mean": statistics.fmean(accuracy), "sd": _sd(accuracy),
            "loss": statistics.fmean(r["loss"] for r in runs),
            "difference": statistics.fmean(difference), "difference_sd": _sd(difference),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
        })
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per candidate, one column per fold."""
    folds = sorted({f for s in summary for f in s["folds"]})
    head = ["candidate", *(f"fold {f}" for f in folds), "mean ± sd", "Δ vs base (mean ± sd)", "log-loss",
            "train s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        by_fold = dict(zip(s["folds"], s["accuracy"]))
        cells = [s["candidate"], *(f"{by_fold[f]:.4f}" if f in by_fold else "" for f in folds),
                 f"{s['mean']:.4f} ± {s['sd']:.4f}", f"{s['difference']:+.4f} ± {s['difference_sd']:.4f}",
                 f"{s['loss']:.4f}", f"{s['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the highest mean accuracy; lower mean log-loss breaks a tie."""
    return max(summary, key=lambda s: (round(s["mean"], 12), -s["loss"]))
