"""The core HTTP routes: POST /score and /compare (scoring, behind the API key), and /healthz, /readyz,
/metrics and /v1/model (operations). Thin adapters: a request model in, `Scorer` calls, a response model
out; errors are raised as `ScoringError` and mapped by the app's handlers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rmserve.service.core.bundle import public_manifest
from rmserve.service.core.scoring import Row
from rmserve.service.transports.http.common import (
    MetricsDep,
    ParsedBodyRoute,
    ScorerDep,
    get_state,
    model_response,
    timings,
    unless_client_leaves,
)
from rmserve.service.transports.schemas import (
    CompareRequest,
    CompareResponse,
    GroupSummary,
    ModelRef,
    ScoreRequest,
    ScoreResponse,
)

# The JSON body is the one the request guard parsed; the answer is serialized once (model_response).
# The API key is checked by the request guard (guard.py) from the head, before any of the body is read.
scoring_router = APIRouter(tags=["scoring"], route_class=ParsedBodyRoute)


@scoring_router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, scorer: ScorerDep, request: Request) -> Response:
    rows = [Row(*row) for row in body.rows()]
    checked = await scorer.check(rows, body.references(), body.verifiers)  # refused before it costs the engine
    scores = await unless_client_leaves(request, scorer.score(rows, aggregate=body.aggregate))
    summary = scorer.summarize(scores, body.values, body.grouped, checked)
    return model_response(ScoreResponse.model_construct(
        model=ModelRef.of(scorer.manifest),
        rewards=summary.raw.tolist(),
        normalized_rewards=summary.normalized.tolist(),
        truncated=scores.truncated,
        values=summary.values.tolist(),
        group=GroupSummary.of(summary.group),
        **ScoreResponse.extras(scores, summary),
    ), timings(scores))


@scoring_router.post("/compare", response_model=CompareResponse)
async def compare(body: CompareRequest, scorer: ScorerDep, request: Request) -> Response:
    rows = [Row(body.prompt, body.response_a, "response_a"), Row(body.prompt, body.response_b, "response_b")]
    scores = await unless_client_leaves(request, scorer.score(rows))
    reward_a, reward_b = (float(x) for x in scores.raw)
    normalized = scorer.normalize(scores.raw)
    return model_response(CompareResponse.model_construct(
        model=ModelRef.of(scorer.manifest), reward_a=reward_a, reward_b=reward_b,
        normalized_reward_a=float(normalized[0]), normalized_reward_b=float(normalized[1]),
        probability_a=scorer.probability_a(reward_a, reward_b),
    ), timings(scores))


ops_router = APIRouter(tags=["operations"])


@ops_router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@ops_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ready = get_state(request).ready
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})


@ops_router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@ops_router.get("/v1/model")
async def model_info(scorer: ScorerDep, request: Request) -> dict[str, Any]:
    """The bundle served: its manifest (filesystem paths hidden unless expose_paths) and the provider."""
    get_state(request).metrics.requests.labels("/v1/model", "http", "ok").inc()  # refusals: guard and handlers
    expose = scorer.settings.expose_paths
    info: dict[str, Any] = {"provider": scorer.engine.provider,
                            "max_responses_per_request": scorer.settings.max_responses_per_request,
                            "manifest": public_manifest(scorer.manifest, expose)}
    if expose:
        info["bundle_path"] = str(scorer.bundle.path)
    return info
