"""POST /get_reward speaks OpenRLHF's remote reward-model protocol on a real server: its request shape
({"query", "prompts", "labels"}) and response shape ({"rewards", "scores", "extra_logs"}), rewards equal to
/score's for the same prompt/response split, any number of queries, and 422s that name the query."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

PROMPTS = ["\n\nHuman: how are you?\n\nAssistant:", "\n\nHuman: hello there\n\nAssistant:",
           "\n\nHuman: one two three?\n\nAssistant:"]
RESPONSES = [" i am fine thanks", " hello my friend", " four five six"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("openrlhf") / "bundle")
    with running_server(bundle, max_responses_per_request=4) as running:
        yield running


def score_items(server, prompts, responses):
    answer = httpx.post(server.url + "/score", json={"items": [{"prompt": p, "response": r}
                                                               for p, r in zip(prompts, responses)]})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_openrlhf_request_and_response_shapes(server):
    # What OpenRLHF's remote_rm_fn_ray posts: full texts, their prompts and the dataset labels.
    payload = {"query": [p + r for p, r in zip(PROMPTS, RESPONSES)], "prompts": PROMPTS, "labels": ["a", None, "c"]}
    answer = httpx.post(server.url + "/get_reward", json=payload, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert len(body["rewards"]) == len(body["scores"]) == 3
    assert all(isinstance(x, float) for x in body["rewards"] + body["scores"])
    for name, per_query in body["extra_logs"].items():  # OpenRLHF logs each as one float per sample
        assert isinstance(name, str) and len(per_query) == 3 and all(isinstance(x, float) for x in per_query)
    reference = score_items(server, PROMPTS, RESPONSES)
    assert body["rewards"] == reference["rewards"] and body["scores"] == reference["rewards"]
    assert body["extra_logs"]["normalized_rewards"] == reference["normalized_rewards"]
    assert body["extra_logs"]["truncated"] == [0.0, 0.0, 0.0]


def test_without_prompts_queries_are_split_by_the_bundle_template(server):
    dialogue = "\n\nHuman: hello\n\nAssistant: hello there\n\nHuman: how are you?\n\nAssistant:"
    queries = [dialogue + " i am fine", PROMPTS[2] + RESPONSES[2]]
    body = httpx.post(server.url + "/get_reward", json={"query": queries}).json()
    # The split is after the last "\n\nAssistant:": earlier turns belong to the prompt.
    reference = score_items(server, [dialogue, PROMPTS[2]], [" i am fine", RESPONSES[2]])
    assert body["rewards"] == reference["rewards"]


def test_more_queries_than_one_request_holds_are_scored_in_chunks(server):
    queries = [PROMPTS[i % 3] + RESPONSES[(i + 1) % 3] for i in range(10)]  # the server's limit is 4 per request
    body = httpx.post(server.url + "/get_reward", json={"query": queries, "prompts": [PROMPTS[i % 3] for i in range(10)]})
    assert body.status_code == 200
    reference = [score_items(server, [PROMPTS[i % 3]], [RESPONSES[(i + 1) % 3]])["rewards"][0] for i in range(10)]
    np.testing.assert_allclose(body.json()["rewards"], reference, atol=1e-6, rtol=0)


def test_normalized_rewards_on_request_scores_stay_raw(server):
    payload = {"query": [p + r for p, r in zip(PROMPTS, RESPONSES)], "prompts": PROMPTS, "labels": None}
    body = httpx.post(server.url + "/get_reward?values=normalized", json=payload).json()
    reference = score_items(server, PROMPTS, RESPONSES)
    assert body["rewards"] == reference["normalized_rewards"] and body["scores"] == reference["rewards"]


@pytest.mark.parametrize("payload, field, words", [
    ({"query": [PROMPTS[0] + " fine", "hello there no"], "prompts": [PROMPTS[0], PROMPTS[1]]}, "query.1", "does not start"),
    ({"query": ["hello there, no assistant turn here"]}, "query.0", "send 'prompts'"),
    ({"query": [PROMPTS[0] + " fine"], "prompts": PROMPTS}, "prompts", "3 prompts for 1 queries"),
    ({"query": [PROMPTS[0] + " fine", PROMPTS[1] + "   "]}, "query.1", "empty"),
    ({"query": []}, "query", "at least 1"),
    ({"prompts": PROMPTS}, "query", "required"),
])
def test_unsplittable_or_bad_queries_are_refused_naming_them(server, payload, field, words):
    answer = httpx.post(server.url + "/get_reward", json=payload)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_bad_values_parameter_is_refused(server):
    answer = httpx.post(server.url + "/get_reward?values=group", json={"query": [PROMPTS[0] + " fine"]})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "values"
