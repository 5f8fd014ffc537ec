"""The one error type of the scoring core, and its kinds.

Transports map `ErrorKind` to their own status codes with one table each (HTTP: `HTTP_STATUS` in
service/transports/http/common.py; gRPC: `GRPC_STATUS` in service/transports/grpc/app.py).
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    VALIDATION = "validation"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


class ScoringError(Exception):
    """A request the core could not serve; `field` names the offending input when there is one."""

    def __init__(self, kind: ErrorKind, message: str, field: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind.value, "message": self.message, "field": self.field}
