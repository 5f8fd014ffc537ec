"""TRL integration: a reward function for `trl.GRPOTrainer(reward_funcs=[trl_reward_func(url)])`, backed by
an rmserve client (HTTP or gRPC, by the URL's scheme)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

from rmserve.client.common import Prompt, check_values
from rmserve.client.connect import connect
from rmserve.client.grpc import GrpcRewardClient
from rmserve.client.http import RewardClient


def _text(content: Any) -> str:
    """Message content: a string, or multimodal content blocks of which the text ones count."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type", "text") == "text")


def _trl_prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    return [{"role": m["role"], "content": _text(m["content"])} for m in prompt]


def _trl_completion(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(_text(m["content"]) for m in completion)  # conversational: the generated turn(s)


class TrlRewardFunction:
    """A TRL reward function backed by rmserve: `f(prompts, completions, **kwargs) -> list[float | None]`.

    Plain-text prompts are sent as text (the bundle scores them as written); conversational prompts
    ({role, content} messages) are rendered by the bundle's chat template, and a conversational
    completion is the text of its messages. Empty or whitespace-only completions, which rmserve refuses,
    get `empty_reward` (None: TRL treats it as NaN and leaves the sample to other reward functions).
    `values`: "raw", "normalized" or "group" (advantages within each prompt's completions in this call; TRL
    splits a batch between processes, and a prompt's completions with it, so over several processes leave
    grouping to TRL, which gathers every process's rewards first).
    Picklable: the connection is opened on first use in each process."""

    def __init__(self, url: str, *, values: str = "raw", name: str = "rmserve", empty_reward: float | None = None,
                 **client_options: Any):
        self.url = url
        self.values = check_values(values)
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self.empty_reward = empty_reward
        self.client_options = client_options
        self.calls = 0
        self._client: RewardClient | GrpcRewardClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> RewardClient | GrpcRewardClient:
        if self._client is None:
            self._client = connect(self.url, **self.client_options)
        return self._client

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        self.calls += 1
        processes = os.environ.get("WORLD_SIZE", "1")  # set by torchrun and accelerate for each process
        if self.calls == 1 and self.values == "group" and processes.isdigit() and int(processes) > 1:
            warnings.warn(f"values='group' in one of {processes} training processes: TRL gives each process a "
                          "slice of the batch, so a prompt's completions may be grouped in parts; values='raw' "
                          "lets TRL form the groups over all processes", stacklevel=2)
        rewards: list[float | None] = [self.empty_reward] * len(completions)
        rows = [(i, _trl_prompt(p), _trl_completion(c)) for i, (p, c) in enumerate(zip(prompts, completions))]
        rows = [row for row in rows if row[2].strip()]
        if not rows:
            return rewards
        if self.values == "group":
            groups: dict[str, list[tuple[int, Prompt, str]]] = {}
            for row in rows:
                groups.setdefault(json.dumps(row[1], sort_keys=True), []).append(row)
            for members in groups.values():
                result = self.client.score(members[0][1], [c for _, _, c in members], values="group")
                for (i, _, _), value in zip(members, result.values):
                    rewards[i] = value
            return rewards
        result = self.client.score_items([(p, c) for _, p, c in rows], values=self.values)
        for (i, _, _), value in zip(rows, result.values):
            rewards[i] = value
        return rewards


def trl_reward_func(url: str = "http://127.0.0.1:8000", *, values: str = "raw", name: str = "rmserve",
                    empty_reward: float | None = None, **client_options: Any) -> TrlRewardFunction:
    """A reward function for `trl.GRPOTrainer(reward_funcs=[trl_reward_func(url)])`; `client_options`
    (api_key, timeout, retry, ...) go to the client."""
    return TrlRewardFunction(url, values=values, name=name, empty_reward=empty_reward, **client_options)
