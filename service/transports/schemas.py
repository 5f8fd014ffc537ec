"""HTTP request and response bodies. Field descriptions are the API documentation (see /docs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rmserve.group_stats import GROUP_EPS, GroupStats, ValueKind
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import ChatMessage
from rmserve.service.core.step_scores import Aggregate

if TYPE_CHECKING:
    from rmserve.service.core.bundle import Manifest
    from rmserve.service.core.groups import RewardSummary
    from rmserve.service.core.scoring import Scores

PromptField = str | list[ChatMessage]
ReferenceField = str | int | float | dict[str, Any] | None
STEPS_DOC = ("The response as its steps, in order (a process reward model bundle): each step is scored; a step "
             "must not contain the bundle's step separator.")
REFERENCE_DOC = "Reference answer for the server's verifiers (numeric and string ones need it); ignored without verifiers."
# One row of a request: (prompt, response text, field naming it, steps or None).
RequestRow = tuple[PromptField, str, str, "tuple[str, ...] | None"]


class _FieldError(ValueError):
    """A whole-request check that one field fails (pydantic keeps the exception, so validation_error names it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptField = Field(description="Prompt text, or chat messages rendered by the bundle's template.")
    response: str | None = Field(None, description="The response to score (a process reward model bundle splits it "
                                 "into steps on its step separator).")
    steps: list[str] | None = Field(None, min_length=1, description=STEPS_DOC + " Instead of `response`.")
    reference: ReferenceField = Field(None, description=REFERENCE_DOC)

    @model_validator(mode="after")
    def _response_or_steps(self) -> ScoreItem:
        if (self.response is None) == (self.steps is None):
            raise ValueError("give exactly one of 'response' or 'steps'")
        return self


class ScoreRequest(BaseModel):
    """Either one prompt with `response` or `responses`, or a list of `items`."""

    model_config = ConfigDict(extra="forbid")
    prompt: PromptField | None = Field(None, description="Prompt shared by every response.")
    response: str | None = Field(None, description="One response to score against `prompt`.")
    responses: list[str] | None = Field(None, min_length=1, description="Several responses to `prompt`.")
    items: list[ScoreItem] | None = Field(None, min_length=1, description="Independent prompt/response pairs.")
    steps: list[str] | None = Field(None, min_length=1, description="One response to `prompt`, as steps. " + STEPS_DOC)
    response_steps: list[list[str]] | None = Field(
        None, min_length=1, description="Several responses to `prompt`, each as its steps (like `responses`).")
    values: ValueKind = Field(
        "raw", description="What the answer's `values` carry: `raw` rewards, `normalized` rewards (bundle stats) "
        "or `group` advantages (r - mean) / (std + eps) over this request's responses (needs `prompt`). With "
        "verifiers configured: the combined rewards (of the normalized reward for `normalized`), and their advantages.",
    )
    aggregate: Aggregate | None = Field(
        None, description="A process reward model bundle: how a response's reward is made from its step rewards: "
        "`min`, `last`, `mean` or `prod` (product of the step probabilities). Default: the bundle's.")
    reference: ReferenceField = Field(None, description=REFERENCE_DOC + " For every response to `prompt`.")
    verifiers: list[str] | None = Field(None, description="Names of the configured verifiers to run (default: all).")

    @field_validator("values")
    @classmethod
    def _group_needs_one_prompt(cls, values: ValueKind, info: ValidationInfo) -> ValueKind:
        if values == "group" and info.data.get("items") is not None:
            raise ValueError("'group' values need one 'prompt' with its 'responses', not 'items'")
        return values

    @property
    def grouped(self) -> bool:
        """One prompt with its responses: the answer carries group statistics."""
        return self.items is None

    @model_validator(mode="after")
    def _one_shape(self) -> ScoreRequest:
        shapes = ("response", "responses", "items", "steps", "response_steps")
        given = [name for name in shapes if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'response', 'responses', 'steps', 'response_steps' or 'items'")
        if given[0] == "items" and (self.prompt is not None or self.reference is not None):
            raise _FieldError("prompt" if self.prompt is not None else "reference",
                              "'prompt' and 'reference' go inside each item when 'items' is used")
        if given[0] != "items" and self.prompt is None:
            raise _FieldError("prompt", f"'prompt' is required with '{given[0]}'")
        return self

    def rows(self) -> list[RequestRow]:
        """(prompt, response, field name, steps) for each response, in request order; a response given as
        steps has them joined by newlines as its text (what verifiers read)."""
        if self.items is not None:
            return [(item.prompt, item.response, f"items.{i}.response", None) if item.steps is None
                    else (item.prompt, "\n".join(item.steps), f"items.{i}.steps", tuple(item.steps))
                    for i, item in enumerate(self.items)]
        assert self.prompt is not None
        if self.response is not None:
            return [(self.prompt, self.response, "response", None)]
        if self.steps is not None:
            return [(self.prompt, "\n".join(self.steps), "steps", tuple(self.steps))]
        if self.response_steps is not None:
            return [(self.prompt, "\n".join(s), f"response_steps.{i}", tuple(s)) for i, s in enumerate(self.response_steps)]
        assert self.responses is not None
        return [(self.prompt, r, f"responses.{i}", None) for i, r in enumerate(self.responses)]

    def references(self) -> list[ReferenceField]:
        """The reference of each response, in request order (None where there is none)."""
        if self.items is not None:
            return [item.reference for item in self.items]
        count = len(self.responses or self.response_steps or [None])
        return [self.reference] * count


class ModelRef(BaseModel):
    bundle_id: str
    model_sha256: str
    normalization_version: str
    calibration_temperature: float

    @classmethod
    def of(cls, manifest: Manifest) -> ModelRef:
        """The provenance of an answer scored with the bundle `manifest` describes."""
        return cls(bundle_id=manifest.bundle_id, model_sha256=manifest.model_sha256,
                   normalization_version=manifest.normalization.version,
                   calibration_temperature=manifest.calibration.temperature)


class GroupSummary(BaseModel):
    mean: float = Field(description="Mean of the group's raw rewards.")
    std: float = Field(description="Population standard deviation (ddof=0) of the group's raw rewards.")
    advantages: list[float] = Field(
        description=f"(reward - mean) / (std + eps) per response, in request order; eps = {GROUP_EPS:g}.")
    eps: float = Field(GROUP_EPS, description="The eps of `advantages`.")

    @classmethod
    def of(cls, stats: GroupStats | None) -> GroupSummary | None:
        if stats is None:
            return None
        return cls(mean=stats.mean, std=stats.std, advantages=stats.advantages.tolist(), eps=stats.eps)


class VerifierOutcome(BaseModel):
    type: str = Field(description="numeric, string, regex or json_schema.")
    passed: bool
    value: float = Field(description="The verifier's pass_value or fail_value.")
    detail: str = Field(description="What was compared, or why it failed.")


class Verification(BaseModel):
    mode: str = Field(description="How the components combine: weighted_sum, gate or verifier.")
    model: float = Field(description="The model's reward that was combined (raw, or normalized for normalized values).")
    combined: float = Field(description="The combined reward.")
    verifiers: dict[str, VerifierOutcome] = Field(description="Each verifier's result, by name.")


class ScoreResponse(BaseModel):
    model: ModelRef
    rewards: list[float] = Field(description="Raw reward per response, in request order (a process reward model: "
                                 "the aggregate of its step rewards).")
    normalized_rewards: list[float] = Field(description="(raw - mean) / std with the bundle's reference stats.")
    truncated: list[bool] = Field(description="Whether the row was cut to fit max_length.")
    values: list[float] = Field(description="Per response, what the request's `values` asked for: the raw "
                                "reward, the normalized reward or the group advantage (combined rewards with verifiers).")
    group: GroupSummary | None = Field(None, description="Statistics of the group of responses to one `prompt`; "
                                       "null for `items` requests.")
    step_rewards: list[list[float]] | None = Field(
        None, description="A process reward model bundle: per response, the reward of each scored step (the "
        "probability that it is right), in order; null for an outcome bundle.")
    steps_cut: list[int] | None = Field(
        None, description="A process reward model bundle: per response, how many of its first steps truncation cut "
        "away (they have no reward in `step_rewards`).")
    aggregate: str | None = Field(None, description="A process reward model bundle: the aggregate `rewards` are.")
    verification: list[Verification] | None = Field(
        None, description="With verifiers configured: per response, every component and the combined reward.")

    @staticmethod
    def extras(scores: Scores, summary: RewardSummary) -> dict[str, Any]:
        """The step and verifier fields of an answer (empty for an outcome bundle without verifiers)."""
        out: dict[str, Any] = {}
        if scores.step_rewards is not None:
            out.update(step_rewards=[r.tolist() for r in scores.step_rewards], steps_cut=scores.steps_cut,
                       aggregate=scores.aggregate)
        if summary.verification is not None:
            out["verification"] = [Verification.model_validate(v.to_dict()) for v in summary.verification]
        return out


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptField
    response_a: str
    response_b: str


class CompareResponse(BaseModel):
    model: ModelRef
    reward_a: float
    reward_b: float
    normalized_reward_a: float
    normalized_reward_b: float
    probability_a: float = Field(description="P(a preferred over b) = sigmoid((reward_a - reward_b) / temperature).")


# pydantic names a union member in an error's location ("prompt.str"); such parts name no field.
_NOT_FIELDS = {"str", "int", "float", "dict[str,any]", "list[ChatMessage]", "function-after[_one_shape()]",
               "function-after[_response_or_steps()]"}


def validation_error(errors: Sequence[Any], strip_prefix: str | None = None) -> ScoringError:
    """One ScoringError naming the field, from pydantic's error list (shared by HTTP and gRPC)."""
    errors = list(errors) or [{"loc": (), "msg": "invalid request"}]
    # A union (text or chat messages) reports one error per member; the deepest one is the informative one.
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = [str(p) for p in first.get("loc", ())]
    if strip_prefix and loc and loc[0] == strip_prefix:
        loc = loc[1:]
    field = ".".join(p for p in loc if p not in _NOT_FIELDS) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, _FieldError):
        field = ".".join(p for p in [field, cause.field] if p)
    if first.get("type") == "missing" and list(first.get("loc", ())) == ["body"]:  # FastAPI: no body at all
        field, message = "body", "the request has no body: send a JSON object"
    if first.get("type") == "json_invalid":
        position = loc[-1] if loc else "?"
        field = "body"
        message = f"request body is not valid JSON at character {position}: {first.get('ctx', {}).get('error', message)}"
    return ScoringError(ErrorKind.VALIDATION, message, field)
