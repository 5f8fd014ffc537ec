"""Input limits and request deadlines, shared by both transports.

Owns what a request may hold beyond its schema: characters per text, messages per conversation, text
that is valid Unicode (a JSON escape can smuggle in a lone surrogate, which no tokenizer can encode), the
JSON body itself (strict UTF-8, no NaN/Infinity, bounded nesting), and the deadline of a request: the
`X-Request-Timeout` header (HTTP) or the call's deadline (gRPC), else the `request_timeout_seconds`
setting. Every refusal is a VALIDATION `ScoringError` whose field and message name the limit.

The HTTP deadline travels to the scoring core through a context variable set by the request guard
(`service/guard.py`), so that no route has to thread it through by hand.
"""

from __future__ import annotations

import contextvars
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from service.errors import ErrorKind, ScoringError
from service.settings import Settings

TIMEOUT_HEADER = "X-Request-Timeout"

# time.monotonic() after which the current HTTP request's work is dropped; None: no header was sent.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)


class _Row(Protocol):
    prompt: Any
    response: str
    field: str


def invalid(message: str, field: str | None) -> ScoringError:
    return ScoringError(ErrorKind.VALIDATION, message, field)


def _prompt_field(response_field: str) -> str:
    """Where a row's prompt sits in the request, from where its response sits."""
    if response_field.startswith("items."):
        return response_field.rsplit(".", 1)[0] + ".prompt"
    if response_field.startswith("query."):
        return response_field  # /get_reward: the prompt was cut from the query
    return "prompt"


def _check_text(text: str, field: str, limit: int, setting: str = "max_text_chars") -> None:
    if len(text) > limit:
        raise invalid(f"text of {len(text)} characters; the limit is {limit} ({setting})", field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise invalid(f"text is not valid Unicode: lone surrogate at character {e.start}", field) from None


def check_rows(rows: Sequence[_Row], settings: Settings) -> None:
    """Refuse texts and conversations beyond the limits; each prompt is checked once, however many
    responses share it."""
    seen: set[int] = set()
    chars = settings.max_text_chars
    for row in rows:
        _check_text(row.response, row.field, chars)
        if id(row.prompt) in seen:
            continue
        seen.add(id(row.prompt))
        field = _prompt_field(row.field)
        if isinstance(row.prompt, str):
            _check_text(row.prompt, field, chars)
            continue
        messages = list(row.prompt)
        if not messages:
            raise invalid("a conversation needs at least 1 message", field)
        if len(messages) > settings.max_messages:
            raise invalid(f"{len(messages)} messages in one conversation; the limit is {settings.max_messages} "
                          "(max_messages)", field)
        for i, message in enumerate(messages):
            content = message["content"] if isinstance(message, dict) else message.content
            _check_text(content, f"{field}.{i}.content", chars)


def parse_timeout(value: str) -> float:
    """Seconds from an X-Request-Timeout header; refused unless a finite number > 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise invalid(f"{TIMEOUT_HEADER} must be a number of seconds > 0, not {value[:40]!r}", TIMEOUT_HEADER)
    return seconds


def effective_deadline(explicit: float | None, settings: Settings) -> float | None:
    """The deadline work is held to: the caller's (gRPC), the request header's (HTTP), else the default."""
    if explicit is not None:
        return explicit
    from_header = request_deadline.get()
    if from_header is not None:
        return from_header
    default = settings.request_timeout_seconds
    return time.monotonic() + default if default > 0 else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, walking containers only, stopping once past `limit`."""
    deepest = 0
    stack: list[tuple[Iterable[Any], int]] = [((value,), 0)]
    while stack:
        children, depth = stack.pop()
        for child in children:
            if isinstance(child, dict):
                child = child.values()
            elif not isinstance(child, list):
                continue
            if depth + 1 > deepest:
                deepest = depth + 1
                if deepest > limit:
                    return deepest
            stack.append((child, depth + 1))
    return deepest


def check_json(body: bytes, max_depth: int) -> None:
    """Refuse a JSON body that is not strict UTF-8 JSON within `max_depth` levels of nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"request body is not valid UTF-8 at byte {e.start}", "body") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise invalid(f"request body is not valid JSON at character {e.pos}: {e.msg}", "body") from None
    except ValueError as e:  # NaN / Infinity
        raise invalid(f"request body is not valid JSON: {e}", "body") from None
    except RecursionError:
        raise invalid(f"JSON nested deeper than the limit of {max_depth} levels (max_json_depth)", "body") from None
    if _depth(parsed, max_depth) > max_depth:
        raise invalid(f"JSON nested deeper than the limit of {max_depth} levels (max_json_depth)", "body")
