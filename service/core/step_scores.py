"""Step rewards of a process reward model (PRM) bundle: where they are read, what they mean, how a response's
steps become one reward.

A PRM bundle's model.onnx returns one score per position (`token_scores`, float32 [batch, sequence]); a
step's score is the one at the step separator that ends it (the input spec's `step_separator_id`, found
in the row's ids where the attention mask is 1). The manifest's `StepRewards` says how to read it: the
activation that turns a score into a step reward (`sigmoid`: the probability that the step is right, as
trained with binary cross-entropy) and the aggregate a response's reward is when a request names none.

Aggregates of a response's step rewards (the request may choose; group statistics use the aggregate):
  min    the weakest step (the default: a chain is as good as its worst step);
  last   the last step's reward;
  mean   the mean over the steps;
  prod   the product of the step probabilities (the chance that every step is right, if independent).
Only the scored steps count: steps cut away by truncation (the first ones) have no reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import StepError, join_steps, split_steps

Aggregate = Literal["min", "last", "mean", "prod"]
AGGREGATES: tuple[str, ...] = ("min", "last", "mean", "prod")
STEP_OUTPUT = "token_scores"  # the graph output of a PRM bundle: one score per position


class StepRewards(BaseModel):
    """How a PRM bundle's per-position scores become step rewards; stored in the manifest."""

    model_config = ConfigDict(extra="forbid")
    activation: Literal["sigmoid"] = Field(
        "sigmoid", description="Score → step reward: sigmoid gives the probability that the step is right.")
    aggregate: Aggregate = Field("min", description="A response's reward when the request names no aggregate.")


def read_step_scores(input_ids: np.ndarray, attention_mask: np.ndarray, scores: np.ndarray,
                     separator_id: int) -> np.ndarray:
    """Per row, the scores at its step separators, in order: an object array of float32 arrays."""
    at_separator = (input_ids == separator_id) & (attention_mask == 1)
    out = np.empty(len(input_ids), dtype=object)
    for i in range(len(input_ids)):
        out[i] = np.asarray(scores[i][at_separator[i]], dtype=np.float32)
    return out


def activate(scores: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Step rewards from step scores (float64)."""
    z = np.asarray(scores, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def aggregate(step_rewards: np.ndarray, how: str) -> float:
    """One response's reward from its step rewards; NaN for a response with no scored step."""
    rewards = np.asarray(step_rewards, dtype=np.float64)
    if rewards.size == 0:
        return float("nan")
    if how == "min":
        return float(rewards.min())
    if how == "last":
        return float(rewards[-1])
    if how == "mean":
        return float(rewards.mean())
    if how == "prod":
        return float(np.prod(rewards))
    raise ValueError(f"unknown aggregate {how!r}; expected one of {', '.join(AGGREGATES)}")


def aggregate_all(step_rewards: Sequence[np.ndarray], how: str) -> np.ndarray:
    return np.array([aggregate(r, how) for r in step_rewards], dtype=np.float64)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] if isinstance(m, dict) else m.content for m in prompt)


def step_text(prompt: Any, response: str, steps: Sequence[str] | None, separator: str, field: str,
              prompt_field: str) -> str:
    """The text a PRM reads for one response: its `steps` joined with the separator, or the response as
    given (its steps are split on the separator). A validation error names the bad step or the prompt."""
    if separator in _prompt_text(prompt):
        raise ScoringError(ErrorKind.VALIDATION, f"the prompt contains the step separator {separator!r}, which "
                           "only a response's steps may", prompt_field)
    try:
        # A whole response is split and joined again, so that its last step ends with a separator too.
        return join_steps(split_steps(response, separator) if steps is None else steps, separator)
    except StepError as e:
        where = f"{field}.{e.step}" if steps else field  # no steps at all: the response itself
        raise ScoringError(ErrorKind.VALIDATION, str(e), where) from None
