"""`connect(url)`: the client for a URL. HTTP for `http(s)://host:port`, several of them (a list, or commas)
or `dns:///host:port`; gRPC for `grpc://` followed by a gRPC target: `grpc://host:port`,
`grpc://host:port,host:port` or `grpc://dns:///host:port`. Several replicas share the calls (endpoints.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rmserve.client.grpc import AsyncGrpcRewardClient, GrpcRewardClient
from rmserve.client.http import AsyncRewardClient, RewardClient


def _grpc_target(url: str | Sequence[str]) -> list[str] | None:
    """The gRPC target entries of `url`, or None when it names HTTP endpoints."""
    entries = [url] if isinstance(url, str) else list(url)
    grpc_entries = [entry.startswith("grpc://") for entry in entries]
    if not any(grpc_entries):
        return None
    if not all(grpc_entries):
        raise ValueError(f"{url!r}: mixes grpc:// and HTTP endpoints")
    return [entry.removeprefix("grpc://") for entry in entries]


def connect(url: str | Sequence[str], **options: Any) -> RewardClient | GrpcRewardClient:
    """A blocking client for `url` (see the module's doc)."""
    target = _grpc_target(url)
    return RewardClient(url, **options) if target is None else GrpcRewardClient(target, **options)


def connect_async(url: str | Sequence[str], **options: Any) -> AsyncRewardClient | AsyncGrpcRewardClient:
    target = _grpc_target(url)
    return AsyncRewardClient(url, **options) if target is None else AsyncGrpcRewardClient(target, **options)
