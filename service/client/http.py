"""The HTTP client (httpx): `RewardClient` and `AsyncRewardClient`, one connection pool per client, reused by
every call. The calls, retries, deadlines and splitting they share with the gRPC client live in calls.py
and common.py; this module only speaks HTTP.

A client takes one URL, several, or `dns:///host:port` (endpoints.py): each request goes to the next
replica in turn, and one that refuses the connection, closes it before answering, or answers 503 or 429
is followed at once by the same request to another replica, one this request has not tried yet (scoring
has no side effects, so sending a request twice is safe). A 429 makes its replica busy for its
Retry-After: the others are preferred meanwhile. Each request carries the call's remaining time in
`X-Request-Timeout`, so that the server drops its rows once the caller has stopped waiting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from rmserve.client.calls import AsyncCalls, BlockingCalls, ClientOptions
from rmserve.client.common import (
    CompareResult,
    Deadline,
    DeadlineExceeded,
    Group,
    InvalidRequest,
    ModelInfo,
    ModelRef,
    Overloaded,
    Prompt,
    RetryPolicy,
    RmserveError,
    ScoreResult,
    Unauthenticated,
    Unavailable,
    acall_with_retries,
    call_with_retries,
    parse_retry_after,
)
from rmserve.client.endpoints import HttpEndpoints

TIMEOUT_HEADER = "X-Request-Timeout"  # the server's name for a request's deadline, in seconds
# 502: a proxy in front of a replica (an ingress) that could not reach it, e.g. while it restarts: what gRPC
# reports as UNAVAILABLE, and retried as such (rmserve itself never answers 502).
_ERRORS: dict[int, type[RmserveError]] = {422: InvalidRequest, 401: Unauthenticated, 429: Overloaded,
                                          502: Unavailable, 503: Unavailable, 504: DeadlineExceeded}


def _prompt_json(prompt: Prompt) -> Any:
    if isinstance(prompt, str):
        return prompt
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _model_ref(data: Mapping[str, Any]) -> ModelRef:
    return ModelRef(bundle_id=data["bundle_id"], model_sha256=data["model_sha256"],
                    normalization_version=data["normalization_version"],
                    calibration_temperature=data["calibration_temperature"])


def _score_result(data: Mapping[str, Any], requests: int) -> ScoreResult:
    group = data.get("group")
    return ScoreResult(rewards=data["rewards"], normalized_rewards=data["normalized_rewards"],
                       truncated=data["truncated"], values=data.get("values", data["rewards"]),
                       group=Group(**group) if group else None, model=_model_ref(data["model"]), requests=requests,
                       verified=bool(data.get("verification")))


def _compare_result(data: Mapping[str, Any]) -> CompareResult:
    return CompareResult(reward_a=data["reward_a"], reward_b=data["reward_b"],
                         normalized_reward_a=data["normalized_reward_a"],
                         normalized_reward_b=data["normalized_reward_b"],
                         probability_a=data["probability_a"], model=_model_ref(data["model"]))


def _model_info(data: Mapping[str, Any]) -> ModelInfo:
    manifest = data["manifest"]
    return ModelInfo(
        model=ModelRef(bundle_id=manifest["bundle_id"], model_sha256=manifest["files"].get("model.onnx", ""),
                       normalization_version=manifest["normalization"]["version"],
                       calibration_temperature=manifest["calibration"]["temperature"]),
        provider=data["provider"], max_length=manifest["input"]["max_length"],
        max_responses_per_request=data.get("max_responses_per_request"), manifest=manifest)


def _answer(response: httpx.Response) -> Any:
    if response.status_code == 200:
        return response.json()
    try:
        error = response.json()["error"]
        message, field = error["message"], error.get("field")
    except (ValueError, KeyError, TypeError):
        message, field = response.text[:300] or response.reason_phrase, None
    kind = _ERRORS.get(response.status_code, RmserveError)
    raise kind(message, status=response.status_code, field=field,
               retry_after=parse_retry_after(response.headers.get("retry-after")))


def _transport_error(error: httpx.TransportError, url: str) -> RmserveError:
    if isinstance(error, httpx.ConnectTimeout):
        return Unavailable(f"cannot connect to {url} in time")
    if isinstance(error, httpx.TimeoutException):
        return DeadlineExceeded(f"the call's timeout passed ({type(error).__name__})")
    if isinstance(error, httpx.ConnectError):  # nothing was sent
        return Unavailable(f"cannot connect to {url}: {error}")
    if isinstance(error, (httpx.NetworkError, httpx.RemoteProtocolError)):  # e.g. a replica that went away
        return Unavailable(f"{url} closed the connection before answering: {type(error).__name__}: {error}")
    return RmserveError(f"{type(error).__name__}: {error}")


def _timeout(left: float | None, connect: float) -> httpx.Timeout:
    # A replica that is gone (its address silent, not refusing) must not hold a call for its whole deadline.
    return httpx.Timeout(left, connect=connect if left is None else min(left, connect))


def _deadline_header(left: float | None) -> dict[str, str] | None:
    """The call's remaining time, for the server to drop the request's queued rows once it has passed (as a
    gRPC deadline does); at least a millisecond, since the server refuses a timeout of 0."""
    return None if left is None else {TIMEOUT_HEADER: f"{max(left, 0.001):.3f}"}


def _score_body(prompt: Prompt | None, responses: Sequence[str] | None,
                items: Sequence[tuple[Prompt, str]] | None, values: str) -> dict[str, Any]:
    if items is not None:
        return {"items": [{"prompt": _prompt_json(p), "response": r} for p, r in items], "values": values}
    return {"prompt": _prompt_json(prompt), "responses": list(responses or ()), "values": values}


class _HttpTransport:
    """One httpx request with retries, and the three calls the shared client logic needs."""

    def _init_http(self, url: str | Sequence[str], api_key: str | None, connect_timeout: float) -> None:
        self.endpoints = HttpEndpoints(url)
        self.url = repr(self.endpoints)
        self.connect_timeout = connect_timeout
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def _sent(self, base: str, response: httpx.Response) -> Any:
        try:
            return _answer(response)
        except Unavailable:
            self.endpoints.failed(base)
            raise
        except Overloaded as refused:
            self.endpoints.busy(base, refused.retry_after)
            raise

    def _lost(self, base: str, error: httpx.TransportError) -> RmserveError:
        failure = _transport_error(error, base)
        if isinstance(failure, Unavailable):
            self.endpoints.failed(base)
        return failure

    @staticmethod
    def _compare_body(prompt: Prompt, response_a: str, response_b: str) -> dict[str, Any]:
        return {"prompt": _prompt_json(prompt), "response_a": response_a, "response_b": response_b}


class RewardClient(_HttpTransport, BlockingCalls):
    """Blocking HTTP client. Thread-safe; one per process is enough (it keeps its connections).
    `url`: "http(s)://host:port", several of them (a list or commas), or "dns:///host:port"."""

    def __init__(self, url: str | Sequence[str] = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | None = 60.0, retry: RetryPolicy = RetryPolicy(),
                 max_responses_per_request: int | None = None, connect_timeout: float = 5.0):
        ClientOptions.__init__(self, timeout, retry, max_responses_per_request)
        self._init_http(url, api_key, connect_timeout)
        self._http = httpx.Client(headers=self.headers)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, deadline: Deadline, body: Any = None) -> tuple[Any, int]:
        tried: set[str] = set()

        def send(left: float | None) -> Any:
            base = self.endpoints.pick(tried)
            try:
                response = self._http.request(method, base + path, json=body, headers=_deadline_header(left),
                                              timeout=_timeout(left, self.connect_timeout))
            except httpx.TransportError as e:
                raise self._lost(base, e) from None
            return self._sent(base, response)

        return call_with_retries(send, self.retry, deadline, self.endpoints.live)

    def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        return _model_info(self._request("GET", "/v1/model", deadline)[0])

    def _send_score(self, prompt, responses, items, values, deadline) -> ScoreResult:  # type: ignore[no-untyped-def]
        return _score_result(*self._request("POST", "/score", deadline, _score_body(prompt, responses, items, values)))

    def _send_compare(self, prompt: Prompt, response_a: str, response_b: str, deadline: Deadline) -> CompareResult:
        body = self._compare_body(prompt, response_a, response_b)
        return _compare_result(self._request("POST", "/compare", deadline, body)[0])


class AsyncRewardClient(_HttpTransport, AsyncCalls):
    """asyncio HTTP client; the chunks of a long list are sent `max_concurrent_chunks` at a time."""

    def __init__(self, url: str | Sequence[str] = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | None = 60.0, retry: RetryPolicy = RetryPolicy(),
                 max_responses_per_request: int | None = None, max_concurrent_chunks: int = 2,
                 connect_timeout: float = 5.0):
        ClientOptions.__init__(self, timeout, retry, max_responses_per_request, max_concurrent_chunks)
        self._init_http(url, api_key, connect_timeout)
        self._http = httpx.AsyncClient(headers=self.headers)

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, deadline: Deadline, body: Any = None) -> tuple[Any, int]:
        tried: set[str] = set()

        async def send(left: float | None) -> Any:
            base = await self.endpoints.apick(tried)
            try:
                response = await self._http.request(method, base + path, json=body, headers=_deadline_header(left),
                                                    timeout=_timeout(left, self.connect_timeout))
            except httpx.TransportError as e:
                raise self._lost(base, e) from None
            return self._sent(base, response)

        return await acall_with_retries(send, self.retry, deadline, self.endpoints.live)

    async def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        return _model_info((await self._request("GET", "/v1/model", deadline))[0])

    async def _send_score(self, prompt, responses, items, values, deadline) -> ScoreResult:  # type: ignore[no-untyped-def]
        body = _score_body(prompt, responses, items, values)
        return _score_result(*(await self._request("POST", "/score", deadline, body)))

    async def _send_compare(self, prompt: Prompt, response_a: str, response_b: str,
                            deadline: Deadline) -> CompareResult:
        body = self._compare_body(prompt, response_a, response_b)
        return _compare_result((await self._request("POST", "/compare", deadline, body))[0])
