"""vLLM's pooling API, so that clients written for a reward model served by vLLM work against rmserve
unchanged: verl's reward loop (`POST /classify` with {"model", "input", "activation": false}, reading
`data[-1]["probs"][-1]`), and SGLang's and LMDeploy's clients, which follow vLLM's shapes.

Routes: `POST /classify` (also `/v1/classify`, SGLang's path), `POST /pooling` and `GET /v1/models`, in the
shapes of vLLM 0.33.0 (vllm_protocol.py names the files read). Thin adapters over the scoring core.

- **Inputs.** `input` is a whole formatted conversation (or a list of them), scored as one sequence where
  the bundle joins prompt and response by concatenation, split after the bundle's response prefix (as
  /get_reward splits queries) where it uses its tokenizer's pair template: `text_rows`. `messages` is a
  chat rendered by the bundle's template; its last message, the assistant's, is the response.
- **Values.** With activation off (`use_activation` or the older `activation`: false) a value is the raw
  reward, equal to /score's. With activation on (vLLM's default when neither is sent) it is the calibrated
  sigmoid 1 / (1 + exp(-(raw - mean) / T)): the probability, under the bundle's calibration temperature T,
  that the response is preferred over one scoring the reference set's mean. A process reward model bundle's
  reward, the aggregate of its step rewards, is a probability already: it is the value either way.
- **Options the core fixes.** Rows are always cut to the bundle's max_length from the left, and carry the
  special tokens the bundle was trained with: `truncate_prompt_tokens` (-1 or max_length),
  `truncation_side` (left) and `add_special_tokens` are accepted at those values and refused by name
  otherwise, as are chat-template overrides and per-token pooling tasks.
- **Errors** have vLLM's shape {"error": {message, type, param, code}}. Overload and unavailability are 503
  with Retry-After, not 429: verl retries 5xx answers and gives up at once on a 4xx. The request guard's
  refusals (body too large, malformed JSON) come before this router, in rmserve's shape.
- **Metrics.** The route class below counts these routes in rmserve_requests_total and times them; they
  are not among the app's SCORING_PATHS, whose early 429 would end a verl run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from rmserve.service.core.errors import ErrorKind, ScoringError, internal_error
from rmserve.service.core.inputs import ChatMessage
from rmserve.service.core.limits import check_rows
from rmserve.service.core.scoring import Row, Scorer, Scores
from rmserve.service.transports.http.common import (
    ClientGone,
    ParsedBodyRoute,
    ScorerDep,
    get_state,
    timing_headers,
)
from rmserve.service.transports.http.fulltext import formatted_row, score_in_chunks
from rmserve.service.transports.http.openapi import ErrorBody
from rmserve.service.transports.http.vllm_protocol import (
    VLLM_STATUS,
    ClassificationData,
    ClassificationResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
    UsageInfo,
    VllmError,
    bad_request,
    malformed,
    new_id,
)

log = logging.getLogger("rmserve.vllm")


def _as_vllm(error: Exception) -> VllmError:
    """Any refusal of these routes, in vLLM's shape."""
    if isinstance(error, VllmError):
        return error
    if isinstance(error, RequestValidationError):
        return malformed(error.errors())
    assert isinstance(error, ScoringError)
    status, kind = VLLM_STATUS[error.kind]
    refusal = VllmError(status, kind, error.message, error.field, outcome=error.kind.value)
    if error.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE):
        refusal.headers["Retry-After"] = "1"
    return refusal


class VllmRoute(ParsedBodyRoute):
    """Answers every failure of these routes in vLLM's error shape (FastAPI's body validation included),
    and counts and times each request as the app does for its own scoring routes. The body is the one the
    guard parsed (ParsedBodyRoute)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_vllm(request: Request) -> Response:
            began = time.perf_counter()
            metrics = get_state(request).metrics
            path = request.url.path
            in_flight = metrics.in_flight.labels("http")
            in_flight.inc()
            outcome: str | None = "internal"  # until known: an unexpected exception is a 500
            try:
                try:
                    response = await handle(request)
                    outcome = "ok"
                except ClientGone:
                    outcome = None  # the app's handler answers and counts it
                    raise
                except Exception as e:  # every failure in vLLM's shape; one that is no refusal is a bug: logged, 500
                    known = isinstance(e, (RequestValidationError, VllmError, ScoringError))
                    refusal = _as_vllm(e if known else internal_error(log, f"{request.method} {path} failed"))
                    outcome = refusal.outcome
                    response = JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers)
                response.headers["X-Total-Time-Ms"] = f"{(time.perf_counter() - began) * 1000:.2f}"
                return response
            finally:
                in_flight.dec()
                metrics.request_duration.labels(path, "http").observe(time.perf_counter() - began)
                if outcome is not None:
                    metrics.requests.labels(path, "http", outcome).inc()

        return handle_vllm


router = APIRouter(tags=["vLLM pooling API"], route_class=VllmRoute)  # keyed by the request guard

_ERRORS = {
    400: {"model": ErrorResponse, "description": "Malformed request, or an option the bundle cannot honour; "
          "`param` names it."},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    413: {"model": ErrorBody, "description": "Request body larger than max_request_bytes (rmserve's error shape)."},
    415: {"model": ErrorBody, "description": "A body that is not JSON (Content-Type) or is compressed "
          "(Content-Encoding), refused by the request guard in rmserve's error shape."},
    # The request guard refuses a body that is not strict JSON before this router, in rmserve's shape.
    422: {"description": "An input the bundle cannot score (e.g. a text it cannot split into prompt and response; "
          "`param` names it), or a body that is not strict JSON (rmserve's error shape, from the request guard).",
          "content": {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/ErrorResponse"},
                                                                 {"$ref": "#/components/schemas/ErrorBody"}]}}}},
    503: {"model": ErrorResponse, "description": "Queue full, model not loaded yet, or shutting down; retry "
          "after Retry-After (another replica if there is one)."},
    504: {"model": ErrorResponse, "description": "The request's deadline passed before it was scored."},
}

# vLLM request fields rmserve honours at one value only: (that value, why).
_FIXED = {
    "chat_template": (None, "chats are rendered by the bundle's own template"),
    "chat_template_kwargs": (None, "chats are rendered by the bundle's own template"),
    "add_generation_prompt": (False, "the last message is the response being scored"),
    "continue_final_message": (False, "the last message is the response being scored"),
    "mm_processor_kwargs": (None, "rmserve scores text"),
    "dimensions": (None, "a reward is one number"),
    "priority": (0, "requests are served in arrival order"),
}


def text_rows(texts: Sequence[str], fields: Sequence[str], scorer: Scorer) -> list[Row]:
    """The scoring rows of `input` texts, each a whole formatted conversation, named by `fields`
    (fulltext.formatted_row: as is for template and concatenating bundles, split for pair templates)."""
    check_rows([Row("", text, field) for text, field in zip(texts, fields)], scorer.settings)  # whole-text limits
    spec = scorer.manifest.input
    return [formatted_row(text, spec, field, "send `messages` instead") for text, field in zip(texts, fields)]


def chat_row(messages: Sequence[ChatMessage]) -> Row:
    """The row of a chat: the messages before the last are the prompt, the last (the assistant's) the response."""
    last = len(messages) - 1
    if last < 1:
        raise bad_request("messages needs the conversation and, last, the assistant's response to score: "
                          "at least 2 messages", "messages")
    if messages[last].role != "assistant":
        raise bad_request(f"the last message is the response to score, so its role must be 'assistant', not "
                          f"{messages[last].role!r}", f"messages.{last}.role")
    return Row(list(messages[:last]), messages[last].content, f"messages.{last}.content")


def _rows(body: PoolingRequest, scorer: Scorer) -> list[Row]:
    if (body.input is None) == (body.messages is None):
        raise bad_request("send exactly one of `input` (text) or `messages` (a chat)", "input")
    if body.messages is not None:
        return [chat_row(body.messages)]
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise bad_request("input is an empty list", "input")
    if not all(isinstance(text, str) for text in texts):
        raise bad_request("token ids are not accepted: the bundle's tokenizer makes them; send text", "input")
    fields = ["input"] if isinstance(body.input, str) else [f"input.{i}" for i in range(len(texts))]
    return text_rows(texts, fields, scorer)  # type: ignore[arg-type]


def _check_options(body: PoolingRequest, scorer: Scorer, endpoint: Literal["classify", "pooling"]) -> None:
    """Refuse, by name, every option whose value the core cannot honour."""
    extra = body.model_extra or {}
    if "normalize" in extra:
        raise bad_request("`normalize` is no longer a pooling parameter (vLLM removed it): send use_activation",
                          "normalize")
    for name, (only, why) in _FIXED.items():
        if extra.get(name, only) != only:
            raise bad_request(f"{name} must be {only!r} here: {why}", name)
    if endpoint == "pooling":
        if body.task not in (None, "classify"):
            raise bad_request(f"task {body.task!r} is not served: a reward bundle answers one value per input "
                              "(task 'classify')", "task")
        if body.encoding_format not in (None, "float"):
            raise bad_request("encoding_format must be 'float'", "encoding_format")
    max_length = scorer.manifest.input.max_length
    cut = body.truncate_prompt_tokens
    if cut is not None and cut not in (-1, max_length):
        why = "cannot be greater than" if cut > max_length else "rmserve cuts rows to"
        raise bad_request(f"truncate_prompt_tokens={cut}: {why} the bundle's max_length ({max_length}); send -1, "
                          f"{max_length} or nothing", "truncate_prompt_tokens")
    if body.truncation_side == "right":
        raise bad_request("truncation_side must be 'left': rows are cut from the left, keeping the end of the "
                          "response, which the reward depends on", "truncation_side")
    special = body.add_special_tokens
    if body.messages is not None and special:
        raise bad_request("add_special_tokens must be false with messages: the bundle's template and tokenizer "
                          "place the special tokens, as in training", "add_special_tokens")
    if body.messages is None and special is False and scorer.encoder.special_tokens:
        raise bad_request(f"add_special_tokens must be true: the bundle adds its tokenizer's "
                          f"{scorer.encoder.special_tokens} special tokens per row, as in training", "add_special_tokens")


def _activation(body: PoolingRequest) -> bool:
    if body.use_activation is not None and body.activation is not None and body.use_activation != body.activation:
        raise bad_request("use_activation and activation disagree; send one of them", "activation")
    chosen = body.use_activation if body.use_activation is not None else body.activation
    return True if chosen is None else chosen  # vLLM's default: activation on


def _token_counts(scorer: Scorer, rows: Sequence[Row]) -> list[int]:
    # The core does not return its rows' token counts yet, so `usage` tokenizes them again (off the loop).
    return [len(e.ids) for e in scorer.encoder.encode([(row.prompt, row.response) for row in rows])]


async def _score(body: PoolingRequest, scorer: Scorer, request: Request,
                 endpoint: Literal["classify", "pooling"]) -> tuple[Scores, list[float], UsageInfo]:
    _check_options(body, scorer, endpoint)
    activation = _activation(body)
    rows = _rows(body, scorer)
    try:
        scores = await score_in_chunks(scorer, rows, request)
    except ScoringError as e:
        if body.messages is not None and e.field and e.field.startswith("prompt"):
            e.field = "messages" + e.field.removeprefix("prompt")  # the core names the prompt; here it is messages
        raise
    tokens = sum(await asyncio.to_thread(_token_counts, scorer, rows))
    if activation and scorer.steps is None:  # a PRM's reward is already a probability: no second activation
        mean = scorer.manifest.normalization.mean
        values = [scorer.probability_a(float(r), mean) for r in scores.raw]
    else:
        values = np.asarray(scores.raw).tolist()
    return scores, values, UsageInfo(prompt_tokens=tokens, total_tokens=tokens)


def _answer(payload: Any, scores: Scores) -> JSONResponse:
    response = JSONResponse(payload.model_dump())
    timing_headers(response, scores)
    return response


@router.post("/classify", response_model=ClassificationResponse, responses=_ERRORS,  # type: ignore[arg-type]
             summary="vLLM's /classify: one reward per input")
async def classify(body: PoolingRequest, scorer: ScorerDep, request: Request) -> JSONResponse:
    scores, values, usage = await _score(body, scorer, request, "classify")
    data = [ClassificationData(index=i, label="reward", probs=[v], num_classes=1) for i, v in enumerate(values)]
    return _answer(ClassificationResponse(id=new_id("classify", body.request_id), created=int(time.time()),
                                          model=scorer.manifest.bundle_id, data=data, usage=usage), scores)


router.add_api_route("/v1/classify", classify, methods=["POST"], response_model=ClassificationResponse,
                     responses=_ERRORS, summary="SGLang's path for vLLM's /classify")  # type: ignore[arg-type]


@router.post("/pooling", response_model=PoolingResponse, responses=_ERRORS,  # type: ignore[arg-type]
             summary="vLLM's /pooling: the pooled output (one reward) per input")
async def pooling(body: PoolingRequest, scorer: ScorerDep, request: Request) -> JSONResponse:
    scores, values, usage = await _score(body, scorer, request, "pooling")
    data = [PoolingResponseData(index=i, data=[v]) for i, v in enumerate(values)]
    return _answer(PoolingResponse(id=new_id("pool", body.request_id), created=int(time.time()),
                                   model=scorer.manifest.bundle_id, data=data, usage=usage), scores)


@router.get("/v1/models", response_model=ModelList, responses={k: _ERRORS[k] for k in (401, 503)},  # type: ignore[arg-type]
            summary="The served bundle, as OpenAI-style clients list models")
async def list_models(scorer: ScorerDep) -> JSONResponse:
    manifest = scorer.manifest
    try:
        created = int(dt.datetime.fromisoformat(manifest.created_at).timestamp())
    except ValueError:
        created = 0
    card = ModelCard(id=manifest.bundle_id, created=created, max_model_len=manifest.input.max_length)
    return JSONResponse(ModelList(data=[card]).model_dump())
