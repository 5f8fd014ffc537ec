"""What the HTTP transport checks of a request's bytes before any route sees them: strict UTF-8 JSON
(no NaN or Infinity), nesting within `max_json_depth`, and the `X-Request-Timeout` header. Every refusal is
a VALIDATION `ScoringError` naming the field and the limit, where the JSON parser would otherwise fail with
an error of its own (a 500).

A JSON body is parsed once, by `parse_json`; the request guard keeps the result in the ASGI scope under
`PARSED_JSON`, where the routes read it (common.ParsedBodyRoute) instead of parsing the bytes again."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from rmserve.service.core.limits import invalid

TIMEOUT_HEADER = "X-Request-Timeout"
PARSED_JSON = "rmserve.parsed_json"  # ASGI scope key of the request's JSON body, parsed once


def parse_timeout(value: str) -> float:
    """Seconds from an X-Request-Timeout header; refused unless a finite number > 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise invalid(f"{TIMEOUT_HEADER} must be a number of seconds > 0, not {value[:40]!r}", TIMEOUT_HEADER)
    return seconds


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


def parse_json(body: bytes, max_depth: int) -> Any:
    """The value of a JSON body; refused unless strict UTF-8 JSON within `max_depth` levels of nesting."""
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
    return parsed
