"""HTTP request and response bodies. Field descriptions are the API documentation (see /docs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rmserve.group_stats import GROUP_EPS, GroupStats, ValueKind
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import ChatMessage

if TYPE_CHECKING:
    from rmserve.service.core.bundle import Manifest

PromptField = str | list[ChatMessage]


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptField = Field(description="Prompt text, or chat messages rendered by the bundle's template.")
    response: str = Field(description="The response to score.")


class ScoreRequest(BaseModel):
    """Either one prompt with `response` or `responses`, or a list of `items`."""

    model_config = ConfigDict(extra="forbid")
    prompt: PromptField | None = Field(None, description="Prompt shared by every response.")
    response: str | None = Field(None, description="One response to score against `prompt`.")
    responses: list[str] | None = Field(None, min_length=1, description="Several responses to `prompt`.")
    items: list[ScoreItem] | None = Field(None, min_length=1, description="Independent prompt/response pairs.")
    values: ValueKind = Field(
        "raw", description="What the answer's `values` carry: `raw` rewards, `normalized` rewards (bundle stats) "
        "or `group` advantages (r - mean) / (std + eps) over this request's responses (needs `prompt`).",
    )

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
        given = [name for name in ("response", "responses", "items") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'response', 'responses' or 'items'")
        if given[0] == "items" and self.prompt is not None:
            raise ValueError("'prompt' goes inside each item when 'items' is used")
        if given[0] != "items" and self.prompt is None:
            raise ValueError("'prompt' is required with 'response' or 'responses'")
        return self

    def rows(self) -> list[tuple[PromptField, str, str]]:
        """(prompt, response, field name) for each response, in request order."""
        if self.items is not None:
            return [(item.prompt, item.response, f"items.{i}.response") for i, item in enumerate(self.items)]
        assert self.prompt is not None
        if self.response is not None:
            return [(self.prompt, self.response, "response")]
        assert self.responses is not None
        return [(self.prompt, r, f"responses.{i}") for i, r in enumerate(self.responses)]


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


class ScoreResponse(BaseModel):
    model: ModelRef
    rewards: list[float] = Field(description="Raw reward per response, in request order.")
    normalized_rewards: list[float] = Field(description="(raw - mean) / std with the bundle's reference stats.")
    truncated: list[bool] = Field(description="Whether the row was cut to fit max_length.")
    values: list[float] = Field(description="Per response, what the request's `values` asked for: the raw "
                                "reward, the normalized reward or the group advantage.")
    group: GroupSummary | None = Field(None, description="Statistics of the group of responses to one `prompt`; "
                                       "null for `items` requests.")


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
_NOT_FIELDS = {"str", "list[ChatMessage]", "function-after[_one_shape()]"}


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
    if first.get("type") == "json_invalid":
        position = loc[-1] if loc else "?"
        field = "body"
        message = f"request body is not valid JSON at character {position}: {first.get('ctx', {}).get('error', message)}"
    return ScoringError(ErrorKind.VALIDATION, message, field)
