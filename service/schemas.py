"""HTTP request and response bodies. Field descriptions are the API documentation (see /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.inputs import ChatMessage

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


class ScoreResponse(BaseModel):
    model: ModelRef
    rewards: list[float] = Field(description="Raw reward per response, in request order.")
    normalized_rewards: list[float] = Field(description="(raw - mean) / std with the bundle's reference stats.")
    truncated: list[bool] = Field(description="Whether the row was cut to fit max_length.")


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
