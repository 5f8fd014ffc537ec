"""The calls every rmserve client offers, written once over three transport hooks.

`model_info`, `score`, `score_items` and `compare` (deadline, splitting at the server's
max_responses_per_request, merging) are the same whether the bytes go over HTTP or gRPC; a transport
client supplies only `_send_score`, `_send_compare` and `_send_model_info` (one request each, with its
retries) and mixes in `BlockingCalls` or `AsyncCalls`.

The limit is read from the server once and kept; a server redeployed (or a replica rolled out) with a
smaller one refuses a request for holding too many responses, naming its limit. The call then reads the
limit again, and when it is smaller than the chunks it sent, sends the whole call again once, in chunks
of the new limit (never more than once: a second refusal reaches the caller).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from rmserve.client.common import (
    CLIENT_TIMEOUT,
    DEFAULT_MAX_RESPONSES,
    CompareResult,
    Deadline,
    InvalidRequest,
    ModelInfo,
    Prompt,
    RetryPolicy,
    RmserveError,
    ScoreResult,
    merge,
    plan,
)

Items = Sequence[tuple[Prompt, str]]
# How the server words a request over its max_responses_per_request (service/core/scoring.py, `validate`).
_OVER_THE_LIMIT = re.compile(r"\b(\d+) responses in one request; the limit is (\d+)\b")


def limit_named_by(error: RmserveError) -> int | None:
    """When `error` refused a request for holding more responses than the server takes, the limit it names
    (0 when it names none: an HTTP body with more arrays and objects than that many responses may hold);
    else None."""
    if not isinstance(error, InvalidRequest):
        return None
    named = _OVER_THE_LIMIT.search(error.message)
    if named and error.field in ("responses", "items"):
        return int(named.group(2))
    if error.field == "body" and "max_responses_per_request" in error.message:
        return 0
    return None


class ClientOptions:
    """What every client keeps: its default timeout, retry policy and splitting limit."""

    def __init__(self, timeout: float | None, retry: RetryPolicy, max_responses_per_request: int | None,
                 max_concurrent_chunks: int = 2):
        self.timeout = timeout
        self.retry = retry
        self.max_responses_per_request = max_responses_per_request  # None: ask the server once
        self.max_concurrent_chunks = max_concurrent_chunks

    def _deadline(self, timeout: Any) -> Deadline:
        return Deadline(self.timeout if timeout is CLIENT_TIMEOUT else timeout)

    def _remember_limit(self, info: ModelInfo | None) -> int:
        if info is None:
            return DEFAULT_MAX_RESPONSES  # the server did not say: asked again next call
        self.max_responses_per_request = info.max_responses_per_request or DEFAULT_MAX_RESPONSES
        return self.max_responses_per_request

    def _smaller_limit(self, named: int, info: ModelInfo | None, sent: int) -> int | None:
        """The limit to send a refused call again with: the smaller of the one the refusal named and the one
        the server now reports, when it is below the `sent` responses per request; else None."""
        told = [limit for limit in (named, info.max_responses_per_request if info else None) if limit]
        if not told or min(told) >= sent:
            return None
        self.max_responses_per_request = min(told)
        return self.max_responses_per_request


def _part(prompt: Prompt | None, rows: list, items: bool, part: slice) -> tuple[Prompt | None, list | None, list | None]:
    """(prompt, responses, items) of one chunk of a call."""
    return (None, None, rows[part]) if items else (prompt, rows[part], None)


class BlockingCalls(ClientOptions):
    def _send_score(self, prompt: Prompt | None, responses: list[str] | None, items: list | None, values: str,
                    deadline: Deadline) -> ScoreResult:
        raise NotImplementedError

    def _send_compare(self, prompt: Prompt, response_a: str, response_b: str, deadline: Deadline) -> CompareResult:
        raise NotImplementedError

    def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        raise NotImplementedError

    def model_info(self, *, timeout: Any = CLIENT_TIMEOUT) -> ModelInfo:
        return self._send_model_info(self._deadline(timeout))

    def _limit(self, deadline: Deadline) -> int:
        if self.max_responses_per_request is not None:
            return self.max_responses_per_request
        try:
            return self._remember_limit(self._send_model_info(deadline))
        except (RmserveError, KeyError):
            return self._remember_limit(None)

    def score(self, prompt: Prompt, responses: Sequence[str], *, values: str = "raw",
              timeout: Any = CLIENT_TIMEOUT) -> ScoreResult:
        """Rewards of `responses` to one `prompt`, with their group statistics."""
        return self._score(prompt, list(responses), False, values, timeout)

    def score_items(self, items: Items, *, values: str = "raw", timeout: Any = CLIENT_TIMEOUT) -> ScoreResult:
        """Rewards of independent (prompt, response) pairs; `values` is "raw" or "normalized"."""
        return self._score(None, list(items), True, values, timeout)

    def _score(self, prompt: Prompt | None, rows: list, items: bool, values: str, timeout: Any) -> ScoreResult:
        deadline = self._deadline(timeout)
        limit = self._limit(deadline)
        try:
            return self._score_in_chunks(prompt, rows, items, values, limit, deadline)
        except InvalidRequest as refused:
            named = limit_named_by(refused)
            if named is None:
                raise
            try:
                info = self._send_model_info(deadline)
            except (RmserveError, KeyError):
                info = None
            smaller = self._smaller_limit(named, info, min(limit, len(rows)))
            if smaller is None:
                raise
        return self._score_in_chunks(prompt, rows, items, values, smaller, deadline)

    def _score_in_chunks(self, prompt: Prompt | None, rows: list, items: bool, values: str, limit: int,
                         deadline: Deadline) -> ScoreResult:
        parts, asked = plan(len(rows), limit, values, not items)
        answers = [self._send_score(*_part(prompt, rows, items, part), asked, deadline) for part in parts]
        return answers[0] if len(answers) == 1 else merge(answers, values, not items)

    def compare(self, prompt: Prompt, response_a: str, response_b: str, *,
                timeout: Any = CLIENT_TIMEOUT) -> CompareResult:
        return self._send_compare(prompt, response_a, response_b, self._deadline(timeout))


class AsyncCalls(ClientOptions):
    """As BlockingCalls, for asyncio; the chunks of a long list go `max_concurrent_chunks` at a time."""

    async def _send_score(self, prompt: Prompt | None, responses: list[str] | None, items: list | None,
                          values: str, deadline: Deadline) -> ScoreResult:
        raise NotImplementedError

    async def _send_compare(self, prompt: Prompt, response_a: str, response_b: str,
                            deadline: Deadline) -> CompareResult:
        raise NotImplementedError

    async def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        raise NotImplementedError

    async def model_info(self, *, timeout: Any = CLIENT_TIMEOUT) -> ModelInfo:
        return await self._send_model_info(self._deadline(timeout))

    async def _limit(self, deadline: Deadline) -> int:
        if self.max_responses_per_request is not None:
            return self.max_responses_per_request
        try:
            return self._remember_limit(await self._send_model_info(deadline))
        except (RmserveError, KeyError):
            return self._remember_limit(None)

    async def score(self, prompt: Prompt, responses: Sequence[str], *, values: str = "raw",
                    timeout: Any = CLIENT_TIMEOUT) -> ScoreResult:
        """Rewards of `responses` to one `prompt`, with their group statistics."""
        return await self._score(prompt, list(responses), False, values, timeout)

    async def score_items(self, items: Items, *, values: str = "raw", timeout: Any = CLIENT_TIMEOUT) -> ScoreResult:
        """Rewards of independent (prompt, response) pairs; `values` is "raw" or "normalized"."""
        return await self._score(None, list(items), True, values, timeout)

    async def _score(self, prompt: Prompt | None, rows: list, items: bool, values: str, timeout: Any) -> ScoreResult:
        deadline = self._deadline(timeout)
        limit = await self._limit(deadline)
        try:
            return await self._score_in_chunks(prompt, rows, items, values, limit, deadline)
        except InvalidRequest as refused:
            named = limit_named_by(refused)
            if named is None:
                raise
            try:
                info = await self._send_model_info(deadline)
            except (RmserveError, KeyError):
                info = None
            smaller = self._smaller_limit(named, info, min(limit, len(rows)))
            if smaller is None:
                raise
        return await self._score_in_chunks(prompt, rows, items, values, smaller, deadline)

    async def _score_in_chunks(self, prompt: Prompt | None, rows: list, items: bool, values: str, limit: int,
                               deadline: Deadline) -> ScoreResult:
        parts, asked = plan(len(rows), limit, values, not items)
        gate = asyncio.Semaphore(self.max_concurrent_chunks)

        async def one(part: slice) -> ScoreResult:
            async with gate:
                return await self._send_score(*_part(prompt, rows, items, part), asked, deadline)

        chunks = [asyncio.ensure_future(one(part)) for part in parts]
        try:
            answers = await asyncio.gather(*chunks)
        except BaseException:  # one chunk failed (or the caller left): the call is over, its other chunks too
            for chunk in chunks:
                chunk.cancel()
            await asyncio.gather(*chunks, return_exceptions=True)
            raise
        return answers[0] if len(answers) == 1 else merge(answers, values, not items)

    async def compare(self, prompt: Prompt, response_a: str, response_b: str, *,
                      timeout: Any = CLIENT_TIMEOUT) -> CompareResult:
        return await self._send_compare(prompt, response_a, response_b, self._deadline(timeout))
