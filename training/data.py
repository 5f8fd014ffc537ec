"""Preference data: reading JSONL (optionally gzipped) into (prompt, chosen, rejected) pairs.

Two row shapes are accepted:
  {"prompt": str | [{"role", "content"}], "chosen": str, "rejected": str}
  {"chosen": full dialogue, "rejected": full dialogue}   (HH-RLHF: the shared prefix is the prompt)
Every bad row raises `DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from service.inputs import Prompt

ASSISTANT_TURN = "\n\nAssistant:"


class DataError(ValueError):
    def __init__(self, path: str | Path, line: int, field: str | None, message: str):
        where = f"{path}:{line}" + (f" field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field, self.message = str(path), line, field, message


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str


def shipped_data(split: str) -> Path:
    """Path of a split ("train" or "dev") of the HH-RLHF harmless data shipped with rmserve."""
    path = Path(str(resources.files("training") / "data" / "hh-harmless" / f"{split}.jsonl.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped split named {split!r} at {path}")
    return path


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, None, f"not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(path, line_no, None, "each line must be a JSON object")
            yield line_no, row


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


def _text(row: dict, field: str, path: Path, line: int) -> str:
    if field not in row:
        raise DataError(path, line, field, "missing")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(path, line, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, line, field, "is empty")
    return value


def _prompt(row: dict, path: Path, line: int) -> Prompt:
    value = row["prompt"]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value  # rendered by the bundle's InputSpec, as in serving
    raise DataError(path, line, "prompt", "must be a string or a non-empty list of {role, content} messages")


def parse_pair(row: dict, path: Path, line: int) -> PreferencePair:
    chosen = _text(row, "chosen", path, line)
    rejected = _text(row, "rejected", path, line)
    if "prompt" in row:
        return PreferencePair(_prompt(row, path, line), chosen, rejected)
    split = split_dialogue(chosen, rejected)
    if split is None:
        raise DataError(
            path, line, "chosen",
            "no 'prompt' field, and chosen/rejected share no prefix ending in '\\n\\nAssistant:'",
        )
    prompt, chosen_reply, rejected_reply = split
    if not chosen_reply.strip() or not rejected_reply.strip():
        raise DataError(path, line, "chosen" if not chosen_reply.strip() else "rejected", "empty reply after the prompt")
    return PreferencePair(prompt, chosen_reply, rejected_reply)


def load_pairs(path: str | Path, limit: int | None = None, skip_bad_rows: bool = False) -> PairFile:
    """Pairs of a file (the first `limit` when given). A bad row raises DataError unless
    `skip_bad_rows`, in which case it is left out and reported in `PairFile.skipped`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    pairs: list[PreferencePair] = []
    skipped: list[DataError] = []
    for line, row in iter_jsonl(path):
        try:
            pairs.append(parse_pair(row, path, line))
        except DataError as e:
            if not skip_bad_rows:
                raise DataError(e.path, e.line, e.field, e.message + " (--skip-bad-rows leaves such rows out)") from None
            skipped.append(e)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DataError(path, 0, None, "holds no preference pairs")
    return PairFile(path=path, pairs=pairs, skipped=skipped)


@dataclass(frozen=True)
class PairFile:
    path: Path
    pairs: list[PreferencePair]
    skipped: list[DataError]
