"""service/core/limits.py on literal inputs: text and conversation limits, strict JSON, timeout header, deadlines."""

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import ChatMessage
from rmserve.service.core.limits import check_rows, effective_deadline, request_deadline
from rmserve.service.settings import Settings
from rmserve.service.transports.http.body import json_shape, max_containers, parse_json, parse_timeout

SETTINGS = Settings(max_text_chars=10, max_messages=2)


@dataclass
class Row:
    prompt: Any
    response: str
    field: str


def refusal(call) -> ScoringError:
    with pytest.raises(ScoringError) as info:
        call()
    assert info.value.kind is ErrorKind.VALIDATION
    return info.value


@pytest.mark.parametrize("rows, field, message", [
    ([Row("p", "r" * 11, "responses.0")], "responses.0", "text of 11 characters; the limit is 10 (max_text_chars)"),
    ([Row("p" * 11, "r", "response")], "prompt", "limit is 10"),
    ([Row("ok", "r", "items.0.response"), Row("p" * 11, "r", "items.1.response")], "items.1.prompt", "limit is 10"),
    ([Row([ChatMessage(role="user", content="c" * 11)], "r", "response")], "prompt.0.content", "limit is 10"),
    ([Row([{"role": "user", "content": "hi"}] * 3, "r", "response")], "prompt", "3 messages in one conversation; the limit is 2"),
    ([Row([], "r", "response")], "prompt", "at least 1 message"),
    ([Row("p", "a\ud800", "responses.0")], "responses.0", "lone surrogate at character 1"),
    ([Row("\udfff", "r", "query.3")], "query.3", "lone surrogate"),
])
def test_check_rows_names_the_field_and_the_limit(rows, field, message):
    error = refusal(lambda: check_rows(rows, SETTINGS))
    assert error.field == field and message in error.message


def test_check_rows_accepts_texts_at_the_limits():
    check_rows([Row("p" * 10, "r" * 10, "responses.0"), Row([{"role": "user", "content": "c" * 10}] * 2, "r", "items.1.response")],
               SETTINGS)


@pytest.mark.parametrize("body, message", [
    (b'{"a": NaN}', "NaN is not a JSON number"),
    (b'[Infinity]', "Infinity is not a JSON number"),
    (b'{"a": "\xff"}', "not valid UTF-8 at byte 7"),
    (b'{"a": 1', "not valid JSON at character 7"),
    (b'[[[[[[[[[1]]]]]]]]]', "limit of 8 levels (max_json_depth)"),
    (b'{"a": [{"b": [{"c": [{"d": [{"e": 1}]}]}]}]}', "limit of 8 levels"),
    (b'[' * 5000 + b']' * 5000, "max_json_depth"),
])
def test_parse_json_refuses(body, message):
    error = refusal(lambda: parse_json(body, 8, 1000))
    assert error.field == "body" and message in error.message


def test_parse_json_accepts_nesting_at_the_limit_and_long_flat_lists():
    assert parse_json(b'[[[[[[[["x"]]]]]]]]', 8, 1000) == [[[[[[[["x"]]]]]]]]
    assert parse_json(b'{"responses": [' + b",".join([b'"r"'] * 10000) + b"]}", 8, 1000) == {"responses": ["r"] * 10000}


@pytest.mark.parametrize("text", [
    '[]', '{}', '"[[[["', '[1, "]]]", [2, {"a": "{"}]]', '{"a": "x\\\\", "b": [[[]]]}', '["\\"[", [[["\\\\"]]]]',
    '{"k\\"{": ["\\\\\\"]]"]}', '[[[[[[[[[[]]]]]]]]]]', '{"a": [{"b": [{"c": []}]}]}', '"no containers"', '17',
])
def test_json_shape_counts_brackets_outside_strings_as_the_parser_nests_them(text):
    def walk(value, depth=0):
        if isinstance(value, (list, dict)):
            children = value.values() if isinstance(value, dict) else value
            deepest, count = depth + 1, 1
            for child in children:
                d, c = walk(child, depth + 1)
                deepest, count = max(deepest, d), count + c
            return deepest, count
        return depth, 0

    assert json_shape(text.encode()) == walk(json.loads(text)), text


def test_a_body_of_many_small_containers_is_refused_before_it_is_parsed():
    """A million empty objects would take a second to parse and far longer to walk; refused from the bytes."""
    body = b"[" + b",".join([b"{}"] * 1_000_000) + b"]"
    limit = max_containers(256, 256)
    error = refusal(lambda: parse_json(body, 32, limit))
    assert error.field == "body" and f"holds 1000001 arrays and objects; a request holds at most {limit}" in error.message
    # Braces inside strings are text, not containers.
    assert parse_json(json.dumps({"responses": ["{[" * 50_000]}).encode(), 32, 10) == {"responses": ["{[" * 50_000]}


@pytest.mark.parametrize("value", ["abc", "0", "-2", "nan", "inf", "-inf", "", "1e999"])
def test_bad_timeout_headers(value):
    assert refusal(lambda: parse_timeout(value)).field == "X-Request-Timeout"


def test_deadline_order_explicit_then_header_then_default():
    settings = Settings(request_timeout_seconds=5)
    now = time.monotonic()
    assert effective_deadline(now + 123.0, settings) == now + 123.0
    assert now + 4.9 < effective_deadline(None, settings) < now + 6
    token = request_deadline.set(now + 77.0)
    try:
        assert effective_deadline(None, settings) == now + 77.0
        assert effective_deadline(now + 12.0, settings) == now + 12.0
    finally:
        request_deadline.reset(token)
    assert effective_deadline(None, Settings(request_timeout_seconds=0)) is None
    assert parse_timeout("2.5") == 2.5


def test_a_deadline_the_caller_chose_is_cut_to_the_servers_maximum():
    settings = Settings(request_timeout_seconds=5, max_request_timeout_seconds=30)
    now = time.monotonic()
    assert now + 29 < effective_deadline(now + 10_000, settings) <= time.monotonic() + 30  # gRPC deadline
    token = request_deadline.set(now + 10_000)  # X-Request-Timeout
    try:
        assert effective_deadline(None, settings) <= time.monotonic() + 30
    finally:
        request_deadline.reset(token)
    assert parse_timeout("1e9", 30.0) == 30.0 and parse_timeout("2", 30.0) == 2.0
    with pytest.raises(ValueError, match="longer than max_request_timeout_seconds"):
        Settings(request_timeout_seconds=60, max_request_timeout_seconds=30)
