"""Preference data: the row formats rmserve trains and evaluates on, and the one parser that reads them.

Where the data can be
  - a JSONL file, one row per line, optionally gzipped (`.jsonl.gz`); rows are reported as `file:line`;
  - a directory written by Hugging Face `datasets`' `Dataset.save_to_disk` (one split: for a `DatasetDict`
    give the split's subdirectory); rows are reported as `dir:row N`, where N indexes the dataset
    (`dataset[N]`). Needs the `datasets` package (in the `train` extra).

Row shapes (a prompt is plain text or chat messages `[{"role": "system"|"user"|"assistant", "content": str}]`,
rendered by the bundle's template exactly as the service renders it):

  pair      {"prompt": ..., "chosen": str, "rejected": str}
  dialogue  {"chosen": str, "rejected": str}
            two full dialogues (HH-RLHF): the prefix they share, up to its last "\\n\\nAssistant:", is the prompt.
  ranking   {"prompt": ..., "responses": [str, str, ...]}              best first
            {"prompt": ..., "responses": [...], "ranks": [number, ...]} lower rank = better; equal ranks tie
            A ranking of K responses yields all K(K-1)/2 comparisons of that prompt, kept together (one
            `PreferenceGroup`, each response stored, and so encoded, once), and counts as one prompt in the
            listwise loss however many pairs it has (InstructGPT). Responses must be distinct.

  rating    {"prompt": ..., "response": str, "rating": number}       optional "rater"
            A file whose first row has `response` or `rating` is a ratings file: every row must be one, and
            rows are grouped by (prompt, rater) into rankings by training/ratings.py (how gaps become labels
            or margins, ties, single-response prompts: see there). `limit` then counts those groups.

Optional fields of a pair or dialogue row:
  label   P(chosen preferred over rejected), a number in [0, 1]: 1 (the default) is a hard preference,
          0.5 a tie, 0.8 "chosen is better, 4 raters in 5 agree". A label below 0.5 is kept as given (it says
          the rejected response is the likelier better one); it is not swapped.
  margin  a finite number >= 0: how far chosen should score above rejected (Llama 2's preference strength).
          A non-zero margin needs a hard preference: with `label` other than 1 it is an error.

Fields not named here (ids, sources, metadata) are ignored, and a null field counts as absent (a saved
dataset with rows of several shapes fills other shapes' columns with nulls). A row with fields of two
shapes (say `responses` and `chosen`) or of none is an error naming the shapes accepted.

Every bad row raises `DataError` naming where it is and the field (`pairs.jsonl:17 field 'rejected': is
empty`; an element of a list as `responses.3` or `prompt.0.role`). With `skip_bad_rows=True` bad rows are
left out and returned in `.skipped` instead (the CLI's `--skip-bad-rows`), so a run can say how many.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from rmserve.training.ratings import RatingOptions, load_ratings
from rmserve.training.records import (
    PAIR_FIELDS,
    RANKING_FIELDS,
    Comparison,
    DataError,
    PairFile,
    PreferenceFile,
    PreferenceGroup,
    Where,
    dataset_rows,
    jsonl_rows,
    number_field,
    prompt_field,
    required_field,
    text_field,
    with_skip_hint,
)

ASSISTANT_TURN = "\n\nAssistant:"
SHAPES = (
    "accepted row shapes: {prompt, chosen, rejected} and {chosen, rejected} as full dialogues "
    "(both with optional label, margin), {prompt, responses} (optional ranks); a ratings file has only "
    "{prompt, response, rating} rows (optional rater)"
)


def shipped_data(split: str) -> Path:
    """Path of a split ("train" or "dev") of the HH-RLHF harmless data shipped with rmserve."""
    path = Path(str(resources.files("rmserve.training") / "data" / "hh-harmless" / f"{split}.jsonl.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped split named {split!r} at {path}")
    return path


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split two full dialogues that share a prefix into (prompt, chosen reply, rejected reply).

    The prompt ends with the last "\\n\\nAssistant:" turn marker the two dialogues share; None when they
    share none.
    """
    limit = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        limit += 1
    cut = chosen.rfind(ASSISTANT_TURN, 0, limit)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT_TURN)
    return chosen[:end], chosen[end:], rejected[end:]


def _label(row: dict, where: Where) -> float:
    if "label" not in row:
        return 1.0
    label = number_field(row["label"], "label", where, "a number in [0, 1]")
    if not 0.0 <= label <= 1.0:  # also false for NaN
        raise where.error("label", f"must be in [0, 1] (P(chosen preferred over rejected)), got {label}")
    return label


def _margin(row: dict, label: float, where: Where) -> float:
    if "margin" not in row:
        return 0.0
    margin = number_field(row["margin"], "margin", where, "a finite number >= 0")
    if not math.isfinite(margin) or margin < 0:
        raise where.error("margin", f"must be a finite number >= 0, got {margin}")
    if margin > 0 and label != 1.0:
        raise where.error("margin", f"needs a hard preference (label 1), but label is {label}")
    return margin


def _parse_pair(row: dict, where: Where) -> PreferenceGroup:
    chosen = required_field(row, "chosen", where)
    rejected = required_field(row, "rejected", where)
    if "prompt" in row:
        prompt = prompt_field(row["prompt"], where)
    else:
        split = split_dialogue(chosen, rejected)
        if split is None:
            raise where.error(
                "chosen", "no 'prompt' field, and chosen/rejected share no prefix ending in '\\n\\nAssistant:'"
            )
        prompt, chosen, rejected = split
        if not chosen.strip() or not rejected.strip():
            raise where.error("chosen" if not chosen.strip() else "rejected", "empty reply after the prompt")
    if chosen == rejected:
        raise where.error("rejected", "is the same text as chosen")
    label = _label(row, where)
    comparison = Comparison(0, 1, label, _margin(row, label, where))
    return PreferenceGroup(prompt, (chosen, rejected), (comparison,), str(where))


def _parse_ranking(row: dict, where: Where) -> PreferenceGroup:
    if "prompt" not in row:
        raise where.error("prompt", "missing (a ranking needs its prompt)")
    prompt = prompt_field(row["prompt"], where)
    responses = row.get("responses")
    if not isinstance(responses, list):
        raise where.error("responses", "missing" if responses is None else
                          f"must be a list of strings, best first, got {type(responses).__name__}")
    if len(responses) < 2:
        raise where.error("responses", f"needs at least 2 responses, got {len(responses)}")
    first_at: dict[str, int] = {}
    for i, response in enumerate(responses):
        text_field(response, f"responses.{i}", where)
        if response in first_at:
            raise where.error(f"responses.{i}", f"is the same text as responses.{first_at[response]}")
        first_at[response] = i
    if "ranks" in row:
        ranks = row["ranks"]
        if not isinstance(ranks, list) or len(ranks) != len(responses):
            got = f"{len(ranks)} ranks" if isinstance(ranks, list) else type(ranks).__name__
            raise where.error("ranks", f"must be a list of one number per response ({len(responses)}), got {got}")
        for i, rank in enumerate(ranks):
            if not math.isfinite(number_field(rank, f"ranks.{i}", where, "a number")):
                raise where.error(f"ranks.{i}", f"must be finite, got {rank}")
    else:
        ranks = list(range(len(responses)))
    comparisons = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if ranks[i] == ranks[j]:
                comparisons.append(Comparison(i, j, 0.5))
            else:
                comparisons.append(Comparison(i, j) if ranks[i] < ranks[j] else Comparison(j, i))
    return PreferenceGroup(prompt, tuple(responses), tuple(comparisons), str(where))


def _parse_row(row: dict, where: Where) -> PreferenceGroup:
    """One row of any accepted shape as a PreferenceGroup; DataError (with file, line, field) if bad."""
    row = {key: value for key, value in row.items() if value is not None}
    pair = [f for f in PAIR_FIELDS if f in row]
    ranking = [f for f in RANKING_FIELDS if f in row]
    if pair and ranking:
        raise where.error(pair[0], f"a row with {ranking[0]!r} is a ranking and cannot have {pair}; {SHAPES}")
    if ranking:
        return _parse_ranking(row, where)
    if pair:
        return _parse_pair(row, where)
    raise where.error(None, f"no preference fields (it has {sorted(row)}); {SHAPES}")


def is_rating_row(row: dict) -> bool:
    """A row of a ratings file: `response` or `rating`, and no field of another shape (a null counts as absent)."""
    present = {key for key, value in row.items() if value is not None}
    return bool(present & {"response", "rating"}) and not present & {*PAIR_FIELDS, *RANKING_FIELDS}


def _first_row(rows: Iterator[tuple[Where, dict | DataError]]) -> tuple[dict | None, Iterator]:
    """The first row that is a JSON object (None if none), and all the rows again."""
    seen: list[tuple[Where, dict | DataError]] = []
    for item in rows:
        seen.append(item)
        if not isinstance(item[1], DataError):
            return item[1], itertools.chain(seen, rows)
    return None, iter(seen)


def load_preferences(path: str | Path, limit: int | None = None, skip_bad_rows: bool = False,
                     ratings: RatingOptions | None = None) -> PreferenceFile:
    """Every row of a .jsonl / .jsonl.gz file or a save_to_disk directory as a PreferenceGroup (the first
    `limit` good rows when given). A bad row raises DataError unless `skip_bad_rows`, in which case it is
    left out and returned in `PreferenceFile.skipped`. A ratings file is converted by training/ratings.py
    with `ratings` (default: RatingOptions())."""
    path = Path(path)
    if path.is_dir():
        rows: Iterator[tuple[Where, dict | DataError]] = dataset_rows(path)
    elif path.is_file():
        rows = jsonl_rows(path)
    else:
        raise FileNotFoundError(f"data file {path} does not exist")
    first, rows = _first_row(rows)
    if first is not None and is_rating_row(first):
        return load_ratings(path, rows, limit, skip_bad_rows, ratings or RatingOptions())
    groups: list[PreferenceGroup] = []
    skipped: list[DataError] = []
    for where, row in rows:
        if limit is not None and len(groups) >= limit:
            break
        try:
            if isinstance(row, DataError):
                raise row
            groups.append(_parse_row(row, where))
        except DataError as e:
            if not skip_bad_rows:
                raise with_skip_hint(e) from None
            skipped.append(e)
    if not groups:
        raise DataError(path, 0, None, "holds no preference rows"
                        + (f" ({len(skipped)} bad rows skipped)" if skipped else ""))
    return PreferenceFile(path=path, groups=groups, skipped=skipped)


def load_pairs(path: str | Path, limit: int | None = None, skip_bad_rows: bool = False,
               ratings: RatingOptions | None = None) -> PairFile:
    """`load_preferences` flattened to pairs (for evaluation and export); `limit` counts rows, so a
    ranking row brings all its pairs; a ratings file is read with `ratings` (default: RatingOptions())."""
    loaded = load_preferences(path, limit, skip_bad_rows, ratings)
    return PairFile(path=loaded.path, pairs=loaded.pairs, skipped=loaded.skipped)
