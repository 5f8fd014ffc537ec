"""Verifiers in requests: the server's verifier configuration (setting `verifiers_config`, a JSON file read
when a bundle is loaded or reloaded) applied to the responses a request scores.

Each response may carry a `reference` (the item's, or the request's for all responses to one prompt;
OpenRLHF's /get_reward `labels`). Before anything is queued, every configured verifier (or those the
request names) checks every response, so that a missing or unreadable reference, or a verifier name that
is not configured, is a validation error naming its field and costs the engine nothing. After scoring, each
response's results are combined with the model's reward (raw, or normalized when the request asks for
normalized values; a PRM's aggregate) as the configuration's mode declares (service/core/verifiers.py), and
the answer carries every component. Without a configuration, references are accepted and ignored, and
naming a verifier is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.verifiers import CombinedReward, Reference, VerifierResult, Verifiers, load_config

Checked = list[tuple[VerifierResult, ...]]


def load_verifiers(path: Path | None) -> Verifiers | None:
    """The configured verifiers (None when no file is set); ValueError naming the file and the bad field."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"verifiers_config {path}: cannot read it: {e.strerror or e}") from None
    try:
        return Verifiers(load_config(text, field=""))
    except ScoringError as e:
        field = (e.field or "").lstrip(".")
        raise ValueError(f"verifiers_config {path}: " + (f"field '{field}': " if field else "") + e.message) from None


def reference_field(response_field: str) -> str:
    """Where a row's reference sits in the request, from where its response sits."""
    if response_field.startswith("items."):
        return ".".join(response_field.split(".")[:2]) + ".reference"
    if response_field.startswith("query."):
        return "labels." + response_field.split(".", 1)[1]  # /get_reward: OpenRLHF's labels
    return "reference"


def check_all(verifiers: Verifiers | None, responses: Sequence[str], fields: Sequence[str],
              references: Sequence[Reference] | None, names: list[str] | None) -> Checked | None:
    """Every response's verifier results (None without a configuration); validation errors name the field."""
    if verifiers is None:
        if names:
            raise ScoringError(ErrorKind.VALIDATION, "this server has no verifiers configured (setting "
                               "verifiers_config)", "verifiers")
        return None
    verifiers.select(names)  # an unknown name is refused before any response is checked
    refs = references if references is not None else [None] * len(responses)
    return [verifiers.check(response, reference, reference_field(field), names)
            for response, field, reference in zip(responses, fields, refs, strict=True)]


def combine_all(verifiers: Verifiers, checked: Checked, model_rewards: np.ndarray) -> list[CombinedReward]:
    return [verifiers.combine_results(float(reward), results) for reward, results in zip(model_rewards, checked)]
