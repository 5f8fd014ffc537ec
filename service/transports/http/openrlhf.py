"""OpenRLHF's remote reward-model protocol, so that `--remote_rm_url http://HOST:PORT/get_reward` works
unchanged.

OpenRLHF posts {"query": [full prompt+response texts], "prompts": [...], "labels": [...]} and reads
{"rewards": [...], "scores": [...], "extra_logs": {name: [one float per query]}}. A query is split into the
prompt and the response the bundle scores: by its `prompts` entry when given (the query must start with
it), else after the last occurrence of the bundle's `response_prefix` (e.g. "\\n\\nAssistant:"); a query that
cannot be split is refused with 422 naming it (`query.3`). Labels are accepted and ignored (a reward model
does not read references); other fields that OpenRLHF forks add are ignored too.

`rewards` are raw rewards, or bundle-normalized ones with `?values=normalized` in the URL; `scores` are
always raw (OpenRLHF logs them and filters on them); `extra_logs` carries the normalized rewards and the
truncation flags. Any number of queries is accepted: they are scored in chunks of
max_responses_per_request, one after the other, on the shared batcher.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import InputSpec
from rmserve.service.core.scoring import Row, Scores
from rmserve.service.transports.http.common import ScorerDep, authorized, timing_headers, unless_client_leaves

router = APIRouter(tags=["trainers"], dependencies=[Depends(authorized)])


class GetRewardRequest(BaseModel):
    # OpenRLHF forks send more (datasources, token ids, metadata); none of it changes a reward.
    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(min_length=1, description="Full texts: prompt followed by response, as the policy produced them.")
    prompts: list[str] | None = Field(None, description="The prompt each query starts with; splits it into prompt + response.")
    labels: list[Any] | None = Field(None, description="Reference answers; accepted and ignored.")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="Per query: raw reward, or normalized with ?values=normalized.")
    scores: list[float] = Field(description="Per query: raw reward.")
    extra_logs: dict[str, list[float]] = Field(description="Per-query figures OpenRLHF logs: normalized_rewards, "
                                               "truncated (1.0 when the row was cut to max_length).")


def split_queries(queries: list[str], prompts: list[str] | None, spec: InputSpec) -> list[Row]:
    """One scoring row per query, its field named `query.i` for error messages."""
    rows = []
    if prompts is not None:
        if len(prompts) != len(queries):
            raise ScoringError(ErrorKind.VALIDATION, f"{len(prompts)} prompts for {len(queries)} queries", "prompts")
        for i, (query, prompt) in enumerate(zip(queries, prompts)):
            if not query.startswith(prompt):
                raise ScoringError(ErrorKind.VALIDATION, f"the query does not start with prompts.{i}, so it "
                                   "cannot be split into prompt and response", f"query.{i}")
            rows.append(Row(prompt, query[len(prompt):], f"query.{i}"))
        return rows
    marker = spec.response_prefix
    for i, query in enumerate(queries):
        cut = query.rfind(marker) if marker else -1
        if cut < 0:
            raise ScoringError(ErrorKind.VALIDATION, f"cannot split the query into prompt and response: it has no "
                               f"{marker!r} (the bundle's response_prefix); send 'prompts'", f"query.{i}")
        end = cut + len(marker)
        rows.append(Row(query[:end], query[end:], f"query.{i}"))
    return rows


@router.post("/get_reward", response_model=GetRewardResponse)
async def get_reward(body: GetRewardRequest, scorer: ScorerDep, request: Request, response: Response,
                     values: str = "raw") -> GetRewardResponse:
    if values not in ("raw", "normalized"):
        raise ScoringError(ErrorKind.VALIDATION, f"values must be 'raw' or 'normalized', not {values!r}", "values")
    rows = split_queries(body.query, body.prompts, scorer.manifest.input)
    limit = scorer.settings.max_responses_per_request
    parts: list[Scores] = []
    for start in range(0, len(rows), limit):
        parts.append(await unless_client_leaves(request, scorer.score(rows[start:start + limit])))
    scores = Scores(raw=np.concatenate([p.raw for p in parts]), truncated=[t for p in parts for t in p.truncated],
                    tokenize_seconds=sum(p.tokenize_seconds for p in parts),
                    queue_seconds=max(p.queue_seconds for p in parts),
                    inference_seconds=sum(p.inference_seconds for p in parts))
    timing_headers(response, scores)
    summary = scorer.summarize(scores, values)  # type: ignore[arg-type]
    return GetRewardResponse(
        rewards=summary.values.tolist(), scores=summary.raw.tolist(),
        extra_logs={"normalized_rewards": summary.normalized.tolist(),
                    "truncated": [float(t) for t in scores.truncated]},
    )
