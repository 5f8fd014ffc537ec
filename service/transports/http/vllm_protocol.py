"""The bodies of vLLM's pooling API as rmserve speaks it: requests and answers of `POST /classify` and
`POST /pooling`, the `GET /v1/models` list, and vLLM's error body.

Shapes read from vLLM 0.33.0 (the PyPI release): `vllm/entrypoints/pooling/base/protocol.py` (the request
fields every pooling request shares), `pooling/classify/protocol.py` (ClassificationData,
ClassificationResponse), `pooling/pooling/protocol.py` (PoolingResponseData, PoolingResponse),
`serve/engine/protocol.py` (UsageInfo, ModelCard, ModelList, ErrorInfo, ErrorResponse) and
`serve/exception_handling/` (which status and `type` each kind of error gets). Written for rmserve, not
copied: the fields and their meaning are vLLM's, the checks and words are ours.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.core.errors import ErrorKind
from rmserve.service.core.inputs import ChatMessage

VLLM_VERSION = "0.33.0"
# The routes that answer in vLLM's shapes (vllm.py), and the status and error `type` of each kind of refusal.
# Overload and unavailability are 503 with Retry-After, not 429: verl retries 5xx answers and gives up at
# once on a 4xx.
VLLM_PATHS = frozenset({"/classify", "/v1/classify", "/pooling", "/v1/models"})
VLLM_STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.VALIDATION: (422, "UnprocessableEntityError"),
    ErrorKind.OVERLOADED: (503, "ServiceUnavailableError"),
    ErrorKind.UNAVAILABLE: (503, "ServiceUnavailableError"),
    ErrorKind.TIMEOUT: (504, "TimeoutError"),
    ErrorKind.UNAUTHENTICATED: (401, "AuthenticationError"),
    ErrorKind.INTERNAL: (500, "InternalServerError"),
}


class PoolingRequest(BaseModel):
    """One body for /classify and /pooling, text (`input`) or chat (`messages`). Like vLLM, fields this
    server does not know are accepted and ignored; those it knows but cannot honour are refused by name."""

    # strict: a JSON "true" string or 1 is not a boolean here, as the schema says.
    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = Field(None, description="Accepted whatever it names: rmserve serves one bundle, and the "
                              "answer's `model` says which.")
    input: str | list[str] | list[int] | list[list[int]] | None = Field(
        None, description="A whole formatted conversation (prompt and response in one text), or a list of them. "
        "Token ids are refused: the bundle's tokenizer makes them.")
    messages: list[ChatMessage] | None = Field(
        None, description="A chat rendered by the bundle's template: the last message, the assistant's, is the "
        "response scored; the ones before it are the prompt.")
    use_activation: bool | None = Field(
        None, description="false: the raw reward. true (and the default, as in vLLM): the calibrated sigmoid "
        "1 / (1 + exp(-(raw - mean) / T)) with the bundle's reference mean and calibration temperature T.")
    activation: bool | None = Field(None, description="The older name of use_activation (verl sends it).")
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="-1 or the bundle's max_length: truncate to max_length (rmserve always does). "
        "Other values are refused.")
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="left only: rows are cut from the left, keeping the end of the response.")
    add_special_tokens: bool | None = Field(
        None, description="The bundle places special tokens as in training: true for `input` (false only where "
        "its tokenizer adds none), false for `messages`.")
    request_id: str | None = Field(None, max_length=256, description="Echoed in the answer's id.")
    user: str | None = None
    # /pooling only (vLLM's PoolingCompletionRequest).
    task: str | None = Field(None, description="/pooling: classify (or nothing); per-token tasks are refused.")
    encoding_format: str | None = Field(None, description="/pooling: float (or nothing).")


class UsageInfo(BaseModel):
    prompt_tokens: int = Field(description="Tokens the model read, over every input.")
    total_tokens: int = Field(description="The same: a pooling request generates nothing.")
    completion_tokens: int = 0


class ClassificationData(BaseModel):
    index: int = Field(description="Position of the input in the request.")
    label: str | None = Field(description="Always \"reward\": a reward model has one output.")
    probs: list[float] = Field(description="One value: the raw reward, or its calibrated sigmoid with activation on.")
    num_classes: int = Field(description="1.")


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str = Field(description="The bundle id of the bundle that scored.")
    data: list[ClassificationData]
    usage: UsageInfo


class PoolingResponseData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[float] = Field(description="One value: the raw reward, or its calibrated sigmoid with activation on.")


class PoolingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class ModelCard(BaseModel):
    id: str = Field(description="The bundle id.")
    object: str = "model"
    created: int = Field(description="When the bundle was exported (Unix seconds).")
    owned_by: str = "rmserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = Field(None, description="The bundle's max_length.")
    permission: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str = Field(description="BadRequestError, Bad Request (a malformed body), UnprocessableEntityError, "
                      "AuthenticationError, ServiceUnavailableError, TimeoutError or InternalServerError.")
    param: str | None = Field(description="The offending field, e.g. input.2, messages.0.role, truncation_side.")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class VllmError(Exception):
    """A request refused in vLLM's error shape; `outcome` is the label it is counted under."""

    def __init__(self, status: int, type_: str, message: str, param: str | None, outcome: str = "invalid"):
        super().__init__(message)
        self.status, self.type, self.message, self.param, self.outcome = status, type_, message, param, outcome
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                             code=self.status)).model_dump()


def bad_request(message: str, param: str | None) -> VllmError:
    """400, as vLLM answers a request parameter it rejects."""
    return VllmError(400, "BadRequestError", message, param)


# pydantic names union members and validators in an error's location; they are no field of the request.
_NOT_A_FIELD = re.compile(r"[\[\](){}]|^(str|int|bool|list|dict|none|union|function-\w+)$")


def malformed(errors: Sequence[Any]) -> VllmError:
    """400 for a body that does not fit the request schema, naming the first offending field (vLLM's
    validation handler answers 400 with type "Bad Request")."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    parts = [str(p) for p in first.get("loc", ()) if not _NOT_A_FIELD.search(str(p))]
    param = ".".join(parts[1:] if parts[:1] == ["body"] and len(parts) > 1 else parts) or None
    if first.get("type") == "json_invalid":
        param, message = "body", f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    else:
        message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
    return VllmError(400, "Bad Request", message, param)


def new_id(prefix: str, request_id: str | None) -> str:
    return f"{prefix}-{request_id}" if request_id else f"{prefix}-{uuid.uuid4().hex}"
