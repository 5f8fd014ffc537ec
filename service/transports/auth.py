"""Optional API-key authentication, shared by HTTP (`Authorization: Bearer <key>`) and gRPC (metadata
`authorization: Bearer <key>`). Keys come from settings (`api_keys`, comma-separated) and/or a file (one
key per line); with none configured, authentication is off. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from rmserve.service.core.errors import ErrorKind, ScoringError


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys if k]

    @classmethod
    def load(cls, inline: str, file: Path | None) -> ApiKeys:
        keys = [k.strip() for k in inline.split(",")]
        if file is not None:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError as e:
                raise ValueError(f"api_keys_file {file}: {e.strerror}") from e
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls([k for k in keys if k])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise UNAUTHENTICATED unless `authorization` is "Bearer <a configured key>"."""
        if not self._keys:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise ScoringError(ErrorKind.UNAUTHENTICATED, "missing API key: send 'Authorization: Bearer <key>'",
                               "authorization")
        token = authorization.removeprefix("Bearer ").strip().encode()
        # Compare against every key so the time taken does not tell which prefix matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        if not matched:
            raise ScoringError(ErrorKind.UNAUTHENTICATED, "invalid API key", "authorization")
