"""`connect(url)`: the client for a URL, HTTP for `http(s)://host:port`, gRPC for `grpc://host:port`."""

from __future__ import annotations

from typing import Any

from rmserve.client.grpc import AsyncGrpcRewardClient, GrpcRewardClient
from rmserve.client.http import AsyncRewardClient, RewardClient


def connect(url: str, **options: Any) -> RewardClient | GrpcRewardClient:
    """A blocking client for `http(s)://host:port` or `grpc://host:port`."""
    if url.startswith("grpc://"):
        return GrpcRewardClient(url.removeprefix("grpc://"), **options)
    return RewardClient(url, **options)


def connect_async(url: str, **options: Any) -> AsyncRewardClient | AsyncGrpcRewardClient:
    if url.startswith("grpc://"):
        return AsyncGrpcRewardClient(url.removeprefix("grpc://"), **options)
    return AsyncRewardClient(url, **options)
