"""The one validated configuration of the service: env `RMSERVE_*`, overridable by CLI flags.

Built at start-up by `rmserve serve` (never at import), so a bad value stops the process with a message
that names the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RMSERVE_", extra="forbid")

    bundle: Path = Field(Path("artifacts/default-bundle"), description="Bundle directory to serve.")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    grpc_port: int = Field(
        50051, ge=-1, le=65535, description="gRPC port, served beside HTTP in the same process; -1 disables gRPC."
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve on an address other than loopback without API keys. Without it such a start "
        "is refused: anyone who can reach the port could score with the model.",
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
    tokenizer_threads: int = Field(
        0, ge=0, description="Threads that render and tokenize requests beside the event loop; 0: one per core "
        "this process may use beyond the event loop's, 1 to 4."
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
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024,
        description="Largest request body (HTTP) or message (gRPC) accepted, in bytes; larger ones get 413 / "
        "RESOURCE_EXHAUSTED, refused from Content-Length or while streaming, before the whole body is read.",
    )
    max_text_chars: int = Field(
        100_000, ge=1, description="Most characters in one text: a prompt, a chat message's content, a response."
    )
    max_messages: int = Field(256, ge=1, description="Most chat messages in one conversation prompt.")
    max_json_depth: int = Field(
        32, ge=8, le=500, description="Deepest nesting of arrays and objects accepted in a JSON request body. A "
        "body may also hold at most max_responses_per_request x (max_messages + 2) arrays and objects in all.",
    )
    request_timeout_seconds: float = Field(
        60.0, ge=0.0,
        description="Deadline of a request that sets none (HTTP header X-Request-Timeout, in seconds, or a gRPC "
        "deadline); work still queued when it passes is dropped and answered 504 / DEADLINE_EXCEEDED. 0: none.",
    )
    max_request_timeout_seconds: float = Field(
        300.0, gt=0.0, description="Longest deadline a request may ask for (X-Request-Timeout, gRPC deadline); "
        "a longer one is cut to this.",
    )
    admin_api_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated keys for the admin endpoint (POST /admin/reload), sent as "
        "'Authorization: Bearer <key>'; empty (and no file) closes it. Separate from api_keys.",
    )
    admin_api_keys_file: Path | None = Field(
        None, description="File with one admin key per line, added to admin_api_keys."
    )
    bundle_root: Path | None = Field(
        None, description="Directory POST /admin/reload may load bundles from (a relative 'bundle' is taken "
        "inside it; nothing outside it, symlinks included). Unset: only the configured bundle can be reloaded.",
    )
    expose_paths: bool = Field(
        False, description="Show filesystem paths (the bundle's directory, absolute paths in its manifest) in "
        "/v1/model and gRPC GetModelInfo; hidden by default.",
    )
    protect_health_and_metrics: bool = Field(
        False, description="With API keys set, also require one on /healthz, /readyz, /metrics and gRPC health "
        "(open by default, for probes and scrapers).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for TLS on both HTTP and gRPC; needs tls_key_file. Unset: plaintext."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    header_timeout_seconds: float = Field(
        10.0, gt=0.0, description="Time a client has to send a request's headers (HTTP) or open its connection "
        "(gRPC handshake); a connection that takes longer, or sends nothing, is closed.",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0.0, description="Time a client has to send a request's body once its headers arrived; then 408 "
        "and the connection is closed.",
    )
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0.0, description="How long an idle HTTP keep-alive connection stays open between requests."
    )
    max_connections: int = Field(
        1024, ge=1, description="Open HTTP connections at most; a request on one more gets 429 and its connection "
        "is closed.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024, ge=1, description="gRPC calls handled at once; more are refused with RESOURCE_EXHAUSTED."
    )
    grpc_max_connection_idle_seconds: float = Field(
        300.0, gt=0.0, description="A gRPC connection without calls for this long is closed (GOAWAY)."
    )
    grpc_max_connection_age_seconds: float = Field(
        3600.0, gt=0.0, description="A gRPC connection older than this is asked to reconnect (GOAWAY), so clients "
        "spread over new replicas; calls under way get shutdown_grace_seconds to finish.",
    )
    max_batch_tokens: int | None = Field(
        None, ge=1, description="Most padded tokens (longest row x rows) in one inference batch. Default by "
        "provider: 1024 on CPU, where larger batches run slower per token (measured in docs/benchmarks.md); "
        "4096 on CUDA.",
    )
    max_batch_size: int = Field(32, ge=1, description="Most rows in one inference batch.")
    max_padding_ratio: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Most padding a batch may carry, as a share of its padded tokens; a row that would exceed it "
        "waits for the next batch; a batch of two rows may carry three times as much (a row alone is the "
        "costliest shape per token). Default by provider: 0.02 on CPU, where padding is wasted compute "
        "(measured in docs/benchmarks.md); 0.2 on CUDA, where rows run in parallel.",
    )
    max_wait_ms: float = Field(
        0.0, ge=0.0, description="How long a batch may wait to fill once rows are waiting; 0 runs at once."
    )
    max_queue_rows: int = Field(
        1024, ge=1, description="Rows that may wait for inference, counted from admission (before tokenizing); "
        "beyond this, requests get 429 at once.",
    )
    max_queue_rows_per_client: int | None = Field(
        None, ge=1, description="Rows one client (one API key; one connection without keys) may have waiting; "
        "beyond this its requests get 429, so that one client cannot fill the queue for the others. Default: "
        "half of max_queue_rows, and at least max_responses_per_request (one full request).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="The event loop HTTP and gRPC run on. auto: uvloop when installed (it comes with "
        "uvicorn[standard]; less CPU per request, docs/performance-notes.md), else asyncio's own.",
    )

    verifiers_config: Path | None = Field(
        None, description="JSON file of rule-based verifiers and how their results combine with the model's reward "
        "(docs/prm.md); read with the bundle, at start-up and at every reload. Unset: no verifiers.",
    )

    @field_validator("verifiers_config", "tls_cert_file", "tls_key_file")
    @classmethod
    def _is_a_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} {'is not a file' if path.exists() else 'does not exist'}")
        return path

    @property
    def client_queue_rows(self) -> int:
        """max_queue_rows_per_client, or its default."""
        if self.max_queue_rows_per_client is not None:
            return min(self.max_queue_rows_per_client, self.max_queue_rows)
        return min(self.max_queue_rows, max(self.max_queue_rows // 2, self.max_responses_per_request))

    @model_validator(mode="after")
    def _settings_agree(self) -> Settings:
        """Settings that are valid alone but not together; each message names the settings."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.grpc_port == self.port != 0:
            raise ValueError(f"grpc_port ({self.grpc_port}) is the HTTP port too: give gRPC a port of its own, "
                             "or -1 to serve no gRPC")
        if self.request_timeout_seconds > self.max_request_timeout_seconds:
            raise ValueError(f"request_timeout_seconds ({self.request_timeout_seconds:g}) is longer than "
                             f"max_request_timeout_seconds ({self.max_request_timeout_seconds:g})")
        return self


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """`RMSERVE_*` variables that name no setting, which pydantic-settings ignores: a misspelt
    `RMSERVE_API_KEY` would otherwise start a server without authentication and say nothing.
    `RMSERVE_TEST_*` belong to the test suite."""
    return sorted(name for name in environ if name.startswith("RMSERVE_") and not name.startswith("RMSERVE_TEST_")
                  and name.removeprefix("RMSERVE_").lower() not in Settings.model_fields)
