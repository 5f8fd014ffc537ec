"""What the gRPC server checks before a servicer sees a call; the counterpart of service/transports/http/guard.py.

- Messages are decoded leniently: one larger than `max_request_bytes`, or one that protobuf refuses
  (a string field that is not valid UTF-8, a truncated or garbled message), reaches the servicer as a
  `Refused` value and is answered INVALID_ARGUMENT naming the limit or the decoding error (grpc's own
  handling would answer INTERNAL). The API key is checked first, so an unauthenticated caller learns
  nothing about its payload. Messages beyond `grpc_max_message_bytes` are refused by gRPC itself
  (RESOURCE_EXHAUSTED) before any of this.
- With `protect_health_and_metrics`, grpc.health.v1 asks for an API key like every other call.
"""

from __future__ import annotations

from typing import Any

import grpc

from rmserve.proto import reward_pb2_grpc
from rmserve.service.core.errors import ErrorKind, ScoringError


class Refused:
    """A request message that could not be accepted; `message` says why."""

    def __init__(self, message: str):
        self.message = message


def _lenient(deserialize: Any, limit: int) -> Any:
    def read(raw: bytes) -> Any:
        if len(raw) > limit:
            return Refused(f"message of {len(raw)} bytes; the limit is {limit} bytes (max_request_bytes)")
        try:
            return deserialize(raw)
        except Exception as e:  # protobuf's DecodeError, e.g. "String field had bad UTF-8"
            return Refused(f"message cannot be decoded: {e}")

    return read


class _Guard:
    def __init__(self, state: Any, method: str):
        self.state = state  # rmserve.service.process.runtime.ServiceState
        self.method = method

    async def refuse(self, request: Refused, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        try:
            self.state.api_keys.check(metadata.get("authorization"))
        except ScoringError as e:
            self.state.metrics.requests.labels(self.method, "grpc", e.kind.value).inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{e.field}: {e.message}")
        self.state.metrics.requests.labels(self.method, "grpc", ErrorKind.VALIDATION.value).inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {request.message}")

    def unary(self, behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Refused):
                await self.refuse(request, context)
            return await behavior(request, context)

        return call

    def stream(self, behavior: Any) -> Any:
        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for request in requests:
                if isinstance(request, Refused):
                    await self.refuse(request, context)
                yield request

        async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for response in behavior(checked(requests, context), context):
                yield response

        return call


class _Capture:
    """Stands in for the server to collect the generated method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service = service
        self.handlers = handlers


def add_guarded_servicer(servicer: Any, server: grpc.aio.Server, state: Any) -> None:
    """Register the RewardModel servicer as the generated code would, each method behind the guard."""
    captured = _Capture()
    reward_pb2_grpc.add_RewardModelServicer_to_server(servicer, captured)
    limit = state.settings.max_request_bytes
    handlers = {}
    for name, handler in captured.handlers.items():
        guard = _Guard(state, name)
        changes: dict[str, Any] = {"request_deserializer": _lenient(handler.request_deserializer, limit)}
        if handler.unary_unary is not None:
            changes["unary_unary"] = guard.unary(handler.unary_unary)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = guard.stream(handler.stream_stream)
        else:  # a new streaming shape in the proto must be guarded here too
            raise NotImplementedError(f"{name}: no guard for this kind of method")
        handlers[name] = handler._replace(**changes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)


class _HealthNeedsKey(grpc.aio.ServerInterceptor):
    def __init__(self, state: Any):
        self.state = state

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if not details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        try:
            self.state.api_keys.check(dict(details.invocation_metadata or ()).get("authorization"))
        except ScoringError as e:
            detail = f"{e.field}: {e.message}"

            async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

            async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)
                yield  # an async generator, as a server-streaming handler must be

            if details.method.endswith("/Watch"):
                return grpc.unary_stream_rpc_method_handler(deny_stream)
            return grpc.unary_unary_rpc_method_handler(deny)
        return await continuation(details)


def server_interceptors(state: Any) -> list[grpc.aio.ServerInterceptor]:
    if state.settings.protect_health_and_metrics and state.api_keys.enabled:
        return [_HealthNeedsKey(state)]
    return []
