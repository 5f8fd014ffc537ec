"""rmserve's client library, for training jobs: `from rmserve.client import RewardClient`.

- `RewardClient` / `AsyncRewardClient` (http.py): HTTP (httpx), one connection pool per client, reused by
  every call.
- `GrpcRewardClient` / `AsyncGrpcRewardClient` (grpc.py): the same calls over gRPC.
- `connect(url)` / `connect_async(url)`: the right one for `http(s)://...` or `grpc://host:port`.
- Several replicas (endpoints.py): every client takes a list of endpoints or a `dns:///host:port` name and
  spreads its calls over them (the listed replicas in turn; a gRPC name by gRPC's `round_robin`); a
  replica that refuses the connection or answers 503 is left for the next at once, and a request refused
  with 429 goes at once to a replica it has not tried.
- `trl_reward_func(url)` (trl.py): a reward function for TRL's GRPOTrainer (`reward_funcs=[...]`).

Every call has a deadline (`timeout`, seconds, across its chunks and retries, sent with each request);
Overloaded (429 / RESOURCE_EXHAUSTED) and Unavailable (503 / UNAVAILABLE / no connection) answers are
retried with exponential backoff, never sooner than the server's Retry-After (`RetryPolicy`). A list longer than the
server's max_responses_per_request (asked from /v1/model and kept, asked again when a server refuses a
request for it; else 256) is split into several requests and the answers merged, group statistics
included. Results are dataclasses (common.py).

The base install (`pip install rmserve`): httpx, grpcio, protobuf and numpy. Imports nothing from the
server (rmserve.service) and needs no torch, onnxruntime or web server.
"""

from __future__ import annotations

from rmserve.client.common import (
    NO_RETRIES,
    CompareResult,
    DeadlineExceeded,
    Group,
    InvalidRequest,
    ModelInfo,
    ModelRef,
    Overloaded,
    RetryPolicy,
    RmserveError,
    ScoreResult,
    Unauthenticated,
    Unavailable,
)
from rmserve.client.connect import connect, connect_async
from rmserve.client.grpc import AsyncGrpcRewardClient, GrpcRewardClient
from rmserve.client.http import AsyncRewardClient, RewardClient
from rmserve.client.trl import TrlRewardFunction, trl_reward_func

__all__ = [
    "AsyncGrpcRewardClient", "AsyncRewardClient", "CompareResult", "DeadlineExceeded", "GrpcRewardClient", "Group",
    "InvalidRequest", "ModelInfo", "ModelRef", "NO_RETRIES", "Overloaded", "RetryPolicy", "RewardClient",
    "RmserveError", "ScoreResult", "TrlRewardFunction", "Unauthenticated", "Unavailable", "connect",
    "connect_async", "trl_reward_func",
]
