"""What `rmserve data` says about preference data before any training: conversion to pairs, and a report.

`convert_to_pairs` writes any accepted file (ratings, rankings, pairs, a saved dataset) as pairs JSONL,
one comparison a line, loadable by `load_preferences` with the same labels and margins. Each pair then
becomes its own row in training, whereas a ratings or ranking file read directly keeps a prompt's
comparisons together as one listwise group.

`inspect_data` reports what a reward model could learn from the data besides the preferences themselves:
the label mix, how often the preferred response is the longer one (a model can reach that accuracy by
length alone), exact duplicates and contradictions (the same prompt and two responses preferred both
ways), and, given an `InputEncoder` (the bundle's, or a tokenizer's), the token lengths and how many rows
`max_length` truncates, by the service's own tokenization and truncation. No torch: numpy only.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from rmserve.service.core.inputs import InputEncoder
from rmserve.training.records import PreferenceFile

TIE = 0.5
EXAMPLES = 3  # sources quoted per finding


def _prompt_key(prompt: object) -> str:
    return json.dumps(prompt, sort_keys=True)


def data_counts(loaded: PreferenceFile) -> dict:
    """Rows read, prompts, groups, pairs (decided), ties, and what was left out: bad rows, dropped ties,
    single-response prompts (the last two only from ratings)."""
    labels = [c.label for g in loaded.groups for c in g.comparisons]
    ratings = loaded.ratings
    return {
        "rows": (ratings.rows if ratings else len(loaded.groups)) + len(loaded.skipped),
        "bad_rows": len(loaded.skipped),
        "prompts": ratings.prompts if ratings else len({_prompt_key(g.prompt) for g in loaded.groups}),
        "groups": len(loaded.groups),
        "pairs": sum(label != TIE for label in labels),
        "ties": sum(label == TIE for label in labels),
        "ties_dropped": ratings.ties_dropped if ratings else 0,
        "single_response_prompts": ratings.single_response if ratings else 0,
    }


def convert_to_pairs(loaded: PreferenceFile, output: str | Path) -> dict:
    """Write every comparison as a {prompt, chosen, rejected, label, margin, source} line; returns data_counts."""
    output = Path(output)
    if output.resolve() == loaded.path.resolve():
        raise ValueError(f"output {output} is the input file; write the pairs elsewhere")
    output.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if output.suffix == ".gz" else open
    with opener(output, "wt", encoding="utf-8") as f:
        for group in loaded.groups:
            for pair in group.pairs():
                f.write(json.dumps({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                                    "label": pair.label, "margin": pair.margin, "source": group.source},
                                   ensure_ascii=False) + "\n")
    return data_counts(loaded)


def format_counts(counts: dict) -> str:
    return (f"{counts['pairs'] + counts['ties']} pairs ({counts['pairs']} preferences, {counts['ties']} ties) from "
            f"{counts['prompts']} prompts, {counts['rows']} rows; dropped: {counts['ties_dropped']} tied pairs, "
            f"{counts['bad_rows']} bad rows; {counts['single_response_prompts']} single-response prompts (no pair)")


def _spread(values: np.ndarray) -> dict:
    if not len(values):
        return {"mean": None, "p50": None, "p95": None, "max": None}
    return {"mean": round(float(values.mean()), 1), "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1), "max": int(values.max())}


def _length_bias(preferred: np.ndarray, other: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> dict:
    decided = len(preferred)
    return {
        "chosen": _spread(chosen),
        "rejected": _spread(rejected),
        "decided_pairs": decided,
        "preferred_longer": float((preferred > other).mean()) if decided else None,
        "preferred_shorter": float((preferred < other).mean()) if decided else None,
        "same_length": float((preferred == other).mean()) if decided else None,
    }


def _labels(labels: np.ndarray, margins: np.ndarray) -> dict:
    positive = margins[margins > 0]
    return {
        "1": int((labels == 1).sum()), "(0.5, 1)": int(((labels > TIE) & (labels < 1)).sum()),
        "0.5": int((labels == TIE).sum()), "(0, 0.5)": int(((labels > 0) & (labels < TIE)).sum()),
        "0": int((labels == 0).sum()),
        "with_margin": len(positive), "mean_margin": round(float(positive.mean()), 4) if len(positive) else None,
        "max_margin": float(positive.max()) if len(positive) else None,
    }


def _repeats(loaded: PreferenceFile) -> dict:
    """Pairs that repeat an earlier one (same prompt, responses and direction), and response pairs of one
    prompt preferred both ways (ties count as a direction of their own, never as a contradiction)."""
    directions: dict[tuple, dict[int, str]] = {}  # (prompt, response, response) → direction → first source
    duplicates, duplicate_examples = 0, []
    for group in loaded.groups:
        prompt = _prompt_key(group.prompt)
        for c in group.comparisons:
            a, b = group.responses[c.better], group.responses[c.worse]
            preferred = a if c.label > TIE else b
            key = (prompt, min(a, b), max(a, b))
            direction = 0 if c.label == TIE else (1 if preferred == key[1] else -1)
            seen = directions.setdefault(key, {})
            if direction in seen:
                duplicates += 1
                if len(duplicate_examples) < EXAMPLES:
                    duplicate_examples.append(f"{group.source} repeats {seen[direction]}")
            else:
                seen[direction] = group.source
    contradictions = [d for d in directions.values() if 1 in d and -1 in d]
    return {
        "duplicate_pairs": duplicates, "duplicate_examples": duplicate_examples,
        "contradictory_pairs": len(contradictions),
        "contradictory_examples": [f"{d[1]} vs {d[-1]}" for d in contradictions[:EXAMPLES]],
    }


def _tokens(encoder: InputEncoder, loaded: PreferenceFile, chosen_index: list[tuple[int, int, int]]) -> dict:
    """Token lengths and truncation of every (prompt, response) row, as training encodes them."""
    rows = [(g.prompt, r) for g in loaded.groups for r in g.responses]
    encoded = encoder.encode(rows)
    response_tokens = np.array([len(e.ids) for e in encoder.tokenizer.encode_batch(
        [r for _, r in rows], add_special_tokens=False)], dtype=np.int64)
    full = np.array([len(e.ids) + e.prompt_tokens_cut + e.response_tokens_cut for e in encoded], dtype=np.int64)
    cut_pairs = response_cut_pairs = indistinct = 0
    for _, better, worse in chosen_index:
        a, b = encoded[better], encoded[worse]
        cut_pairs += a.truncated or b.truncated
        response_cut_pairs += a.response_tokens_cut > 0 or b.response_tokens_cut > 0
        indistinct += a.ids == b.ids
    return {
        "max_length": encoder.spec.max_length,
        "rows": len(rows),
        "truncated_rows": sum(e.truncated for e in encoded),
        "prompt_cut_rows": sum(e.prompt_tokens_cut > 0 for e in encoded),
        "response_cut_rows": sum(e.response_tokens_cut > 0 for e in encoded),
        "pairs_with_a_truncated_row": cut_pairs,
        "pairs_with_a_cut_response": response_cut_pairs,
        "pairs_identical_after_truncation": indistinct,
        "row_tokens_untruncated": _spread(full),
        "response_tokens": response_tokens,  # per row; replaced by the length-bias figures in inspect_data
    }


def inspect_data(loaded: PreferenceFile, encoder: InputEncoder | None = None) -> dict:
    """The report of `rmserve data inspect` as one JSON-ready dict (see the module docstring)."""
    # (group, better row, worse row) with rows indexed over all responses of all groups, file order.
    index, offset = [], 0
    labels, margins = [], []
    for group in loaded.groups:
        for c in group.comparisons:
            index.append((len(labels), offset + c.better, offset + c.worse))
            labels.append(c.label)
            margins.append(c.margin)
        offset += len(group.responses)
    label = np.array(labels, dtype=np.float64)
    char_len = np.array([len(r) for g in loaded.groups for r in g.responses], dtype=np.int64)
    chosen_rows = np.array([b for _, b, _ in index], dtype=np.int64)
    rejected_rows = np.array([w for _, _, w in index], dtype=np.int64)
    decided = label != TIE
    # A label below 0.5 says the "rejected" response is the likelier better one.
    pref_rows = np.where(label > TIE, chosen_rows, rejected_rows)[decided]
    other_rows = np.where(label > TIE, rejected_rows, chosen_rows)[decided]

    def lengths(per_row: np.ndarray) -> dict:
        return _length_bias(per_row[pref_rows], per_row[other_rows], per_row[chosen_rows], per_row[rejected_rows])

    report = {
        "data": str(loaded.path),
        "format": "ratings" if loaded.ratings else "pairs/rankings",
        **data_counts(loaded),
        "bad_row_examples": [str(e) for e in loaded.skipped[:EXAMPLES]],
        "labels": _labels(label, np.array(margins, dtype=np.float64)),
        "chars": lengths(char_len),
        **_repeats(loaded),
    }
    if loaded.ratings:
        report["ratings"] = loaded.ratings.summary()
    if encoder is not None:
        tokens = _tokens(encoder, loaded, index)
        report["tokens"] = lengths(tokens.pop("response_tokens"))
        report["truncation"] = tokens
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _sides(bias: dict) -> str:
    def side(s: dict) -> str:
        return "-" if s["mean"] is None else f"mean {s['mean']:g}, median {s['p50']:g}, p95 {s['p95']:g}, max {s['max']}"
    return f"chosen {side(bias['chosen'])}; rejected {side(bias['rejected'])}"


def format_report(report: dict) -> str:
    """The report as a few lines of text."""
    labels = report["labels"]
    lines = [
        f"{report['data']} ({report['format']}): {report['rows']} rows, {report['prompts']} prompts, "
        f"{report['groups']} groups, {report['pairs']} pairs + {report['ties']} ties",
    ]
    if report["bad_rows"]:
        lines.append(f"bad rows left out: {report['bad_rows']} (e.g. {'; '.join(report['bad_row_examples'])})")
    if "ratings" in report:
        lines.append(f"ratings: {report['ratings']}")
    lines.append("labels: " + ", ".join(f"{k}: {labels[k]}" for k in ("1", "(0.5, 1)", "0.5", "(0, 0.5)", "0"))
                 + f"; {labels['with_margin']} pairs with a margin"
                 + (f" (mean {labels['mean_margin']:g}, max {labels['max_margin']:g})" if labels["with_margin"] else ""))
    for unit in ("chars", "tokens"):
        if unit not in report:
            continue
        bias = report[unit]
        lines.append(f"response {unit}: {_sides(bias)}")
        lines.append(f"preferred response longer in {_pct(bias['preferred_longer'])} of {bias['decided_pairs']} "
                     f"decided pairs ({unit}), shorter in {_pct(bias['preferred_shorter'])}, same length in "
                     f"{_pct(bias['same_length'])}")
    lines.append(f"duplicate pairs: {report['duplicate_pairs']}"
                 + (f" (e.g. {'; '.join(report['duplicate_examples'])})" if report["duplicate_pairs"] else "")
                 + f"; contradictory pairs (same prompt and responses, opposite preference): "
                 f"{report['contradictory_pairs']}"
                 + (f" (e.g. {'; '.join(report['contradictory_examples'])})" if report["contradictory_pairs"] else ""))
    if "truncation" in report:
        t = report["truncation"]
        full = t["row_tokens_untruncated"]
        lines.append(f"max_length {t['max_length']}: {t['truncated_rows']} of {t['rows']} rows over it "
                     f"({t['prompt_cut_rows']} lose the start of the prompt, {t['response_cut_rows']} of the "
                     f"response); {t['pairs_with_a_truncated_row']} pairs touched, {t['pairs_with_a_cut_response']} "
                     f"with a cut response, {t['pairs_identical_after_truncation']} identical after truncation; "
                     f"untruncated row tokens median {full['p50']:g}, p95 {full['p95']:g}, max {full['max']}")
    return "\n".join(lines)
