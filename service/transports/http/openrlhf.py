"""OpenRLHF's remote reward-model protocol, so that `--remote_rm_url http://HOST:PORT/get_reward` works
unchanged.

OpenRLHF posts {"query": [full prompt+response texts], "prompts": [...], "labels": [...]} and reads
{"rewards": [...], "scores": [...], "extra_logs": {name: [one float per query]}}. A query is split into the
prompt and the response the bundle scores: by its `prompts` entry when given (the query must start with
it), else after the last occurrence of the bundle's `response_prefix` (e.g. "\\n\\nAssistant:"); a query that
cannot be split is refused with 422 naming it (`query.3`). A bundle with its own chat template scores each
query whole, as the formatted conversation the policy produced (the template is not applied again).
Labels are the queries' references: with verifiers configured (service/core/verification.py) they are
checked and combined with the model's reward, `rewards` are the combined rewards and `extra_logs` carries
every component (`model_reward`, `combined_reward`, and per verifier `verifier/<name>` (its value) and
`verifier/<name>/passed` (1.0 or 0.0)); without verifiers they are accepted and ignored. Other fields
that OpenRLHF forks add are ignored.

`rewards` are raw rewards, or bundle-normalized ones with `?values=normalized` in the URL; `scores` are
always the model's raw rewards (OpenRLHF logs them and filters on them); `extra_logs` carries the
normalized rewards and the truncation flags. Any number of queries is accepted: they are scored in chunks of
max_responses_per_request, one after the other, on the shared batcher (splitting and chunking live in
fulltext.py, shared with the vLLM protocol).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import PREFORMATTED, InputSpec
from rmserve.service.core.scoring import Row
from rmserve.service.core.verifiers import CombinedReward
from rmserve.service.transports.http.common import ParsedBodyRoute, ScorerDep, timing_headers
from rmserve.service.transports.http.fulltext import formatted_row, score_in_chunks, split_at_response_prefix

# The API key is checked by the request guard before the body is read; the body is the one it parsed.
router = APIRouter(tags=["trainers"], route_class=ParsedBodyRoute)


class GetRewardRequest(BaseModel):
    # OpenRLHF forks send more (datasources, token ids, metadata); none of it changes a reward.
    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(min_length=1, description="Full texts: prompt followed by response, as the policy produced them.")
    prompts: list[str] | None = Field(None, description="The prompt each query starts with; splits it into prompt + response.")
    labels: list[Any] | None = Field(None, description="Reference answers, one per query: what the server's verifiers "
                                     "check against; ignored without verifiers.")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="Per query: raw reward, or normalized with ?values=normalized.")
    scores: list[float] = Field(description="Per query: raw reward.")
    extra_logs: dict[str, list[float]] = Field(description="Per-query figures OpenRLHF logs: normalized_rewards, "
                                               "truncated (1.0 when the row was cut to max_length); with verifiers "
                                               "also model_reward, combined_reward, verifier/<name> and "
                                               "verifier/<name>/passed.")


def split_queries(queries: list[str], prompts: list[str] | None, spec: InputSpec) -> list[Row]:
    """One scoring row per query, its field named `query.i` for error messages. A bundle with a chat
    template scores each query as the formatted conversation it is (rendering it again would wrap the
    whole text in a user turn); other bundles score the prompt and the response apart, as /score does."""
    rows = []
    if prompts is not None:
        if len(prompts) != len(queries):
            raise ScoringError(ErrorKind.VALIDATION, f"{len(prompts)} prompts for {len(queries)} queries", "prompts")
        for i, (query, prompt) in enumerate(zip(queries, prompts)):
            if not query.startswith(prompt):
                raise ScoringError(ErrorKind.VALIDATION, f"the query does not start with prompts.{i}, so it "
                                   "cannot be split into prompt and response", f"query.{i}")
            rows.append(Row(PREFORMATTED, query, f"query.{i}") if spec.chat_template is not None
                        else Row(prompt, query[len(prompt):], f"query.{i}"))
        return rows
    if spec.chat_template is not None:
        return [formatted_row(query, spec, f"query.{i}", "") for i, query in enumerate(queries)]
    advice = "send 'prompts'"
    return [split_at_response_prefix(query, spec, f"query.{i}", advice) for i, query in enumerate(queries)]


@router.post("/get_reward", response_model=GetRewardResponse)
async def get_reward(body: GetRewardRequest, scorer: ScorerDep, request: Request, response: Response,
                     values: str = "raw") -> GetRewardResponse:
    if values not in ("raw", "normalized"):
        raise ScoringError(ErrorKind.VALIDATION, f"values must be 'raw' or 'normalized', not {values!r}", "values")
    rows = split_queries(body.query, body.prompts, scorer.manifest.input)
    if body.labels is not None and scorer.verifiers is not None and len(body.labels) != len(rows):
        raise ScoringError(ErrorKind.VALIDATION, f"{len(body.labels)} labels for {len(rows)} queries", "labels")
    checked = await scorer.check(rows, body.labels)
    scores = await score_in_chunks(scorer, rows, request)
    timing_headers(response, scores)
    summary = scorer.summarize(scores, values, checked=checked)  # type: ignore[arg-type]
    extra_logs = {"normalized_rewards": summary.normalized.tolist(), "truncated": [float(t) for t in scores.truncated]}
    if summary.verification is not None:
        extra_logs.update(verifier_logs(summary.verification))
    return GetRewardResponse(rewards=summary.values.tolist(), scores=summary.raw.tolist(), extra_logs=extra_logs)


def verifier_logs(verification: list[CombinedReward]) -> dict[str, list[float]]:
    """Every component of the combined rewards as per-query floats, as OpenRLHF's extra_logs holds them."""
    logs: dict[str, list[float]] = {"model_reward": [float(v.model or 0.0) for v in verification],
                                    "combined_reward": [v.combined for v in verification]}
    for i, name in enumerate(r.name for r in verification[0].verifiers):
        logs[f"verifier/{name}"] = [v.verifiers[i].value for v in verification]
        logs[f"verifier/{name}/passed"] = [float(v.verifiers[i].passed) for v in verification]
    return logs
