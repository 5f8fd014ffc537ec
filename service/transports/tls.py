"""Optional TLS: one certificate and key (settings `tls_cert_file`, `tls_key_file`) for both HTTP (uvicorn)
and gRPC. Without them both servers speak plaintext, as behind a TLS-terminating proxy.

HTTP accepts TLS 1.2 and 1.3 only, and for TLS 1.2 only forward-secret AEAD suites (`HTTP_CIPHERS`; TLS
1.3's suites are all of that kind). gRPC's TLS is BoringSSL's, built into grpcio, whose server already
accepts TLS 1.2 and 1.3 only with ECDHE and AES-GCM suites; tests/integration/test_tls.py checks both ports.
"""

from __future__ import annotations

import ssl
from typing import Any

import grpc

from rmserve.service.settings import Settings

HTTP_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    if settings.tls_cert_file is None:
        return {}
    return {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file),
            "ssl_ciphers": HTTP_CIPHERS}


def check_tls_files(settings: Settings) -> None:
    """Refuse (ValueError, naming both settings) a certificate and key that do not load as one pair: a key
    of another certificate, a file that is not PEM, an encrypted key (there is no one to type its password)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file, password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"tls_cert_file {settings.tls_cert_file} and tls_key_file {settings.tls_key_file} are not a "
                         f"PEM certificate (chain) and its unencrypted private key: {e.strerror or e}") from None


def harden(context: ssl.SSLContext | None) -> None:
    """TLS 1.2 at least, with HTTP_CIPHERS, on the context uvicorn made (None: plaintext)."""
    if context is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(HTTP_CIPHERS)


def grpc_address(host: str, port: int) -> str:
    """host:port as gRPC parses it: an IPv6 address in brackets (gRPC reads `::1:50051` as another address)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class ListenError(Exception):
    """A port that cannot be bound: the start is refused with this message (exit status 2)."""


def add_grpc_port(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the gRPC port, with TLS when configured; returns the bound port. The server must not share
    ports (`grpc.so_reuseport` off, grpc/app.py): a port in use is refused here."""
    address = grpc_address(settings.host, settings.grpc_port)
    try:
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            return server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(),
                                                    settings.tls_cert_file.read_bytes())])
        return server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio says only "Failed to bind"
        raise ListenError(f"setting 'grpc_port': cannot listen on {address}: the port is in use (another server, "
                          "or this one's HTTP port), or the host is not an address of this machine") from None
