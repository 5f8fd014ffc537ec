"""Optional API-key authentication, shared by HTTP (`Authorization: Bearer <key>`) and gRPC (metadata
`authorization: Bearer <key>`). Keys come from settings (`api_keys`, comma-separated) and/or a file (one
key per line); with none configured, authentication is off. The scheme is matched in any case, as HTTP
says; keys are compared in constant time. The same class holds the admin keys (`admin_api_keys`,
`admin_api_keys_file`), and `exposed` tells whether a bind address needs keys at all.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from pathlib import Path

from rmserve.service.core.errors import ErrorKind, ScoringError


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys if k]

    @classmethod
    def load(cls, inline: str, file: Path | None, setting: str = "api_keys_file") -> ApiKeys:
        keys = [k.strip() for k in inline.split(",")]
        if file is not None:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError as e:
                raise ValueError(f"{setting} {file}: {e.strerror}") from e
            from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not from_file:  # given but empty (a secret mounted before it was filled): never "no keys, open"
                raise ValueError(f"{setting} {file} holds no key (one a line; # starts a comment)")
            keys += from_file
        return cls([k for k in keys if k])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str:
        """Raise UNAUTHENTICATED unless `authorization` is "Bearer <a configured key>"; returns the name of
        the key that matched ("key-N", for per-client accounting; "" when authentication is off)."""
        if not self._keys:
            return ""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            raise ScoringError(ErrorKind.UNAUTHENTICATED, "missing API key: send 'Authorization: Bearer <key>'",
                               "authorization")
        given = token.strip().encode()
        # Compare against every key so the time taken does not tell which one matched.
        matched = -1
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(given, key):
                matched = index
        if matched < 0:
            raise ScoringError(ErrorKind.UNAUTHENTICATED, "invalid API key", "authorization")
        return f"key-{matched}"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only: every address it resolves to is a
    loopback one. The empty host and 0.0.0.0 / :: listen on every interface."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
