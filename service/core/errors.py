"""The one error type of the scoring core, and its kinds.

Transports map `ErrorKind` to their own status codes with one table each (HTTP: `HTTP_STATUS` in
service/transports/http/common.py; gRPC: `GRPC_STATUS` in service/transports/grpc/app.py). An answer never
carries the text of an unexpected exception (ONNX Runtime's, an assertion's): `internal_error` logs it
under a reference and gives the client that reference instead.
"""

from __future__ import annotations

import logging
import uuid
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


def internal_error(logger: logging.Logger, what: str) -> ScoringError:
    """An INTERNAL error for a client, saying `what` failed but not why: the exception being handled goes
    to the log with a reference that the answer carries. Call it in an `except` block."""
    reference = uuid.uuid4().hex[:12]
    logger.exception("%s (reference %s)", what, reference)
    return ScoringError(ErrorKind.INTERNAL, f"{what}; the server log has the details (reference {reference})")
