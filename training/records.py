"""The records preference data is read into, where each row came from, and the checks of a row's fields.

`load_preferences` (training/data.py) and the ratings reader (training/ratings.py) both build these: a
`PreferenceGroup` per prompt (its distinct responses and the comparisons between them), a
`PreferenceFile` per file, and a `DataError` naming the file, the line (or a dataset's row) and the field
for every bad row. The field checkers here are the ones every row shape uses, so a prompt is accepted
exactly when serving would accept it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import numbers
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pydantic import ValidationError

from rmserve.service.core.bundle_files import file_digest
from rmserve.service.core.inputs import ChatMessage, Prompt

if TYPE_CHECKING:  # only a type: training.ratings imports this module
    from rmserve.training.ratings import RatingCounts

PAIR_FIELDS = ("chosen", "rejected", "label", "margin")
RANKING_FIELDS = ("responses", "ranks")
SKIP_HINT = " (--skip-bad-rows leaves such rows out)"


class DataError(ValueError):
    """A bad row (or file): `path`, `line` (a dataset's row index when `unit` is "row"; 0 for the whole
    file), `field` (None when the row as a whole is wrong) and `message`."""

    def __init__(self, path: str | Path, line: int, field: str | None, message: str, *, unit: str = "line"):
        self.path, self.line, self.field, self.message, self.unit = str(path), line, field, message, unit
        super().__init__(f"{self.where}" + (f" field '{field}'" if field else "") + f": {message}")

    @property
    def where(self) -> str:
        if self.line == 0 and self.unit == "line":
            return self.path
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}:row {self.line}"


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    label: float = 1.0  # P(chosen preferred over rejected); 0.5 is a tie
    margin: float = 0.0  # how much higher chosen should score (Llama 2's preference strength)


@dataclass(frozen=True)
class Comparison:
    better: int  # index into PreferenceGroup.responses
    worse: int
    label: float = 1.0  # P(better preferred over worse) in [0, 1]; 0.5 = tie
    margin: float = 0.0  # >= 0; non-zero only with label 1.0


@dataclass(frozen=True)
class PreferenceGroup:
    """One prompt, its distinct responses (each encoded once), and the comparisons between them.
    A pair row is a group of 2 responses and 1 comparison; a ranking of K is K responses, K(K-1)/2 comparisons."""

    prompt: Prompt
    responses: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    source: str = ""  # "file:line" or "dir:row N"

    def pairs(self) -> list[PreferencePair]:
        """The comparisons as pairs: chosen = the better response, with the comparison's label and margin."""
        return [
            PreferencePair(self.prompt, self.responses[c.better], self.responses[c.worse], c.label, c.margin)
            for c in self.comparisons
        ]


@dataclass(frozen=True)
class PreferenceFile:
    path: Path
    groups: list[PreferenceGroup]
    skipped: list[DataError]
    ratings: RatingCounts | None = None  # what the conversion made of a ratings file; None for other shapes

    @property
    def pairs(self) -> list[PreferencePair]:
        """Every comparison of every group as a pair (a new list each call), in file order."""
        return [pair for group in self.groups for pair in group.pairs()]


@dataclass(frozen=True)
class PairFile:
    path: Path
    pairs: list[PreferencePair]
    skipped: list[DataError]


class Where(NamedTuple):
    """A row's place, for errors and `PreferenceGroup.source`."""

    path: Path
    line: int
    unit: str = "line"

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(self.path, self.line, field, message, unit=self.unit)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}:row {self.line}"


def _binary_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file, gunzipped when it ends in .gz; a .gz that does not decompress raises DataError
    naming the file and the line it stopped at (nothing after it can be read, so it is not skippable)."""
    line_no = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for raw in f:
                line_no += 1
                yield raw
    except (OSError, EOFError, zlib.error) as e:
        if not path.suffix == ".gz" or isinstance(e, FileNotFoundError):
            raise
        raise DataError(path, line_no + 1, None, f"not a readable gzip file ({e})") from None


def jsonl_rows(path: Path) -> Iterator[tuple[Where, dict | DataError]]:
    """Rows of a JSONL file; a line that is not UTF-8 or not a JSON object comes as its DataError, so it can be
    skipped. Lines end at "\\n" only, as JSON Lines defines them."""
    for line_no, raw in enumerate(_binary_lines(path), start=1):
        where = Where(path, line_no)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, where.error(None, f"not valid UTF-8 (byte {e.start + 1} of the line: {e.reason})")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, where.error(None, f"not valid JSON ({e.msg})")
            continue
        yield where, row if isinstance(row, dict) else where.error(None, "each line must be a JSON object")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file."""
    for where, row in jsonl_rows(Path(path)):
        if isinstance(row, DataError):
            raise row
        yield where.line, row


def dataset_rows(path: Path) -> Iterator[tuple[Where, dict]]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as e:
        raise ImportError(f"{path} is a directory; reading a saved dataset needs `datasets` "
                          "(pip install 'rmserve[train]')") from e
    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(path, 0, None, "is a directory but not a dataset written by datasets' save_to_disk") from e
    if isinstance(dataset, DatasetDict):
        splits = list(dataset)
        raise DataError(path, 0, None, f"holds the splits {splits}; give one split's directory, "
                                       f"e.g. {path / splits[0]}" if splits else "holds no splits")
    for index, row in enumerate(dataset):
        yield Where(path, index, "row"), row


def data_digest(path: Path) -> str:
    """The first 12 hex digits of a sha256 naming the data a bundle was measured on: a file's own digest
    (`file_digest`), or for a save_to_disk directory the digest of its files' relative paths and contents."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def text_field(value: object, field: str, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise where.error(field, "is empty")
    return value


def required_field(row: dict, field: str, where: Where) -> str:
    if field not in row:
        raise where.error(field, "missing")
    return text_field(row[field], field, where)


def prompt_field(value: object, where: Where) -> Prompt:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise where.error("prompt", "must be a string or a non-empty list of {role, content} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise where.error(f"prompt.{i}", f"must be a {{role, content}} object, got {type(message).__name__}")
        try:  # the service's own message model, so training cannot accept a prompt serving would refuse
            checked = ChatMessage.model_validate({k: v for k, v in message.items() if v is not None})
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in (f"prompt.{i}", *first["loc"]))
            raise where.error(field, first["msg"]) from None
        messages.append(checked.model_dump())
    return messages  # rendered by the bundle's InputSpec, as in serving


def number_field(value: object, field: str, where: Where, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise where.error(field, f"must be {what}, got {type(value).__name__}")
    return float(value)


def with_skip_hint(e: DataError) -> DataError:
    return DataError(e.path, e.line, e.field, e.message + SKIP_HINT, unit=e.unit)
