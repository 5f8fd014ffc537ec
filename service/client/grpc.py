"""The gRPC half of rmserve's client library (import it from `rmserve.client`).

`GrpcRewardClient` (blocking) and `AsyncGrpcRewardClient` (grpc.aio) have the same calls, results,
retries, deadlines and splitting as the HTTP clients. Each keeps one channel (one HTTP/2 connection per
server address, multiplexing concurrent calls); a call's remaining deadline travels with each RPC, so the
server drops its queued rows once it has passed.

A channel balances calls with gRPC's `round_robin` policy over every address of its target (a name that
resolves to several addresses: `dns:///host:port`, e.g. a Kubernetes headless Service). A list of targets
is one channel each, taken in turn (endpoints.py `Replicas`): a call refused with UNAVAILABLE or
RESOURCE_EXHAUSTED by one is sent again at once to another it has not tried, and the refusing one is left
out (UNAVAILABLE) or avoided for its Retry-After (RESOURCE_EXHAUSTED) meanwhile, as the HTTP client does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from rmserve.client.calls import AsyncCalls, BlockingCalls
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
from rmserve.client.endpoints import Replicas, grpc_targets
from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc

_VALUES = {"raw": pb.REWARD_VALUES_RAW, "normalized": pb.REWARD_VALUES_NORMALIZED, "group": pb.REWARD_VALUES_GROUP}
_ERRORS: dict[grpc.StatusCode, type[RmserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest, grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded, grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    # This client never cancels its own calls (a deadline ends one with DEADLINE_EXCEEDED): a CANCELLED comes
    # from a server going away (gRPC's shutdown cancels the calls it has not handed to a handler yet), and
    # scoring has no side effects, so the call is sent again, to another replica when there is one.
    grpc.StatusCode.CANCELLED: Unavailable,
}
# The server sends up to 8 MiB by default (--grpc-max-message-bytes); leave room for a larger setting.
# round_robin: one subchannel per address, calls spread over the ready ones (gRPC's default, pick_first,
# would send everything to one replica). Reconnecting: gRPC waits 1 s, then 1.6 times longer after each
# failed attempt, up to 120 s, and meanwhile fails every call at once with UNAVAILABLE; after a replica was
# down 20 s, calls still failed 5.8 s after it was back (measured with grpcio 1.85), more than the default
# RetryPolicy waits in all, and a longer outage would fail calls for up to two minutes. Capped at 2 s.
_RECONNECT_BACKOFF_MS = 2000
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.lb_policy_name", "round_robin"), ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS)]


def _prompt(prompt: Prompt) -> pb.Prompt:
    if isinstance(prompt, str):
        return pb.Prompt(text=prompt)
    return pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                                        for m in prompt]))


def _model_ref(ref: pb.ModelRef) -> ModelRef:
    return ModelRef(bundle_id=ref.bundle_id, model_sha256=ref.model_sha256,
                    normalization_version=ref.normalization_version,
                    calibration_temperature=ref.calibration_temperature)


def _score_result(reply: pb.ScoreResponse, requests: int) -> ScoreResult:
    group = None
    if reply.HasField("group"):
        g = reply.group
        group = Group(mean=g.mean, std=g.std, advantages=list(g.advantages), eps=g.eps)
    return ScoreResult(rewards=list(reply.rewards), normalized_rewards=list(reply.normalized_rewards),
                       truncated=list(reply.truncated), values=list(reply.values), group=group,
                       model=_model_ref(reply.model), requests=requests, verified=len(reply.verification) > 0)


def _compare_result(reply: pb.CompareResponse) -> CompareResult:
    return CompareResult(reward_a=reply.reward_a, reward_b=reply.reward_b,
                         normalized_reward_a=reply.normalized_reward_a, normalized_reward_b=reply.normalized_reward_b,
                         probability_a=reply.probability_a, model=_model_ref(reply.model))


def _model_info(reply: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(model=_model_ref(reply.model), provider=reply.provider, max_length=reply.max_length,
                     max_responses_per_request=reply.max_responses_per_request or None,
                     manifest=json.loads(reply.manifest_json))


def _error(error: grpc.RpcError) -> RmserveError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    field = None
    head, sep, rest = details.partition(": ")
    if code == grpc.StatusCode.INVALID_ARGUMENT and sep and " " not in head:  # the server's "field: message"
        field, details = head, rest
    trailing = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    kind = _ERRORS.get(code, RmserveError)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # gRPC itself refusing a message over the server's limit (HTTP's 413), not a full queue: sending it again
        # cannot help. (gRPC core's words: "Received message larger than max (N vs. M)".)
        kind, field = RmserveError, "request"
    return kind(details, status=code.name, field=field, retry_after=parse_retry_after(trailing.get("retry-after")))


class _GrpcTransport:
    """The channels of a gRPC client (one per target) and how a call picks one and learns from its answer."""

    def _init_channels(self, target: str | Sequence[str], open_channel: Callable[[str], Any]) -> None:
        targets = grpc_targets(target)
        self.target = ",".join(targets)
        self._channels = {t: open_channel(t) for t in targets}
        self._stubs = {t: pb_grpc.RewardModelStub(channel) for t, channel in self._channels.items()}
        self.replicas = Replicas(targets)

    def _rpc(self, method: str, tried: set[str]) -> tuple[str, Any]:
        target = self.replicas.pick(tried)
        return target, getattr(self._stubs[target], method)

    def _refused(self, target: str, error: grpc.RpcError) -> RmserveError:
        failure = _error(error)
        if isinstance(failure, Unavailable):
            self.replicas.failed(target)
        elif isinstance(failure, Overloaded):
            self.replicas.busy(target, failure.retry_after)
        return failure


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def _request(prompt: Prompt | None, responses: Sequence[str] | None, items: Sequence[tuple[Prompt, str]] | None,
             values: str) -> pb.ScoreRequest:
    if items is not None:
        return pb.ScoreRequest(items=[pb.ScoreItem(prompt=_prompt(p), response=r) for p, r in items],
                               values=_VALUES[values])
    assert prompt is not None
    return pb.ScoreRequest(prompt=_prompt(prompt), responses=list(responses or ()), values=_VALUES[values])


def _compare_request(prompt: Prompt, response_a: str, response_b: str) -> pb.CompareRequest:
    return pb.CompareRequest(prompt=_prompt(prompt), response_a=response_a, response_b=response_b)


class GrpcRewardClient(_GrpcTransport, BlockingCalls):
    """Blocking gRPC client on one channel per target; `credentials` (grpc.ssl_channel_credentials()) for
    TLS. `target`: "host:port", "dns:///host:port", or several of them (a list or commas)."""

    def __init__(self, target: str | Sequence[str] = "127.0.0.1:50051", *, api_key: str | None = None,
                 timeout: float | None = 60.0, retry: RetryPolicy = RetryPolicy(),
                 max_responses_per_request: int | None = None, credentials: grpc.ChannelCredentials | None = None):
        BlockingCalls.__init__(self, timeout, retry, max_responses_per_request)
        self.metadata = _metadata(api_key)
        self._init_channels(target, lambda t: grpc.secure_channel(t, credentials, _CHANNEL_OPTIONS) if credentials
                            else grpc.insecure_channel(t, _CHANNEL_OPTIONS))

    def __enter__(self) -> GrpcRewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _call(self, method: str, request: Any, deadline: Deadline) -> tuple[Any, int]:
        tried: set[str] = set()

        def send(left: float | None) -> Any:
            target, rpc = self._rpc(method, tried)
            try:
                return rpc(request, timeout=left, metadata=self.metadata)
            except grpc.RpcError as e:
                raise self._refused(target, e) from None

        return call_with_retries(send, self.retry, deadline, self.replicas.live)

    def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        return _model_info(self._call("GetModelInfo", pb.GetModelInfoRequest(), deadline)[0])

    def _send_score(self, prompt, responses, items, values, deadline) -> ScoreResult:  # type: ignore[no-untyped-def]
        return _score_result(*self._call("Score", _request(prompt, responses, items, values), deadline))

    def _send_compare(self, prompt: Prompt, response_a: str, response_b: str, deadline: Deadline) -> CompareResult:
        return _compare_result(self._call("Compare", _compare_request(prompt, response_a, response_b), deadline)[0])


class AsyncGrpcRewardClient(_GrpcTransport, AsyncCalls):
    """asyncio gRPC client (grpc.aio) on one channel per target; create it inside the event loop that uses it."""

    def __init__(self, target: str | Sequence[str] = "127.0.0.1:50051", *, api_key: str | None = None,
                 timeout: float | None = 60.0, retry: RetryPolicy = RetryPolicy(),
                 max_responses_per_request: int | None = None, max_concurrent_chunks: int = 2,
                 credentials: grpc.ChannelCredentials | None = None):
        AsyncCalls.__init__(self, timeout, retry, max_responses_per_request, max_concurrent_chunks)
        self.metadata = _metadata(api_key)
        self._init_channels(target, lambda t: grpc.aio.secure_channel(t, credentials, _CHANNEL_OPTIONS)
                            if credentials else grpc.aio.insecure_channel(t, _CHANNEL_OPTIONS))

    async def __aenter__(self) -> AsyncGrpcRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def _call(self, method: str, request: Any, deadline: Deadline) -> tuple[Any, int]:
        tried: set[str] = set()

        async def send(left: float | None) -> Any:
            target, rpc = self._rpc(method, tried)
            try:
                return await rpc(request, timeout=left, metadata=self.metadata)
            except grpc.RpcError as e:
                raise self._refused(target, e) from None

        return await acall_with_retries(send, self.retry, deadline, self.replicas.live)

    async def _send_model_info(self, deadline: Deadline) -> ModelInfo:
        return _model_info((await self._call("GetModelInfo", pb.GetModelInfoRequest(), deadline))[0])

    async def _send_score(self, prompt, responses, items, values, deadline) -> ScoreResult:  # type: ignore[no-untyped-def]
        return _score_result(*(await self._call("Score", _request(prompt, responses, items, values), deadline)))

    async def _send_compare(self, prompt: Prompt, response_a: str, response_b: str,
                            deadline: Deadline) -> CompareResult:
        request = _compare_request(prompt, response_a, response_b)
        return _compare_result((await self._call("Compare", request, deadline))[0])
