"""Step-level (process) supervision data: the one record a process reward model trains and is evaluated on,
and the readers of the three row formats it comes in.

Every format becomes `StepChain`s: a prompt (text, or chat messages checked as serving checks them), the
solution's steps in order, one label per step (True: the step is good), where the row came from, and two
optional fields the generated data carries: `group` (the problem a best-of-N candidate answers) and
`answer` (the reference final answer). Where the data can be and how bad rows are reported is as for
preference data (training/data.py, training/records.py): JSONL(.gz) rows as `file:line`, a `datasets`
directory as `dir:row N`, a `DataError` naming the field, `skip_bad_rows` to leave bad rows out and list them.

The first row that is a JSON object decides the file's format; every other row must be of the same one.

  stepwise       TRL's stepwise supervision (what `rmserve data generate-steps` writes)
                 {"prompt": str | [{role, content}, ...], "completions": [step, ...], "labels": [bool, ...]}
                 one label per step; 1/0 are read as true/false. Optional: "problem" (str or int, the group
                 of best-of-N candidates) and "answer" (str or number, the reference final answer).

  math-shepherd  Math-Shepherd's tagged rows (peiyi9979/Math-Shepherd)
                 {"input": "<question> Step 1: ... ки\\nStep 2: ... ки", "label": "<question> Step 1: ... +\\nStep 2: ... -"}
                 `input` is the question followed by the steps, each step ended by the step tag (`StepOptions.
                 step_tag`, "ки" by default); `label` is the same text with every tag replaced by one
                 character, "+" (good) or "-" (bad). The question is the text before the first "Step 1:"
                 (any case); each step is the text between two tags, stripped, its "Step k:" kept. A row
                 with no "Step 1:" before its first tag, text after its last tag, an empty step, or a label
                 text that does not line up with the tags is a bad row. Other fields ("task") are ignored.

  prm800k        OpenAI PRM800K's labelled solutions (openai/prm800k, data/phase{1,2}_*.jsonl)
                 {"question": {"problem": str, "ground_truth_answer": ...},
                  "label": {"steps": [{"completions": [{"text", "rating"}, ...], "chosen_completion": int | null,
                                       "human_completion": null | str | {"text"}}, ...], "finish_reason": str}}
                 Ratings are -1 (wrong), 0 (neutral: not wrong, no progress) and 1 (good). A 0 becomes a
                 good step by default (`StepOptions.neutral`, "bad" for TRL's conversion, which keeps only
                 1 as good): a neutral step contains no error, and the first error is what a PRM must find.
                 The solution follows the chosen completion of each step (a labeller's own step, written
                 when every candidate was wrong, counts as good). Every rated candidate that was not
                 continued ends a chain of its own (the steps so far plus that candidate), as in TRL's
                 conversion, so one row can give several chains; where the labeller stopped at a step with
                 no chosen completion (a found error), its rated candidates are those chains' last steps,
                 and otherwise the followed solution is one more chain. `StepOptions.prm800k_alternatives=
                 False` keeps one chain per row: the followed solution, ended at such a stopping step by its
                 first rated candidate. Rows whose labeller reported a bad problem (`finish_reason`
                 "bad_problem") are left out and counted in `StepFile.left_out`, not errors.

Labels are kept as the data gives them; the rule "every step from the first wrong one on is bad" is the
generator's (training/prm_generator.py), not imposed on real data.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rmserve.service.core.inputs import Prompt
from rmserve.training.records import (
    DataError,
    Where,
    dataset_rows,
    jsonl_rows,
    prompt_field,
    required_field,
    text_field,
    with_skip_hint,
)

FORMATS = ("stepwise", "math-shepherd", "prm800k")
NEUTRAL_MODES = ("good", "bad")
SHEPHERD_TAG = "ки"
FIRST_STEP = re.compile(r"step\s*1\s*:", re.IGNORECASE)
FORMAT_FIELDS = {"stepwise": "completions", "math-shepherd": "input", "prm800k": "question"}
SHAPES = ("accepted step formats: stepwise {prompt, completions, labels}, Math-Shepherd {input, label}, "
          "PRM800K {question, label}")


@dataclass(frozen=True)
class StepChain:
    """A solution as steps, one label per step (True: good), and where it came from."""

    prompt: Prompt
    steps: tuple[str, ...]
    labels: tuple[bool, ...]
    source: str = ""  # "file:line" or "dir:row N"
    group: str | None = None  # the problem this chain answers, for best-of-N (stepwise rows' "problem")
    answer: str | None = None  # the reference final answer, when the data has one

    @property
    def first_error(self) -> int | None:
        """Index of the first bad step; None when every step is good."""
        return next((i for i, good in enumerate(self.labels) if not good), None)

    @property
    def correct(self) -> bool:
        return all(self.labels)

    def to_row(self) -> dict:
        """The chain as a stepwise row, readable by `load_steps` with the same fields."""
        row: dict = {"prompt": self.prompt, "completions": list(self.steps), "labels": list(self.labels)}
        if self.group is not None:
            row["problem"] = self.group
        if self.answer is not None:
            row["answer"] = self.answer
        return row


@dataclass(frozen=True)
class StepOptions:
    """How the tagged and rated formats become labels (the stepwise format needs none)."""

    step_tag: str = SHEPHERD_TAG  # Math-Shepherd: the text that ends each step in `input`
    neutral: str = "good"  # PRM800K: what a rating of 0 becomes, "good" or "bad"
    prm800k_alternatives: bool = True  # PRM800K: each rated candidate not continued ends a chain of its own

    def __post_init__(self) -> None:
        if not self.step_tag:
            raise ValueError("the step tag must not be empty")
        if self.neutral not in NEUTRAL_MODES:
            raise ValueError(f"neutral must be one of {NEUTRAL_MODES}, got {self.neutral!r}")


@dataclass(frozen=True)
class StepFile:
    path: Path
    format: str
    chains: list[StepChain]
    skipped: list[DataError]
    left_out: dict[str, int] = field(default_factory=dict)  # rows left out on purpose, by reason


def _optional_id(row: dict, name: str, where: Where) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise where.error(name, f"must be a string or a number, got {type(value).__name__}")
    return str(value)


def _step_list(value: object, name: str, where: Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise where.error(name, "missing" if value is None else f"must be a list of steps, got {type(value).__name__}")
    if not value:
        raise where.error(name, "has no steps")
    return tuple(text_field(step, f"{name}.{i}", where) for i, step in enumerate(value))


def _label(value: object, name: str, where: Where) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise where.error(name, f"must be true or false (or 1 / 0), got {value!r}")


def parse_stepwise(row: dict, where: Where) -> StepChain:
    if "prompt" not in row:
        raise where.error("prompt", "missing")
    prompt = prompt_field(row["prompt"], where)
    steps = _step_list(row.get("completions"), "completions", where)
    labels = row.get("labels")
    if not isinstance(labels, list):
        raise where.error("labels", "missing" if labels is None else
                          f"must be a list of one true/false per step, got {type(labels).__name__}")
    if len(labels) != len(steps):
        raise where.error("labels", f"has {len(labels)} labels for {len(steps)} steps; give one per step")
    checked = tuple(_label(label, f"labels.{i}", where) for i, label in enumerate(labels))
    return StepChain(prompt, steps, checked, str(where), _optional_id(row, "problem", where),
                     _optional_id(row, "answer", where))


def parse_math_shepherd(row: dict, where: Where, tag: str) -> StepChain:
    text = required_field(row, "input", where)
    marked = required_field(row, "label", where)
    pieces = text.split(tag)
    if len(pieces) < 2:
        raise where.error("input", f"has no step tag {tag!r}; each step must end with it")
    if pieces[-1].strip():
        raise where.error("input", f"has text after its last step tag {tag!r}, which no label covers")
    labels, offset = [], 0
    expected_length = len(text) - (len(pieces) - 1) * (len(tag) - 1)
    if len(marked) != expected_length:
        raise where.error("label", f"is {len(marked)} characters; the input with each of its {len(pieces) - 1} "
                          f"step tags replaced by one '+' or '-' would be {expected_length}")
    for number, piece in enumerate(pieces[:-1], start=1):
        offset += len(piece)
        mark = marked[offset]
        if mark not in "+-":
            raise where.error("label", f"has {mark!r} where input has step tag {number}; expected '+' or '-'")
        labels.append(mark == "+")
        offset += 1
    start = FIRST_STEP.search(pieces[0])
    if start is None:
        later = any(FIRST_STEP.search(piece) for piece in pieces[1:])
        raise where.error("input", "has a step tag inside the question (before 'Step 1:')" if later else
                          "has no 'Step 1:' before its first step tag, so the question cannot be told from the steps")
    question = pieces[0][:start.start()].strip()
    if not question:
        raise where.error("input", "has no question before 'Step 1:'")
    steps = [pieces[0][start.start():].strip()] + [piece.strip() for piece in pieces[1:-1]]
    for number, step in enumerate(steps, start=1):
        if not step:
            raise where.error("input", f"step {number} is empty")
    return StepChain(question, tuple(steps), tuple(labels), str(where))


def _rated(candidate: object, name: str, where: Where, neutral: str) -> tuple[str, bool] | None:
    """A candidate step's (text, good); None for a candidate nobody rated."""
    if not isinstance(candidate, dict):
        raise where.error(name, f"must be a {{text, rating}} object, got {type(candidate).__name__}")
    rating = candidate.get("rating")
    if rating is None:
        return None
    if rating not in (-1, 0, 1) or isinstance(rating, bool):
        raise where.error(f"{name}.rating", f"must be -1, 0 or 1, got {rating!r}")
    return text_field(candidate.get("text"), f"{name}.text", where), rating == 1 or (rating == 0 and neutral == "good")


def _prm800k_step(step: object, name: str, where: Where, neutral: str):
    """(the rated candidates, the index of the chosen one or None, the labeller's own step or None)."""
    if not isinstance(step, dict):
        raise where.error(name, f"must be an object, got {type(step).__name__}")
    candidates = step.get("completions") or []
    if not isinstance(candidates, list):
        raise where.error(f"{name}.completions", f"must be a list, got {type(candidates).__name__}")
    rated = [_rated(c, f"{name}.completions.{j}", where, neutral) for j, c in enumerate(candidates)]
    chosen, human = step.get("chosen_completion"), step.get("human_completion")
    if chosen is not None:
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(candidates):
            raise where.error(f"{name}.chosen_completion",
                              f"must index one of the step's {len(candidates)} completions, got {chosen!r}")
        if rated[chosen] is None:
            raise where.error(f"{name}.completions.{chosen}.rating", "missing: the chosen completion has no rating")
    elif human is not None:  # written by the labeller when every candidate was wrong: a good step
        text = human.get("text") if isinstance(human, dict) else human
        human = text_field(text, f"{name}.human_completion", where)
    return rated, chosen, human


def parse_prm800k(row: dict, where: Where, options: StepOptions) -> list[StepChain] | str:
    """The chains of one PRM800K row, or the reason it is left out."""
    question, label = row.get("question"), row.get("label")
    if not isinstance(question, dict):
        raise where.error("question", "missing" if question is None else "must be an object with 'problem'")
    prompt = text_field(question.get("problem"), "question.problem", where)
    answer = None if question.get("ground_truth_answer") is None else str(question["ground_truth_answer"])
    if not isinstance(label, dict) or not isinstance(label.get("steps"), list):
        raise where.error("label.steps", "missing (a PRM800K row's label must have a list of steps)")
    if label.get("finish_reason") == "bad_problem":
        return "bad_problem"
    chains: list[StepChain] = []
    steps: list[str] = []
    labels: list[bool] = []

    def ending_with(rated: tuple[str, bool]) -> StepChain:
        return StepChain(prompt, (*steps, rated[0]), (*labels, rated[1]), str(where), answer=answer)

    ended = False
    for i, step in enumerate(label["steps"]):
        rated, chosen, human = _prm800k_step(step, f"label.steps.{i}", where, options.neutral)
        if chosen is None and human is None:  # the labeller stopped here: the rated candidates end the solution
            ends = [r for r in rated if r is not None]
            chains.extend(ending_with(r) for r in (ends if options.prm800k_alternatives else ends[:1]))
            ended = bool(ends)
            break
        if options.prm800k_alternatives:
            chains.extend(ending_with(r) for j, r in enumerate(rated) if r is not None and j != chosen)
        text, good = rated[chosen] if chosen is not None else (human, True)
        steps.append(text)
        labels.append(good)
    if steps and not ended:
        chains.append(StepChain(prompt, tuple(steps), tuple(labels), str(where), answer=answer))
    if not chains:
        raise where.error("label.steps", "has no rated step")
    return chains


def row_format(row: dict) -> str | None:
    """The format a row's fields say it is in (a null counts as absent); None when none."""
    present = {key for key, value in row.items() if value is not None}
    return next((name for name, key in FORMAT_FIELDS.items() if key in present), None)


def _parse(row: dict, where: Where, fmt: str, options: StepOptions) -> list[StepChain] | str:
    found = row_format(row)
    if found is None:
        raise where.error(None, f"no step fields (it has {sorted(row)}); {SHAPES}")
    if found != fmt:
        raise where.error(FORMAT_FIELDS[found], f"is a {found} row, but this file's first row is {fmt}; "
                          "a file holds one format")
    if fmt == "stepwise":
        return [parse_stepwise(row, where)]
    if fmt == "math-shepherd":
        return [parse_math_shepherd(row, where, options.step_tag)]
    return parse_prm800k(row, where, options)


def _rows(path: Path) -> Iterator[tuple[Where, dict | DataError]]:
    if path.is_dir():
        return dataset_rows(path)
    if path.is_file():
        return jsonl_rows(path)
    raise FileNotFoundError(f"data file {path} does not exist")


def load_steps(path: str | Path, limit: int | None = None, skip_bad_rows: bool = False,
               options: StepOptions | None = None) -> StepFile:
    """Every chain of a step-labelled .jsonl / .jsonl.gz file or save_to_disk directory (the first `limit`
    chains when given). A bad row raises DataError unless `skip_bad_rows`, in which case it is left out and
    returned in `StepFile.skipped`."""
    path, options = Path(path), options or StepOptions()
    rows = _rows(path)
    seen: list[tuple[Where, dict | DataError]] = []
    fmt = None
    for item in rows:  # the first JSON object decides the format
        seen.append(item)
        if not isinstance(item[1], DataError) and (fmt := row_format(item[1])) is not None:
            break
    fmt = fmt or "stepwise"
    chains: list[StepChain] = []
    skipped: list[DataError] = []
    left_out: Counter[str] = Counter()
    for where, row in itertools.chain(seen, rows):
        if limit is not None and len(chains) >= limit:
            break
        try:
            if isinstance(row, DataError):
                raise row
            parsed = _parse({k: v for k, v in row.items() if v is not None}, where, fmt, options)
        except DataError as e:
            if not skip_bad_rows:
                raise with_skip_hint(e) from None
            skipped.append(e)
            continue
        if isinstance(parsed, str):
            left_out[parsed] += 1
        else:
            chains.extend(parsed)
    if limit is not None:
        chains = chains[:limit]
    if not chains:
        raise DataError(path, 0, None, "holds no step-labelled rows"
                        + (f" ({len(skipped)} bad rows skipped)" if skipped else ""))
    return StepFile(path, fmt, chains, skipped, dict(left_out))


def step_counts(loaded: StepFile) -> dict:
    """Chains, steps, good and bad steps, chains with every step good, and what was left out."""
    labels = [good for chain in loaded.chains for good in chain.labels]
    return {"format": loaded.format, "chains": len(loaded.chains), "steps": len(labels),
            "good_steps": sum(labels), "bad_steps": len(labels) - sum(labels),
            "correct_chains": sum(chain.correct for chain in loaded.chains),
            "bad_rows": len(loaded.skipped), **{f"left_out_{k}": v for k, v in sorted(loaded.left_out.items())}}



def write_steps(chains: list[StepChain], output: str | Path, source: Path | None = None) -> None:
    """Write chains as stepwise JSONL (.gz to compress), one {prompt, completions, labels[, problem, answer]}
    row a line, each with its `source` ("file:line" of the row it was read from)."""
    output = Path(output)
    if source is not None and output.resolve() == source.resolve():
        raise ValueError(f"output {output} is the input file; write the steps elsewhere")
    output.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if output.suffix == ".gz" else open
    with opener(output, "wt", encoding="utf-8") as f:
        for chain in chains:
            f.write(json.dumps({**chain.to_row(), "source": chain.source}) + "\n")
