"""Evaluate a process reward model (PRM) bundle on step-labelled chains with the serving engine, in numpy.

What is measured is what the service computes: the bundle's input formatting (steps joined with its
separator, truncation keeping the last steps), its ONNX Runtime engine and its activation. Figures:
  - step AUC: over every scored step of every chain, P(a good step's reward > a bad step's), ties half;
  - step accuracy: a step counts as judged good when its reward (a probability) is at least 0.5;
  - first-error localisation: over chains with a bad step, the share whose first step scored below 0.5
    is the first bad step (a chain with no step below 0.5 is a miss); and, over right chains, the share
    with no step below 0.5;
  - best-of-N selection (a file of N candidates per problem, grouped by `problem`): the share of problems
    where the candidate with the highest aggregate reward is right (every step good), for the PRM with
    each aggregate, for an outcome reward model bundle on the same candidates (steps joined by newlines,
    as the generator's outcome pairs are), and for random choice (the mean share of right candidates);
    ties are split evenly (the expected accuracy of breaking them at random);
  - the shortcut baselines of the data (training/step_shortcuts.py), for comparison with the step AUC.
Every figure has a 95 % interval from 1,000 bootstrap resamples of the problems (chains of one problem
are resampled together; the best-of-N differences are paired on the same resamples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmserve.service.core.bundle import Bundle, load_bundle
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import InputEncoder, join_steps
from rmserve.service.core.step_scores import AGGREGATES, activate, aggregate_all
from rmserve.training.evaluate import engine_scores
from rmserve.training.metrics import auc
from rmserve.training.step_shortcuts import shortcut_aucs
from rmserve.training.steps import StepChain, load_steps

THRESHOLD = 0.5
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class ScoredChains:
    """Step rewards of chains, with the labels of the scored steps (truncation may cut the first ones)."""

    rewards: list[np.ndarray]  # per chain, probabilities of its scored steps
    labels: list[np.ndarray]  # per chain, bool labels of the same steps
    groups: np.ndarray  # per chain, the 0-based id of its problem
    steps_cut: np.ndarray  # per chain, steps cut away by truncation
    correct: np.ndarray  # per chain, whether every step is good, the cut ones included (they are still its steps)

    def subset(self, chains: np.ndarray) -> ScoredChains:
        return ScoredChains([self.rewards[i] for i in chains], [self.labels[i] for i in chains], self.groups[chains],
                            self.steps_cut[chains], self.correct[chains])


def group_ids(keys: Sequence[str | None]) -> np.ndarray:
    """0-based problem id of each chain (a chain without a problem is its own)."""
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k if k is not None else ("chain", i), len(ids)) for i, k in enumerate(keys)],
                    dtype=np.int64)


def score_chains(engine: OnnxRewardModel, encoder: InputEncoder, chains: Sequence[StepChain],
                 batch_size: int = 16) -> ScoredChains:
    """Step rewards of `chains` with a PRM engine, in sorted-by-length batches."""
    separator = encoder.spec.step_separator
    if separator is None:
        raise ValueError("not a process reward model: the bundle's input spec has no step separator")
    encoded = encoder.encode([(c.prompt, join_steps(c.steps, separator)) for c in chains])
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    scores: list[np.ndarray] = [np.empty(0)] * len(chains)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, row in zip(chunk, engine(encoder.pad([encoded[i] for i in chunk]))):
            scores[i] = activate(row)
    cut = np.array([e.steps_cut for e in encoded], dtype=np.int64)
    labels = [np.array(c.labels[k:], dtype=bool) for c, k in zip(chains, cut)]
    for chain, row, wanted in zip(chains, scores, labels):
        assert len(row) == len(wanted), f"{chain.source}: {len(row)} step scores for {len(wanted)} scored steps"
    return ScoredChains(scores, labels, group_ids([c.group for c in chains]), cut,
                        np.array([c.correct for c in chains], dtype=bool))


def first_below(rewards: np.ndarray) -> int | None:
    below = np.flatnonzero(np.asarray(rewards) < THRESHOLD)
    return int(below[0]) if below.size else None


class StepTable:
    """The per-step and per-chain arrays every step figure is computed from, built once, so that a bootstrap
    resample (a list of chain indices) costs array operations only."""

    def __init__(self, scored: ScoredChains):
        lengths = np.array([len(r) for r in scored.rewards], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(lengths)]
        self.lengths = lengths
        self.rewards = np.concatenate(scored.rewards) if scored.rewards else np.empty(0)
        self.labels = np.concatenate(scored.labels) if scored.labels else np.empty(0, dtype=bool)
        self.right = np.array([bool(good.all()) for good in scored.labels], dtype=bool)
        # A wrong chain is located when its first step below 0.5 is its first bad step; a right chain is
        # clean when no step is below 0.5.
        self.hit = np.array([first_below(r) is None if good.all() else first_below(r) == int(np.argmin(good))
                             for r, good in zip(scored.rewards, scored.labels)], dtype=bool)

    def steps_of(self, chains: np.ndarray) -> np.ndarray:
        """Indices into the step arrays of every step of `chains`, in order."""
        lengths = self.lengths[chains]
        starts = np.repeat(self.offsets[chains] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return starts + np.arange(int(lengths.sum()))

    def figures(self, chains: np.ndarray | None = None) -> dict[str, float | None]:
        chains = np.arange(len(self.lengths)) if chains is None else chains
        steps = self.steps_of(chains)
        rewards, labels = self.rewards[steps], self.labels[steps]
        right, hit = self.right[chains], self.hit[chains]
        return {
            "step_auc": auc(rewards[labels], rewards[~labels]),
            "step_accuracy": float(np.mean((rewards >= THRESHOLD) == labels)) if labels.size else None,
            "first_error_localisation": float(hit[~right].mean()) if (~right).any() else None,
            "right_chains_all_above": float(hit[right].mean()) if right.any() else None,
        }


def step_figures(scored: ScoredChains) -> dict[str, float | None]:
    """Step AUC and accuracy, first-error localisation, and the right chains' share with no step below 0.5."""
    return StepTable(scored).figures()


def selection_accuracy(values: np.ndarray, correct: np.ndarray, groups: np.ndarray) -> float | None:
    """Share of groups (0-based, contiguous ids) whose highest-valued candidate is right; ties split evenly."""
    if not len(values):
        return None
    count = int(groups.max()) + 1
    best = np.full(count, -np.inf)
    np.maximum.at(best, groups, values)
    top = values == best[groups]
    credit = np.bincount(groups, weights=top & correct, minlength=count) / np.bincount(groups, weights=top,
                                                                                       minlength=count)
    return float(credit.mean())


def random_choice_accuracy(correct: np.ndarray, groups: np.ndarray) -> float | None:
    if not len(correct):
        return None
    return float((np.bincount(groups, weights=correct) / np.bincount(groups)).mean())


def intervals(statistics: Callable[[np.ndarray], dict[str, float | None]], groups: np.ndarray,
              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, list[float] | None]:
    """95 % percentile interval of each figure `statistics` computes (from item indices, each resampled
    group's items contiguous and in order) over resamples of the groups (0-based, contiguous ids); a
    resample on which a figure is undefined is left out of its interval."""
    if not groups.size:
        return {}
    rng = np.random.default_rng(seed)
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        drawn = rng.integers(0, len(sizes), size=len(sizes))
        lengths = sizes[drawn]
        offsets = np.repeat(starts[drawn] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        for name, value in statistics(order[offsets + np.arange(int(lengths.sum()))]).items():
            values.setdefault(name, [])
            if value is not None:
                values[name].append(value)
    return {name: [float(x) for x in np.percentile(v, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])] if v else None
            for name, v in values.items()}


def _regroup(groups: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Group ids of a resample, told apart per draw (a problem drawn twice counts as two problems)."""
    if not chosen.size:
        return chosen
    starts = np.r_[True, (groups[chosen][1:] != groups[chosen][:-1]) | (np.diff(chosen) <= 0)]
    return np.cumsum(starts) - 1


def step_metrics(scored: ScoredChains, resamples: int = RESAMPLES) -> dict[str, Any]:
    table = StepTable(scored)
    figures: dict[str, Any] = dict(table.figures())
    steps = int(table.labels.size)
    good = int(table.labels.sum())
    figures.update({"chains": len(scored.rewards), "problems": int(len(np.unique(scored.groups))),
                    "steps": steps, "good_steps": good, "bad_steps": steps - good,
                    "steps_cut": int(scored.steps_cut.sum()), "intervals": {}})
    figures["intervals"] = intervals(table.figures, scored.groups, resamples)
    return figures


def best_of_metrics(scored: ScoredChains, outcome: np.ndarray | None, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Selection accuracy of the PRM (each aggregate), the outcome bundle (when given) and random choice."""
    correct = scored.correct
    groups = scored.groups
    values = {f"prm_{how}": aggregate_all(scored.rewards, how) for how in AGGREGATES}
    if outcome is not None:
        values["outcome"] = np.asarray(outcome, dtype=np.float64)
    sizes = np.bincount(groups)
    out: dict[str, Any] = {"problems": int(len(sizes)), "candidates_per_problem": int(sizes.max()) if sizes.size else 0}

    def figures(i: np.ndarray) -> dict[str, float | None]:
        regrouped = _regroup(groups, i)
        found = {name: selection_accuracy(v[i], correct[i], regrouped) for name, v in values.items()}
        found["random"] = random_choice_accuracy(correct[i], regrouped)
        for other in ("outcome", "random"):
            if other in found:
                found[f"prm_minus_{other}"] = found["prm_min"] - found[other]  # type: ignore[operator]
        return found

    out.update(figures(np.arange(len(correct))))
    out["intervals"] = intervals(figures, groups, resamples)
    return out


def run_step_evaluation(bundle_dir: str | Path, data: str | Path, best_of: str | Path | None = None,
                        outcome_bundle: str | Path | None = None, limit: int | None = None,
                        device: str = "auto", resamples: int = RESAMPLES) -> tuple[dict[str, Any], ScoredChains]:
    """Every figure of the module docstring for the PRM bundle on `data` (and on `best_of`, compared with
    `outcome_bundle` when given): (metrics, the scored chains of `data`)."""
    bundle = load_bundle(bundle_dir)
    if bundle.manifest.steps is None:
        raise ValueError(f"{bundle_dir} is an outcome reward model bundle; evaluate it on preference pairs")
    engine = OnnxRewardModel.for_bundle(bundle, device=device)  # type: ignore[arg-type]
    encoder = bundle.encoder()
    loaded = load_steps(data, limit, skip_bad_rows=True)
    scored = score_chains(engine, encoder, loaded.chains)
    metrics: dict[str, Any] = {"bundle_id": bundle.manifest.bundle_id, "kind": "prm", "data": str(data),
                               "skipped_rows": len(loaded.skipped), "aggregate": bundle.manifest.steps.aggregate,
                               **step_metrics(scored, resamples),
                               "shortcut_baselines": shortcut_aucs(loaded.chains)}
    if best_of is not None:
        candidates = load_steps(best_of, skip_bad_rows=True).chains
        outcome = None
        if outcome_bundle is not None:
            outcome = _outcome_scores(load_bundle(outcome_bundle), candidates, device)
            metrics["outcome_bundle_id"] = load_bundle(outcome_bundle, verify_hashes=False).manifest.bundle_id
        metrics["best_of"] = {"data": str(best_of),
                              **best_of_metrics(score_chains(engine, encoder, candidates), outcome, resamples)}
    return metrics, scored


def _outcome_scores(bundle: Bundle, chains: Sequence[StepChain], device: str) -> np.ndarray:
    if bundle.manifest.steps is not None:
        raise ValueError("--outcome-bundle must be an outcome reward model bundle, not a process reward model")
    engine = OnnxRewardModel.for_bundle(bundle, device=device)  # type: ignore[arg-type]
    return engine_scores(engine, bundle.encoder(), [(c.prompt, "\n".join(c.steps)) for c in chains])


def _f(x: float | None, interval_: list[float] | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" + (f" [{interval_[0]:.4f}, {interval_[1]:.4f}]" if interval_ else "")


def format_step_summary(metrics: dict[str, Any]) -> str:
    """The metrics as a few readable lines (what `rmserve eval` prints for a PRM bundle without --json)."""
    ci = metrics["intervals"]
    shortcuts = metrics["shortcut_baselines"]
    lines = [
        f"bundle {metrics['bundle_id']} (process reward model) on {Path(metrics['data']).name}: {metrics['chains']} "
        f"chains of {metrics['problems']} problems, {metrics['steps']} steps ({metrics['bad_steps']} bad), "
        f"{metrics['steps_cut']} steps cut by truncation; 95 % intervals by problem in brackets",
        f"step AUC {_f(metrics['step_auc'], ci['step_auc'])}, step accuracy "
        f"{_f(metrics['step_accuracy'], ci['step_accuracy'])} (a step is judged good at reward >= 0.5)",
        f"first-error localisation {_f(metrics['first_error_localisation'], ci['first_error_localisation'])}; "
        f"right chains with no step below 0.5: {_f(metrics['right_chains_all_above'], ci['right_chains_all_above'])}",
        "shortcut baselines (step AUC): " + ", ".join(f"{k} {_f(v)}" for k, v in shortcuts.items()),
    ]
    best = metrics.get("best_of")
    if best:
        bci = best["intervals"]
        lines.append(
            f"best-of-{best['candidates_per_problem']} selection on {best['problems']} problems: PRM (min) "
            f"{_f(best['prm_min'], bci['prm_min'])}, last {_f(best['prm_last'])}, mean {_f(best['prm_mean'])}, "
            f"prod {_f(best['prm_prod'])}; random {_f(best['random'], bci['random'])}"
            + (f"; outcome RM {_f(best['outcome'], bci['outcome'])}, PRM − outcome "
               f"{_f(best['prm_minus_outcome'], bci['prm_minus_outcome'])}" if "outcome" in best else ""))
    return "\n".join(lines)
