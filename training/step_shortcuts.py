"""Shortcut baselines for step labels: how well a surface feature alone tells bad steps from good ones.

A process reward model's step AUC means something only next to what a feature that does not read the
reasoning reaches. Three such features (issue 20's acceptance names them), each scored as a step AUC:
  step_length          the step's length in characters;
  step_position        its 0-based index in the chain (bad steps are a suffix, so later steps are more
                       often bad), and relative_position, the index over the chain's last index;
  new_digit            1 when the step contains a digit character that its prompt lacks, else 0.
A feature may point either way (longer = worse, or better), so each AUC is taken in its better direction,
max(AUC, 1 - AUC): 0.5 means the feature says nothing, 1.0 that it separates the labels perfectly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from rmserve.training.metrics import auc
from rmserve.training.steps import StepChain

FEATURES = ("step_length", "step_position", "relative_position", "new_digit")


def prompt_text(chain: StepChain) -> str:
    if isinstance(chain.prompt, str):
        return chain.prompt
    return "\n".join(str(message["content"]) for message in chain.prompt)


def step_features(chains: Iterable[StepChain]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every step's shortcut features, and its label (True: good), over all chains in order."""
    values: dict[str, list[float]] = {name: [] for name in FEATURES}
    labels: list[bool] = []
    for chain in chains:
        prompt_digits = {c for c in prompt_text(chain) if c.isdigit()}
        last = max(len(chain.steps) - 1, 1)
        for index, (step, good) in enumerate(zip(chain.steps, chain.labels)):
            values["step_length"].append(len(step))
            values["step_position"].append(index)
            values["relative_position"].append(index / last)
            values["new_digit"].append(float(any(c.isdigit() and c not in prompt_digits for c in step)))
            labels.append(good)
    return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}, np.asarray(labels, dtype=bool)


def shortcut_aucs(chains: Iterable[StepChain]) -> dict[str, float | None]:
    """Each feature's step AUC in its better direction; None when the steps are all good or all bad."""
    features, good = step_features(chains)
    result: dict[str, float | None] = {}
    for name, x in features.items():
        a = auc(x[good], x[~good])
        result[name] = None if a is None else max(a, 1.0 - a)
    return result
