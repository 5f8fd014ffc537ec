"""The client library's pure parts: retry delays and deadlines, Retry-After parsing, splitting and
merging long lists, TRL input conversion, and that importing it pulls in no server or torch stack."""

from __future__ import annotations

import email.utils
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from rmserve.client.common import (
    Deadline,
    DeadlineExceeded,
    InvalidRequest,
    ModelRef,
    Overloaded,
    RetryPolicy,
    ScoreResult,
    Unavailable,
    merge,
    parse_retry_after,
    plan,
    retry_delay,
)
from rmserve.client.trl import TrlRewardFunction, _trl_completion, _trl_prompt
from rmserve.group_stats import group_stats

ROOT = Path(__file__).resolve().parents[2]


def test_backoff_grows_exponentially_to_its_cap_and_never_undercuts_retry_after():
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0, jitter=0.0)
    assert [policy.delay(n, None) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay(0, 3.0) == 3.0 and policy.delay(5, 0.5) == 1.0
    jittered = RetryPolicy(initial_backoff=1.0, jitter=0.25)
    assert all(0.75 <= jittered.delay(0, None) <= 1.25 for _ in range(200))


def test_retry_delay_gives_up_on_final_errors_spent_retries_and_deadlines():
    seen = []
    policy = RetryPolicy(max_retries=2, jitter=0.0, on_retry=lambda *a: seen.append(a))
    busy = Overloaded("queue full", status=429, retry_after=1.0)
    assert retry_delay(policy, 0, busy, Deadline(None)) == 1.0 and seen == [(1, 1.0, busy)]
    assert retry_delay(policy, 2, busy, Deadline(None)) is None  # retries spent
    assert retry_delay(policy, 0, InvalidRequest("bad", field="responses.0"), Deadline(None)) is None
    assert retry_delay(policy, 0, busy, Deadline(0.5)) is None  # waiting 1 s would pass a 0.5 s deadline
    assert retry_delay(policy, 0, Unavailable("down"), Deadline(5.0)) == pytest.approx(0.1)


def test_a_spent_deadline_raises():
    deadline = Deadline(0.0)
    with pytest.raises(DeadlineExceeded):
        deadline.remaining()
    assert Deadline(None).remaining() is None


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(later) <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_plan_splits_at_the_limit_and_asks_raw_values_of_split_group_calls():
    parts, asked = plan(10, 4, "group", grouped=True)
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 10)] and asked == "raw"
    assert plan(4, 4, "normalized", grouped=False) == ([slice(0, 4)], "normalized")
    # Raw and normalized values are per row: every chunk asks for them (with verifiers, the server's combination
    # of its verifiers' results with those values is one only the server can make).
    assert plan(10, 4, "normalized", grouped=True)[1] == "normalized" and plan(10, 4, "raw", grouped=True)[1] == "raw"
    with pytest.raises(InvalidRequest, match="group values"):
        plan(3, 4, "group", grouped=False)
    with pytest.raises(InvalidRequest):
        plan(0, 4, "raw", grouped=True)
    with pytest.raises(ValueError, match="values must be"):
        plan(3, 4, "advantages", grouped=True)


def part(rewards, sha="abc", values=None, verified=False):
    """A chunk's answer; `values`: what it asked for (raw by default)."""
    model = ModelRef(bundle_id="rm", model_sha256=sha, normalization_version="v", calibration_temperature=1.0)
    return ScoreResult(rewards=rewards, normalized_rewards=[r / 2 for r in rewards], truncated=[False] * len(rewards),
                       values=rewards if values is None else values, group=None, model=model, requests=2,
                       verified=verified)


def test_merge_computes_group_statistics_over_the_whole_list():
    merged = merge([part([1.0, 2.0]), part([4.0, 8.0, 0.5])], "group", grouped=True)
    stats = group_stats([1.0, 2.0, 4.0, 8.0, 0.5])
    assert merged.rewards == [1.0, 2.0, 4.0, 8.0, 0.5] and merged.requests == 4
    assert merged.group.mean == stats.mean and merged.group.std == np.std([1.0, 2.0, 4.0, 8.0, 0.5])
    assert merged.values == stats.advantages.tolist()
    normalized = merge([part([1.0], values=[0.5]), part([3.0], values=[1.5])], "normalized", grouped=True)
    assert normalized.values == [0.5, 1.5] and normalized.group.mean == 2.0  # the group of the raw rewards


def test_merge_with_the_servers_verifiers_keeps_their_combined_values_and_groups_them():
    """Where the server combines verifier results into the values, a split call answers what the whole call
    would: the chunks' combined values, and group statistics over them (not over the model's rewards)."""
    combined = [[1.2, 2.8], [2.1, 0.3]]
    merged = merge([part([0.2, 2.8], values=combined[0], verified=True),
                    part([1.1, 0.3], values=combined[1], verified=True)], "raw", grouped=True)
    assert merged.values == [1.2, 2.8, 2.1, 0.3] and merged.rewards == [0.2, 2.8, 1.1, 0.3] and merged.verified
    assert merged.group.mean == group_stats([1.2, 2.8, 2.1, 0.3]).mean
    with pytest.raises(Exception, match="model changed"):
        merge([part([1.0]), part([3.0], sha="def")], "raw", grouped=True)


def test_trl_inputs_become_rmserve_prompts_and_responses():
    assert _trl_prompt("\n\nHuman: hi\n\nAssistant:") == "\n\nHuman: hi\n\nAssistant:"
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                                    {"type": "image"}]}]
    assert _trl_prompt(chat) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]
    assert _trl_completion(" hello") == " hello"
    assert _trl_completion([{"role": "assistant", "content": "Hello!"}]) == "Hello!"


def test_trl_reward_function_has_a_name_and_pickles_without_its_connection():
    func = TrlRewardFunction("http://127.0.0.1:9", name="rm_helpful", values="normalized", timeout=5)
    assert func.__name__ == "rm_helpful"
    func.client  # noqa: B018 - opens the (lazy) client
    copy = pickle.loads(pickle.dumps(func))
    assert copy._client is None and copy.values == "normalized" and copy.client_options == {"timeout": 5}
    assert copy([""], ["   "]) == [None]  # empty completions are never sent
    with pytest.raises(ValueError):
        TrlRewardFunction("http://x", values="best")


def test_trl_group_values_over_several_processes_warn_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="one of 2 training processes"):
        TrlRewardFunction("http://127.0.0.1:9", values="group")([""], ["  "])
    func = TrlRewardFunction("http://127.0.0.1:9", values="raw")
    monkeypatch.setenv("WORLD_SIZE", "1")
    grouped = TrlRewardFunction("http://127.0.0.1:9", values="group")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        func([""], ["  "])
        grouped([""], ["  "])


def test_the_client_imports_no_server_or_torch_stack():
    code = ("import sys, rmserve.client.http\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'fastapi', 'uvicorn', 'onnxruntime', 'tokenizers'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
