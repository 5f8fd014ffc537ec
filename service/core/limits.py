"""Input limits and request deadlines, shared by both transports.

Owns what a request may hold beyond its schema: characters per text, messages per conversation, text
that is valid Unicode (a JSON escape can smuggle in a lone surrogate, which no tokenizer can encode), the
JSON body itself (strict UTF-8, no NaN/Infinity, bounded nesting), and the deadline of a request: the
`X-Request-Timeout` header (HTTP) or the call's deadline (gRPC), else the `request_timeout_seconds`
setting. Every refusal is a VALIDATION `ScoringError` whose field and message name the limit.

The HTTP deadline, and the client a request came from (for per-client queue limits), travel to the scoring
core through context variables set by the transports' guards, so that no route threads them by hand. A
deadline a caller chose is cut to `max_request_timeout_seconds`.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from typing import Any, Protocol

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.settings import Settings

# time.monotonic() after which the current HTTP request's work is dropped; None: no header was sent.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)
# Who sent the current request, for per-client queue limits: its API key's name, or its connection when
# there are no keys (set by the transport's guard; "" when unknown).
request_client: contextvars.ContextVar[str] = contextvars.ContextVar("request_client", default="")


class _Row(Protocol):
    prompt: Any
    response: str
    field: str


def invalid(message: str, field: str | None) -> ScoringError:
    return ScoringError(ErrorKind.VALIDATION, message, field)


def prompt_field(response_field: str) -> str:
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
        field = prompt_field(row.field)
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


def effective_deadline(explicit: float | None, settings: Settings) -> float | None:
    """The deadline work is held to: the caller's (gRPC), the request header's (HTTP), else the default;
    one the caller chose is cut to `max_request_timeout_seconds` from now."""
    chosen = explicit if explicit is not None else request_deadline.get()
    now = time.monotonic()
    if chosen is not None:
        return min(chosen, now + settings.max_request_timeout_seconds)
    default = settings.request_timeout_seconds
    return now + default if default > 0 else None
