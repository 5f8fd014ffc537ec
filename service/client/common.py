"""What rmserve's clients share, whatever the protocol: typed results, errors, the retry policy, call
deadlines, and merging the answers of a list that was split over several requests.

Imported by `rmserve.client.http` and `rmserve.client.grpc` (the public import path is `rmserve.client`);
needs neither torch nor the server's web stack.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rmserve.group_stats import VALUE_KINDS, group_stats

T = TypeVar("T")
# A prompt is text or chat messages ({"role", "content"} mappings), as in the HTTP API.
Prompt = str | Sequence[Mapping[str, str]]
DEFAULT_MAX_RESPONSES = 256  # the server's default max_responses_per_request
CLIENT_TIMEOUT: Any = object()  # a call's default timeout: the client's, as distinct from None (no deadline)


@dataclass(frozen=True)
class ModelRef:
    """The bundle that produced an answer."""

    bundle_id: str
    model_sha256: str
    normalization_version: str
    calibration_temperature: float


@dataclass(frozen=True)
class Group:
    """Statistics of the responses to one prompt, from their raw rewards (see service/core/groups.py)."""

    mean: float
    std: float  # population standard deviation (ddof=0)
    advantages: list[float]  # (reward - mean) / (std + eps)
    eps: float


@dataclass(frozen=True)
class ScoreResult:
    rewards: list[float]  # raw, in request order
    normalized_rewards: list[float]  # with the bundle's reference stats
    truncated: list[bool]
    values: list[float]  # what the call's `values` asked for: raw, normalized or group advantages
    group: Group | None  # for one prompt with its responses; None for items
    model: ModelRef
    requests: int = 1  # requests sent for this call: chunks and retries included
    verified: bool = False  # the server's verifiers were combined into `values` and the group statistics


@dataclass(frozen=True)
class CompareResult:
    reward_a: float
    reward_b: float
    normalized_reward_a: float
    normalized_reward_b: float
    probability_a: float  # P(a preferred over b)
    model: ModelRef


@dataclass(frozen=True)
class ModelInfo:
    model: ModelRef
    provider: str
    max_length: int
    max_responses_per_request: int | None  # None when the server does not say
    manifest: dict[str, Any]


class RmserveError(Exception):
    """A call the service did not answer. `status` is the HTTP status or the gRPC code's name; `field`
    names the offending input for validation errors; `retry_after` is the server's advice in seconds."""

    retryable = False

    def __init__(self, message: str, *, status: int | str | None = None, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after


class InvalidRequest(RmserveError):
    """422 / INVALID_ARGUMENT: the request itself is wrong; retrying cannot help."""


class Unauthenticated(RmserveError):
    """401 / UNAUTHENTICATED: missing or unknown API key."""


class Overloaded(RmserveError):
    """429 / RESOURCE_EXHAUSTED: the server's queue was full (raised once retries are spent)."""

    retryable = True


class Unavailable(RmserveError):
    """503 / UNAVAILABLE, or no connection: loading, shutting down or not there (raised once retries are spent)."""

    retryable = True


class DeadlineExceeded(RmserveError):
    """The call's timeout passed before an answer came."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for Overloaded and Unavailable answers: exponential backoff with jitter, never shorter than
    the server's Retry-After, and never past the call's deadline. `on_retry(attempt, delay, error)` is
    called before each wait (for logging)."""

    max_retries: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.25  # backoff is scaled by a random factor in [1 - jitter, 1 + jitter]
    on_retry: Callable[[int, float, RmserveError], None] | None = None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt)
        backoff *= 1 + self.jitter * (2 * random.random() - 1)
        return backoff if retry_after is None else max(backoff, retry_after)


NO_RETRIES = RetryPolicy(max_retries=0)


class Deadline:
    """When a call must be over, across all of its requests and retries (None: never)."""

    def __init__(self, timeout: float | None):
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left; raises DeadlineExceeded when none are."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's timeout passed")
        return left


def retry_delay(policy: RetryPolicy, attempt: int, error: RmserveError, deadline: Deadline) -> float | None:
    """Seconds to wait before retrying after `error`, or None to give up and raise it."""
    if not error.retryable or attempt >= policy.max_retries:
        return None
    delay = policy.delay(attempt, error.retry_after)
    if deadline.at is not None and time.monotonic() + delay >= deadline.at:
        return None  # waiting would use up the deadline: report the real cause now
    if policy.on_retry is not None:
        policy.on_retry(attempt + 1, delay, error)
    return delay


Replicas = int | Callable[[], int]  # how many, or how many are live now (not sitting out a failure)


def _failover(error: RmserveError, policy: RetryPolicy, failed_in_a_row: int, replicas: Replicas) -> bool:
    """Whether to send again at once: the error may not recur on another replica, and some live replica has
    not been tried since the last wait (each send goes to a replica the request has not tried). A replica
    that answered 429 stays live: with no other live one, the call waits for the backoff and Retry-After."""
    live = replicas() if callable(replicas) else replicas
    return error.retryable and policy.max_retries > 0 and failed_in_a_row < live


def call_with_retries(send: Callable[[float | None], T], policy: RetryPolicy, deadline: Deadline,
                      replicas: Replicas = 1) -> tuple[T, int]:
    """`send(seconds_left)` until it answers; returns the answer and how many requests it took. With
    several `replicas`, a retryable failure is sent again at once (to the next replica) until each was
    tried; only then does the policy's backoff apply."""
    attempt, sent, failed_in_a_row = 0, 0, 0
    while True:
        try:
            sent += 1
            return send(deadline.remaining()), sent
        except RmserveError as error:
            failed_in_a_row += 1
            if _failover(error, policy, failed_in_a_row, replicas):
                continue
            delay = retry_delay(policy, attempt, error, deadline)
            if delay is None:
                raise
            time.sleep(delay)
            attempt += 1
            failed_in_a_row = 0


async def acall_with_retries(send: Callable[[float | None], Awaitable[T]], policy: RetryPolicy,
                             deadline: Deadline, replicas: Replicas = 1) -> tuple[T, int]:
    attempt, sent, failed_in_a_row = 0, 0, 0
    while True:
        try:
            sent += 1
            return await send(deadline.remaining()), sent
        except RmserveError as error:
            failed_in_a_row += 1
            if _failover(error, policy, failed_in_a_row, replicas):
                continue
            delay = retry_delay(policy, attempt, error, deadline)
            if delay is None:
                raise
            await asyncio.sleep(delay)
            attempt += 1
            failed_in_a_row = 0


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_values(values: str) -> str:
    if values not in VALUE_KINDS:
        raise ValueError(f"values must be one of {', '.join(VALUE_KINDS)}, not {values!r}")
    return values


def plan(count: int, limit: int, values: str, grouped: bool) -> tuple[list[slice], str]:
    """The chunks a call of `count` responses is sent in, and the values each request asks for: the call's,
    except that a split call asking for group advantages asks for raw values (`merge` computes the group
    over the whole list)."""
    if count == 0:
        raise InvalidRequest("at least one response is needed", field="responses")
    check_values(values)
    if values == "group" and not grouped:
        raise InvalidRequest("group values need one prompt with its responses, not items", field="values")
    parts = [slice(start, min(start + limit, count)) for start in range(0, count, limit)]
    return parts, "raw" if len(parts) > 1 and values == "group" else values


def merge(parts: Sequence[ScoreResult], values: str, grouped: bool) -> ScoreResult:
    """One answer from the answers to consecutive chunks of one call (asked for as `plan` says): what the call
    sent whole would have got. Group statistics are computed over the whole list with the server's
    arithmetic (service/core/groups.py) and on its basis: the raw rewards, or, where the server combines
    its verifiers' results with them, the combined values the chunks returned."""
    models = {p.model.model_sha256 for p in parts}
    if len(models) > 1:
        raise RmserveError("the server's model changed while a split call was answered; retry the call")
    rewards = [r for p in parts for r in p.rewards]
    normalized = [r for p in parts for r in p.normalized_rewards]
    answered = [v for p in parts for v in p.values]  # raw when the call asked for group values
    verified = any(p.verified for p in parts)
    group = None
    if grouped:
        stats = group_stats(answered if verified else rewards)
        group = Group(mean=stats.mean, std=stats.std, advantages=stats.advantages.tolist(), eps=stats.eps)
    if values == "group" and group is None:
        raise ValueError("group values need one prompt with its responses")
    return ScoreResult(rewards=rewards, normalized_rewards=normalized, truncated=[t for p in parts for t in p.truncated],
                       values=group.advantages if values == "group" else answered, group=group,
                       model=parts[0].model, requests=sum(p.requests for p in parts), verified=verified)
