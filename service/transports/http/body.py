"""What the HTTP transport checks of a request's bytes before any route sees them: strict UTF-8 JSON
(no NaN or Infinity), nesting within `max_json_depth`, no more arrays and objects than a request can hold,
and the `X-Request-Timeout` header. Every refusal is a VALIDATION `ScoringError` naming the field and the
limit, where the JSON parser would otherwise fail with an error of its own (a 500).

The shape of a body (its deepest nesting and how many arrays and objects it holds) is read from its bytes
before it is parsed (`json_shape`: vectorized, outside strings, no tree built), so a body of a million
empty objects is refused in milliseconds instead of costing a second of parsing and a walk of the tree.
A body is parsed once, by `parse_json`; the request guard keeps the result in the ASGI scope under
`PARSED_JSON`, where the routes read it (common.ParsedBodyRoute) instead of parsing the bytes again, and
runs it off the event loop when the body is large (`INLINE_PARSE_BYTES`)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from rmserve.service.core.limits import invalid

TIMEOUT_HEADER = "X-Request-Timeout"
PARSED_JSON = "rmserve.parsed_json"  # ASGI scope key of the request's JSON body, parsed once
# Bodies up to this size are checked and parsed on the event loop (tens of microseconds); larger ones in a
# worker thread, where numpy's passes and most of the parse leave the loop free.
INLINE_PARSE_BYTES = 64 * 1024
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


def parse_timeout(value: str, longest: float | None = None) -> float:
    """Seconds from an X-Request-Timeout header, cut to `longest`; refused unless a finite number > 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise invalid(f"{TIMEOUT_HEADER} must be a number of seconds > 0, not {value[:40]!r}", TIMEOUT_HEADER)
    return seconds if longest is None else min(seconds, longest)


def max_containers(max_responses: int, max_messages: int) -> int:
    """The most arrays and objects a valid request can hold: every item of a full /score request with a
    full conversation for its prompt (its object, the message list, each message), and the request itself."""
    return max_responses * (max_messages + 2) + 16


def json_shape(body: bytes) -> tuple[int, int]:
    """(deepest nesting, arrays and objects) of a JSON text, counting brackets outside strings only.

    A quote opens or closes a string unless an odd run of backslashes precedes it. Where the text is not
    valid JSON the figures hold up to the first error, which is as far as the parser will go."""
    data = np.frombuffer(body, dtype=np.uint8)
    opens = (data == _OPENERS[0]) | (data == _OPENERS[1])
    closes = (data == _CLOSERS[0]) | (data == _CLOSERS[1])
    quotes = np.flatnonzero(data == _QUOTE)
    if len(quotes):
        backslash = data == _BACKSLASH
        if backslash.any():
            # For each quote, the run of backslashes right before it: its position minus that of the last
            # byte before it that is not a backslash.
            positions = np.arange(len(data), dtype=np.int64)
            last_plain = np.maximum.accumulate(np.where(backslash, -1, positions))
            before = np.maximum(quotes - 1, 0)
            run = np.where(quotes > 0, before - last_plain[before], 0)
            quotes = quotes[run % 2 == 0]
        toggles = np.zeros(len(data), dtype=np.int8)
        toggles[quotes] = 1
        outside = (np.cumsum(toggles, dtype=np.int64) % 2) == 0  # a quote itself counts as inside
        opens &= outside
        closes &= outside
    containers = int(np.count_nonzero(opens))
    if containers == 0:
        return 0, 0
    depth = np.cumsum(opens.astype(np.int32) - closes.astype(np.int32), dtype=np.int32)
    return int(depth.max()), containers


class _NotANumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotANumber(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def parse_json(body: bytes, max_depth: int, containers_limit: int) -> Any:
    """The value of a JSON body; refused unless strict UTF-8 JSON within `max_depth` levels of nesting and
    `containers_limit` arrays and objects."""
    # Most bodies have fewer brackets in all than the depth limit: nothing to count then.
    if body.count(b"[") + body.count(b"{") > max_depth:
        depth, containers = json_shape(body)
        if depth > max_depth:
            raise invalid(f"JSON nested deeper than the limit of {max_depth} levels (max_json_depth)", "body")
        if containers > containers_limit:
            raise invalid(f"JSON body holds {containers} arrays and objects; a request holds at most "
                          f"{containers_limit} (max_responses_per_request x (max_messages + 2))", "body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"request body is not valid UTF-8 at byte {e.start}", "body") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise invalid(f"request body is not valid JSON at character {e.pos}: {e.msg}", "body") from None
    except _NotANumber as e:
        raise invalid(f"request body is not valid JSON: {e}", "body") from None
    except ValueError:  # an integer longer than Python converts to int
        raise invalid(f"request body holds a number of more than {sys.get_int_max_str_digits()} digits", "body") from None
    except RecursionError:  # not reached within max_json_depth (at most 500); kept as a last guard
        raise invalid(f"JSON nested deeper than the limit of {max_depth} levels (max_json_depth)", "body") from None
