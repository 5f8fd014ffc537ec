"""Ratings → preferences: absolute scores of several responses to one prompt, turned into comparisons.

A ratings file has one row per rated response:

  rating    {"prompt": ..., "response": str, "rating": number}            optional "rater": str or int

Ratings are not comparable across prompts, nor across labelers with their own sense of the scale, but two
responses to the same prompt rated by the same labeler do hold a preference. So rows are grouped by prompt
and, when given, by rater: a group is one (prompt, rater) and becomes one `PreferenceGroup` whose responses
are compared with each other only. Rows without a `rater` form, per prompt, one group of their own (as if
one unnamed labeler rated them all); they are never compared with rows that name a rater. Prompts mixing
the two are counted (`mixed_rater_prompts`).

In a group every two responses with different ratings make one comparison, the higher rated better, with
the rating gap g turned into a label and margin by `RatingOptions`:
  margin (default)  label 1, margin = scale × g (scale defaults to 1 / the file's rating range, so the
                    widest gap gets margin 1), or a Llama 2 style table of levels for g = 1, 2, 3, ...
  soft              label σ(g / temperature), margin 0
  hard              label 1, margin 0
Equal ratings are a tie (label 0.5) or dropped (`ties`). A group with a single response yields no pair and
is counted (`single_response`), as is a group whose only comparisons were dropped ties (`all_tied`); neither
is returned. The same response rated twice in one group is a bad row (which rating would count?).

Bad rows raise `DataError` with file, line and field like every other format; with `skip_bad_rows` they
are left out and returned, and the remaining rows are grouped without them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rmserve.service.core.inputs import Prompt
from rmserve.training.config import TrainConfig
from rmserve.training.records import (
    PAIR_FIELDS,
    RANKING_FIELDS,
    Comparison,
    DataError,
    PreferenceFile,
    PreferenceGroup,
    Where,
    number_field,
    prompt_field,
    text_field,
    with_skip_hint,
)

RATING_FIELDS = ("response", "rating", "rater")
LABEL_MODES = ("margin", "soft", "hard")
TIE_MODES = ("keep", "drop")


def parse_levels(text: str | None) -> tuple[float, ...] | None:
    """'0,0.33,0.67,1' → (0.0, 0.33, 0.67, 1.0); margins must be finite, >= 0 and non-decreasing."""
    if text is None or not str(text).strip():
        return None
    try:
        levels = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"--rating-margin-levels must be comma-separated numbers, got {text!r}") from None
    if any(not math.isfinite(m) or m < 0 for m in levels) or list(levels) != sorted(levels):
        raise ValueError(f"--rating-margin-levels must be finite margins >= 0, non-decreasing, got {text!r}")
    return levels


@dataclass(frozen=True)
class RatingOptions:
    """How rating gaps become labels and margins; defaults are TrainConfig's (the one place they are documented)."""

    labels: str = TrainConfig.rating_labels
    margin_scale: float | None = TrainConfig.rating_margin_scale
    margin_levels: tuple[float, ...] | None = None
    temperature: float = TrainConfig.rating_temperature
    ties: str = TrainConfig.rating_ties

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise ValueError(f"--rating-labels must be one of {', '.join(LABEL_MODES)}, not {self.labels!r}")
        if self.ties not in TIE_MODES:
            raise ValueError(f"--rating-ties must be one of {', '.join(TIE_MODES)}, not {self.ties!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"--rating-temperature must be a finite number > 0, got {self.temperature}")
        if self.margin_scale is not None and not (math.isfinite(self.margin_scale) and self.margin_scale >= 0):
            raise ValueError(f"--rating-margin-scale must be a finite number >= 0, got {self.margin_scale}")
        if self.margin_scale is not None and self.margin_levels is not None:
            raise ValueError("give --rating-margin-scale or --rating-margin-levels, not both")
        if self.labels != "margin" and (self.margin_scale is not None or self.margin_levels is not None):
            raise ValueError(f"--rating-margin-scale/--rating-margin-levels need --rating-labels margin, "
                             f"not {self.labels}")
        if self.margin_levels is not None and not self.margin_levels:
            raise ValueError("--rating-margin-levels needs at least one level")

    @classmethod
    def from_config(cls, config: object) -> RatingOptions:
        """From anything with the `rating_*` attributes: a TrainConfig or the CLI's parsed arguments."""
        return cls(labels=config.rating_labels, margin_scale=config.rating_margin_scale,  # type: ignore[attr-defined]
                   margin_levels=parse_levels(config.rating_margin_levels),  # type: ignore[attr-defined]
                   temperature=config.rating_temperature, ties=config.rating_ties)  # type: ignore[attr-defined]

    @classmethod
    def from_checkpoint(cls, training: Mapping[str, Any]) -> RatingOptions:
        """From the training options a checkpoint records (rmserve_checkpoint.json), so that export reads a
        ratings dev file as training did; options a checkpoint lacks take their defaults."""
        names = ("rating_labels", "rating_margin_scale", "rating_margin_levels", "rating_temperature", "rating_ties")
        return cls.from_config(SimpleNamespace(**{n: training.get(n, getattr(TrainConfig, n)) for n in names}))

    def comparison(self, better: int, worse: int, gap: float, scale: float) -> Comparison:
        """The comparison of two responses whose ratings differ by `gap` > 0."""
        if self.labels == "soft":
            return Comparison(better, worse, 1.0 / (1.0 + math.exp(-gap / self.temperature)))
        if self.labels == "hard":
            return Comparison(better, worse)
        if self.margin_levels is not None:
            level = min(max(math.ceil(gap - 1e-9), 1), len(self.margin_levels)) - 1
            return Comparison(better, worse, 1.0, self.margin_levels[level])
        return Comparison(better, worse, 1.0, scale * gap)


@dataclass
class RatingCounts:
    """What a conversion made of a ratings file; nothing left out goes uncounted."""

    rows: int = 0  # good rating rows
    prompts: int = 0  # distinct prompts
    groups: int = 0  # (prompt, rater) groups returned, each with at least one comparison
    pairs: int = 0  # comparisons with a preference
    ties: int = 0  # tie comparisons kept (label 0.5)
    ties_dropped: int = 0
    single_response: int = 0  # groups of one response: no pair
    all_tied: int = 0  # groups whose comparisons were all dropped ties
    mixed_rater_prompts: int = 0  # prompts with rows that name a rater and rows that do not
    raters: int = 0  # distinct raters named
    margin_scale: float | None = None  # the scale used, with --rating-labels margin and no levels
    single_response_at: list[str] = field(default_factory=list)  # where the first few single-response groups are

    def summary(self) -> str:
        per = " (per rater)" if self.raters else ""
        text = (f"{self.rows} rated responses to {self.prompts} prompts"
                + (f" by {self.raters} raters" if self.raters else "")
                + f" → {self.groups} groups{per}, {self.pairs} pairs, {self.ties} ties kept, "
                f"{self.ties_dropped} ties dropped; {self.single_response} single-response prompts{per} yield no pair")
        if self.single_response_at:
            text += f" (e.g. {', '.join(self.single_response_at)})"
        if self.all_tied:
            text += f"; {self.all_tied} prompts{per} with only tied ratings left out"
        if self.mixed_rater_prompts:
            text += (f"; {self.mixed_rater_prompts} prompts have rows with and without a rater "
                     "(those without are compared only with each other)")
        if self.margin_scale is not None:
            text += f"; margin = {self.margin_scale:.4g} x rating gap"
        return text


@dataclass
class _Group:
    prompt: Prompt
    responses: list[str] = field(default_factory=list)
    ratings: list[float] = field(default_factory=list)
    wheres: list[Where] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.wheres[0]) + "".join(f",{w.line}" for w in self.wheres[1:])


def _parse_rating_row(row: dict, where: Where) -> tuple[Prompt, str, float, str | int | None]:
    row = {key: value for key, value in row.items() if value is not None}
    foreign = [f for f in PAIR_FIELDS + RANKING_FIELDS if f in row]
    if foreign:
        raise where.error(foreign[0], "a ratings file has only {prompt, response, rating, rater} rows; "
                                      "convert other shapes to ratings or keep them in a separate file")
    if "prompt" not in row:
        raise where.error("prompt", "missing (a rating needs its prompt)")
    prompt = prompt_field(row["prompt"], where)
    if "response" not in row:
        raise where.error("response", "missing (a ratings row is {prompt, response, rating})")
    response = text_field(row["response"], "response", where)
    if "rating" not in row:
        raise where.error("rating", "missing (a ratings row is {prompt, response, rating})")
    rating = number_field(row["rating"], "rating", where, "a number")
    if not math.isfinite(rating):
        raise where.error("rating", f"must be finite, got {rating}")
    rater = row.get("rater")
    if rater is not None:
        if isinstance(rater, bool) or not isinstance(rater, (str, int)):
            raise where.error("rater", f"must be a string or an integer id, got {type(rater).__name__}")
        if isinstance(rater, str) and not rater.strip():
            raise where.error("rater", "is empty (leave it out when the rater is unknown)")
    return prompt, response, rating, rater


def convert_ratings(
    rows: Iterable[tuple[Where, dict | DataError]], options: RatingOptions, skip_bad_rows: bool = False
) -> tuple[list[PreferenceGroup], list[DataError], RatingCounts]:
    """Group rating rows by (prompt, rater) and compare within each group; returns (groups, skipped, counts).
    A bad row raises DataError unless `skip_bad_rows`."""
    groups: dict[tuple[str, str | None], _Group] = {}
    skipped: list[DataError] = []
    raters: set[str] = set()
    counts = RatingCounts()
    for where, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            prompt, response, rating, rater = _parse_rating_row(row, where)
            rater_key = None if rater is None else json.dumps(rater)
            group = groups.setdefault((json.dumps(prompt, sort_keys=True), rater_key), _Group(prompt))
            if response in group.index:
                first = group.wheres[group.index[response]]
                by = "" if rater is None else f" by rater {rater!r}"
                raise where.error("response", f"rated twice for this prompt{by} (first at {first.unit} {first.line})")
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped.append(e)
            continue
        if rater_key is not None:
            raters.add(rater_key)
        group.index[response] = len(group.responses)
        group.responses.append(response)
        group.ratings.append(rating)
        group.wheres.append(where)
        counts.rows += 1

    all_ratings = [r for g in groups.values() for r in g.ratings]
    scale = options.margin_scale
    if scale is None and options.labels == "margin" and options.margin_levels is None:
        spread = max(all_ratings, default=0.0) - min(all_ratings, default=0.0)
        scale = 1.0 / spread if spread > 0 else 1.0
    counts.margin_scale = scale if options.labels == "margin" and options.margin_levels is None else None
    prompt_raters: dict[str, set[bool]] = {}
    for prompt_key, rater_key in groups:
        prompt_raters.setdefault(prompt_key, set()).add(rater_key is None)
    counts.prompts = len(prompt_raters)
    counts.mixed_rater_prompts = sum(len(kinds) == 2 for kinds in prompt_raters.values())
    counts.raters = len(raters)

    out: list[PreferenceGroup] = []
    for group in groups.values():
        if len(group.responses) == 1:
            counts.single_response += 1
            if len(counts.single_response_at) < 3:
                counts.single_response_at.append(str(group.wheres[0]))
            continue
        comparisons = []
        for i in range(len(group.responses)):
            for j in range(i + 1, len(group.responses)):
                gap = group.ratings[i] - group.ratings[j]
                if gap == 0:
                    if options.ties == "keep":
                        comparisons.append(Comparison(i, j, 0.5))
                        counts.ties += 1
                    else:
                        counts.ties_dropped += 1
                    continue
                better, worse = (i, j) if gap > 0 else (j, i)
                comparisons.append(options.comparison(better, worse, abs(gap), scale or 0.0))
                counts.pairs += 1
        if not comparisons:
            counts.all_tied += 1
            continue
        out.append(PreferenceGroup(group.prompt, tuple(group.responses), tuple(comparisons), group.source))
    counts.groups = len(out)
    return out, skipped, counts


def load_ratings(path: Path, rows: Iterable[tuple[Where, dict | DataError]], limit: int | None,
                 skip_bad_rows: bool, options: RatingOptions) -> PreferenceFile:
    """`load_preferences` for a ratings file: the first `limit` groups, the bad rows and the counts."""
    try:
        groups, skipped, counts = convert_ratings(rows, options, skip_bad_rows)
    except DataError as e:
        raise with_skip_hint(e) from None
    if not groups:
        raise DataError(path, 0, None, f"yields no preference from its ratings ({counts.summary()}"
                        + (f"; {len(skipped)} bad rows skipped)" if skipped else ")"))
    return PreferenceFile(path=path, groups=groups[:limit] if limit is not None else groups,
                          skipped=skipped, ratings=counts)
