"""The gRPC transport: a thin grpc.aio adapter over the same scoring core as HTTP.

Requests are converted to the HTTP request models and validated by the same pydantic schemas, so both
transports accept and refuse exactly the same inputs. Core errors map to status codes by one table,
`GRPC_STATUS`. Client deadlines become row deadlines in the batcher: work whose deadline passed is
dropped before inference. Also serves grpc.health.v1 (following readiness) and server reflection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from rmserve.proto import reward_pb2, reward_pb2_grpc
from rmserve.service.core.bundle import public_manifest
from rmserve.service.core.errors import ErrorKind, ScoringError, internal_error
from rmserve.service.core.groups import RewardSummary
from rmserve.service.core.limits import request_client
from rmserve.service.core.scoring import Row, Scorer, Scores
from rmserve.service.process.state import ServiceState
from rmserve.service.transports.grpc.guard import add_guarded_servicer, server_interceptors
from rmserve.service.transports.schemas import CompareRequest, ScoreRequest, validation_error
from rmserve.service.transports.tls import add_grpc_port, grpc_address

log = logging.getLogger("rmserve.grpc")

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardModel"].full_name

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.VALIDATION: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


_VALUES = {reward_pb2.REWARD_VALUES_RAW: "raw", reward_pb2.REWARD_VALUES_NORMALIZED: "normalized",
           reward_pb2.REWARD_VALUES_GROUP: "group"}
_AGGREGATES = {reward_pb2.STEP_AGGREGATE_MIN: "min", reward_pb2.STEP_AGGREGATE_LAST: "last",
               reward_pb2.STEP_AGGREGATE_MEAN: "mean", reward_pb2.STEP_AGGREGATE_PROD: "prod"}


def _prompt(message: reward_pb2.Prompt) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "text":
        return message.text
    if kind == "messages":
        return [{"role": m.role, "content": m.content} for m in message.messages.messages]
    return None


def _item(item: reward_pb2.ScoreItem) -> dict[str, Any]:
    # A field proto3 leaves unset (an empty string, a prompt of neither kind) is left out, as a JSON body
    # without it: validation then names what is missing in the same words over both transports.
    out: dict[str, Any] = {}
    if item.HasField("prompt") and item.prompt.WhichOneof("kind") is not None:
        out["prompt"] = _prompt(item.prompt)
    if item.HasField("steps"):
        out["steps"] = list(item.steps.steps)
    if item.response:
        out["response"] = item.response  # with steps too: refused by validation, as over HTTP
    if item.reference:
        out["reference"] = item.reference
    return out


def score_request_from_proto(request: reward_pb2.ScoreRequest) -> ScoreRequest:
    body: dict[str, Any] = {}
    if request.HasField("prompt") and request.prompt.WhichOneof("kind") is not None:
        body["prompt"] = _prompt(request.prompt)
    if request.responses:
        body["responses"] = list(request.responses)
    if request.items:
        body["items"] = [_item(item) for item in request.items]
    if request.values:
        body["values"] = _VALUES.get(request.values, request.values)  # an unknown number fails validation
    if request.response_steps:
        body["response_steps"] = [list(s.steps) for s in request.response_steps]
    if request.aggregate:
        body["aggregate"] = _AGGREGATES.get(request.aggregate, request.aggregate)
    if request.reference:
        body["reference"] = request.reference
    if request.verifiers:
        body["verifiers"] = list(request.verifiers)
    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def compare_request_from_proto(request: reward_pb2.CompareRequest) -> CompareRequest:
    body: dict[str, Any] = {"response_a": request.response_a, "response_b": request.response_b}
    if request.HasField("prompt") and request.prompt.WhichOneof("kind") is not None:
        body["prompt"] = _prompt(request.prompt)
    try:
        return CompareRequest.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _model_ref(scorer: Scorer) -> reward_pb2.ModelRef:
    m = scorer.manifest
    return reward_pb2.ModelRef(bundle_id=m.bundle_id, model_sha256=m.model_sha256,
                               normalization_version=m.normalization.version,
                               calibration_temperature=m.calibration.temperature)


def _step_and_verifier_fields(scores: Scores, summary: RewardSummary) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if scores.step_rewards is not None:
        out["step_rewards"] = [reward_pb2.StepRewards(rewards=r.tolist(), steps_cut=cut)
                               for r, cut in zip(scores.step_rewards, scores.steps_cut or [])]
        out["aggregate"] = scores.aggregate
    if summary.verification is not None:
        out["verification"] = [reward_pb2.Verification(
            mode=v.mode, model=v.model, combined=v.combined,
            verifiers={r.name: reward_pb2.VerifierOutcome(type=r.type, passed=r.passed, value=r.value, detail=r.detail)
                       for r in v.verifiers}) for v in summary.verification]
    return out


class _ModelRefs:
    """The ModelRef of the scorer answering, built once per scorer (a reload brings a new one)."""

    def __init__(self) -> None:
        self._scorer: Scorer | None = None
        self._ref = reward_pb2.ModelRef()

    def __call__(self, scorer: Scorer) -> reward_pb2.ModelRef:
        if scorer is not self._scorer:
            self._ref, self._scorer = _model_ref(scorer), scorer
        return self._ref


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class RewardModelServicer(reward_pb2_grpc.RewardModelServicer):
    def __init__(self, state: ServiceState):
        self.state = state
        self._children: dict[tuple, Any] = {}  # metric children by label values: labels() costs per call
        self._model_ref = _ModelRefs()

    def _metric(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def _score(self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> reward_pb2.ScoreResponse:
        scorer = self.state.require_scorer()
        body = score_request_from_proto(request)
        rows = [Row(*row) for row in body.rows()]
        checked = await scorer.check(rows, body.references(), body.verifiers)
        scores = await scorer.score(rows, _deadline(context), body.aggregate)
        summary = scorer.summarize(scores, body.values, body.grouped, checked)
        group = summary.group
        return reward_pb2.ScoreResponse(
            model=self._model_ref(scorer), rewards=summary.raw.tolist(), normalized_rewards=summary.normalized.tolist(),
            truncated=scores.truncated, values=summary.values.tolist(),
            group=None if group is None else reward_pb2.GroupStats(
                mean=group.mean, std=group.std, advantages=group.advantages.tolist(), eps=group.eps),
            **_step_and_verifier_fields(scores, summary))

    async def Score(self, request, context):  # noqa: N802 - gRPC method names
        return await self._call("Score", context, self._score(request, context))

    async def Compare(self, request, context):  # noqa: N802
        async def compare() -> reward_pb2.CompareResponse:
            scorer = self.state.require_scorer()
            body = compare_request_from_proto(request)
            rows = [Row(body.prompt, body.response_a, "response_a"), Row(body.prompt, body.response_b, "response_b")]
            scores = await scorer.score(rows, _deadline(context))
            a, b = (float(x) for x in scores.raw)
            normalized = scorer.normalize(scores.raw)
            return reward_pb2.CompareResponse(model=self._model_ref(scorer), reward_a=a, reward_b=b,
                                              normalized_reward_a=float(normalized[0]),
                                              normalized_reward_b=float(normalized[1]),
                                              probability_a=scorer.probability_a(a, b))

        return await self._call("Compare", context, compare())

    async def ScoreStream(self, request_iterator, context) -> AsyncIterator[reward_pb2.ScoreResponse]:  # noqa: N802
        # One request at a time: the next one is read only after this one is scored, so a fast client
        # is slowed by HTTP/2 flow control rather than refused.
        async for request in request_iterator:
            yield await self._call("ScoreStream", context, self._score(request, context))

    async def GetModelInfo(self, request, context):  # noqa: N802
        async def info() -> reward_pb2.ModelInfo:
            scorer = self.state.require_scorer()
            return reward_pb2.ModelInfo(model=self._model_ref(scorer), provider=scorer.engine.provider,
                                        max_length=scorer.manifest.input.max_length,
                                        manifest_json=json.dumps(public_manifest(scorer.manifest,
                                                                                 scorer.settings.expose_paths)),
                                        max_responses_per_request=scorer.settings.max_responses_per_request)

        return await self._call("GetModelInfo", context, info())

    async def _call(self, method: str, context: grpc.aio.ServicerContext, work):  # type: ignore[no-untyped-def]
        metrics = self.state.metrics
        began = time.perf_counter()
        in_flight = self._metric(metrics.in_flight, "grpc")
        in_flight.inc()
        self.state.grpc_calls += 1
        client = None
        try:
            if self.state.api_keys.enabled:
                metadata = dict(context.invocation_metadata() or ())
                client = request_client.set(self.state.api_keys.check(metadata.get("authorization")))
            else:  # per connection: the peer's address and port
                client = request_client.set(context.peer())
            result = await work
        except ScoringError as e:
            if hasattr(work, "close"):
                work.close()  # never awaited when authentication failed
            self._metric(metrics.requests, method, "grpc", e.kind.value).inc()
            if e.kind is ErrorKind.UNAVAILABLE:
                await self.state.refusal_released()  # at the very end of a drain: after the GOAWAY (close_grpc)
            detail = f"{e.field}: {e.message}" if e.field else e.message
            await context.abort(GRPC_STATUS[e.kind], detail)
        except asyncio.CancelledError:  # the client left or its deadline passed
            self._metric(metrics.requests, method, "grpc", "client_gone").inc()
            raise
        except Exception:  # not a refusal: INTERNAL, its text to the log only
            self._metric(metrics.requests, method, "grpc", ErrorKind.INTERNAL.value).inc()
            await context.abort(GRPC_STATUS[ErrorKind.INTERNAL], internal_error(log, f"{method} failed").message)
        finally:
            if client is not None:
                request_client.reset(client)
            in_flight.dec()
            self._metric(metrics.request_duration, method, "grpc").observe(time.perf_counter() - began)
        self._metric(metrics.requests, method, "grpc", "ok").inc()
        return result


def server_options(settings: Any) -> list[tuple[str, int]]:
    """The gRPC server's limits: messages up to max_request_bytes (larger ones are refused by gRPC before
    they are read, RESOURCE_EXHAUSTED), a handshake within header_timeout_seconds, keepalive pings on idle
    connections (a peer gone silently is dropped), idle and old connections closed with GOAWAY (a client
    then reconnects, possibly to a newer replica), and clients' own pings accepted no more often than
    every `_MIN_CLIENT_PING_MS`."""
    ms = 1000
    return [("grpc.so_reuseport", 0),  # a second server on this port must fail, not take half of its calls
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_seconds * ms)),
            ("grpc.keepalive_time_ms", _KEEPALIVE_MS), ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", _MIN_CLIENT_PING_MS),
            ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_seconds * ms)),
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_seconds * ms)),
            ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_seconds * ms))]


_KEEPALIVE_MS, _KEEPALIVE_TIMEOUT_MS, _MIN_CLIENT_PING_MS = 60_000, 20_000, 10_000


async def start_grpc_server(state: ServiceState) -> grpc.aio.Server:
    settings = state.settings
    server = grpc.aio.server(interceptors=server_interceptors(state), options=server_options(settings),
                             maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs)
    add_guarded_servicer(RewardModelServicer(state), server, state)  # undecodable or oversized: INVALID_ARGUMENT

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)

    def on_readiness(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            # set() is a coroutine on the aio servicer; readiness changes come from the event loop.
            asyncio.get_running_loop().create_task(health_servicer.set(service, status))

    state.readiness_listeners.append(on_readiness)
    on_readiness(state.ready)
    port = add_grpc_port(server, settings)  # TLS when configured
    await server.start()
    log.info("gRPC listening on %s", grpc_address(settings.host, port))
    return server
