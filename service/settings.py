"""The one validated configuration of the service: env `RMSERVE_*`, overridable by CLI flags.

Built at start-up by `rmserve serve` (never at import), so a bad value stops the process with a message
that names the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RMSERVE_", extra="forbid")

    bundle: Path = Field(Path("artifacts/default-bundle"), description="Bundle directory to serve.")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    grpc_port: int = Field(
        50051, ge=-1, le=65535, description="gRPC port, served beside HTTP in the same process; -1 disables gRPC."
    )
    grpc_max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0.0, description="On SIGTERM, how long in-flight and queued work may take to finish."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA when its provider really loads, else CPU."
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per inference; 0 lets ONNX Runtime choose (all cores)."
    )
    api_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated API keys clients must send as 'Authorization: Bearer <key>'; "
        "empty (and no file) disables authentication. /healthz, /readyz, /metrics and gRPC health stay open."
    )
    api_keys_file: Path | None = Field(None, description="File with one API key per line, added to api_keys.")
    inference_nice: int = Field(
        0, ge=0, le=19,
        description="Niceness for the inference threads (0 leaves them alone). On a CPU host a positive value "
        "lets the event loop answer (429s, health, new requests) while inference holds every core.",
    )
    max_responses_per_request: int = Field(256, ge=1, description="Most responses (or items) in one /score call.")
    max_batch_tokens: int = Field(
        4096, ge=1, description="Most padded tokens (longest row x rows) in one inference batch."
    )
    max_batch_size: int = Field(32, ge=1, description="Most rows in one inference batch.")
    max_padding_ratio: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Most padding a batch may carry, as a share of its padded tokens; a row that would exceed it "
        "waits for the next batch. Default by provider: 0.02 on CPU, where padding is wasted compute and "
        "batching gains nothing (measured in docs/benchmarks.md); 0.2 on CUDA, where rows run in parallel.",
    )
    max_wait_ms: float = Field(
        0.0, ge=0.0, description="How long a batch may wait to fill once rows are waiting; 0 runs at once."
    )
    max_queue_rows: int = Field(
        1024, ge=1, description="Rows that may wait for inference; beyond this, requests get 429 at once."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
