"""Optional TLS: one certificate and key (settings `tls_cert_file`, `tls_key_file`) for both HTTP
(uvicorn) and gRPC. Without them both servers speak plaintext, as behind a TLS-terminating proxy."""

from __future__ import annotations

from typing import Any

import grpc

from rmserve.service.settings import Settings


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    if settings.tls_cert_file is None:
        return {}
    return {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}


def add_grpc_port(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the gRPC port, with TLS when configured; returns the bound port."""
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return server.add_insecure_port(address)
    credentials = grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])
    return server.add_secure_port(address, credentials)
