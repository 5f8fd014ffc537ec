"""Verifiers configured on a real server (setting verifiers_config), composed with the model's reward in each
mode (weighted sum, gate, verifier alone), over HTTP /score, gRPC Score and OpenRLHF's /get_reward (labels are
the references, extra_logs carry every component): the combined value is computed from the components the
answer reports, the model's component is the reward the bundle gives without verifiers (a PRM's: the aggregate), and bad
references or verifier names are refused naming the field without the server going down."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

PROMPT = "hello there"
# Literal answers and whether each passes the numeric check against REFERENCE and the "answer is" regex.
RESPONSES = ["i am fine, the answer is 3/4", "\\boxed{\\frac{3}{4}}", "the answer is 0.7 cm", "no"]
REFERENCE = "0.75"
NUMERIC_PASSES = [True, True, False, False]
REGEX_PASSES = [True, False, True, False]
VERIFIERS = [{"type": "numeric", "name": "answer", "weight": 2.0},
             {"type": "regex", "name": "format", "pattern": "answer is", "fail_value": -1.0}]
MODES = {
    "weighted_sum": {"mode": "weighted_sum", "model_weight": 0.5, "verifiers": VERIFIERS},
    "gate": {"mode": "gate", "fail_reward": -10.0, "verifiers": VERIFIERS},
    "verifier": {"mode": "verifier", "verifiers": VERIFIERS},
}


def expected_combined(mode: str, model: float, numeric: bool, regex: bool) -> float:
    answer, form = (1.0 if numeric else 0.0), (1.0 if regex else -1.0)
    if mode == "gate":
        return model if numeric and regex else -10.0
    return 2.0 * answer + form + (0.5 * model if mode == "weighted_sum" else 0.0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("verifiers") / "bundle")


@pytest.fixture(scope="module")
def plain_rewards(bundle):
    """The model's rewards for RESPONSES from a server without verifiers."""
    with running_server(bundle) as server:
        answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).json()
    assert answer.get("verification") is None
    return answer["rewards"]


@pytest.fixture(scope="module", params=list(MODES))
def served(request, bundle, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / f"{request.param}.json"
    config.write_text(json.dumps(MODES[request.param]))
    with running_server(bundle, verifiers_config=str(config)) as server:
        yield request.param, server


def test_http_score_carries_every_component(served, plain_rewards):
    mode, server = served
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES,
                                                     "reference": REFERENCE}).json()
    np.testing.assert_allclose(answer["rewards"], plain_rewards, rtol=0, atol=1e-6)  # the model's, unchanged
    combined = []
    for v, model, numeric, regex in zip(answer["verification"], plain_rewards, NUMERIC_PASSES, REGEX_PASSES):
        assert v["mode"] == mode and v["model"] == pytest.approx(model, abs=1e-6)
        assert (v["verifiers"]["answer"]["passed"], v["verifiers"]["format"]["passed"]) == (numeric, regex)
        assert v["verifiers"]["answer"]["type"] == "numeric" and v["verifiers"]["format"]["value"] == (1.0 if regex else -1.0)
        assert v["combined"] == pytest.approx(expected_combined(mode, model, numeric, regex), abs=1e-6)
        combined.append(v["combined"])
    np.testing.assert_allclose(answer["values"], combined, rtol=0, atol=1e-12)  # values are the combined rewards


def test_items_carry_their_own_references_and_a_request_may_name_its_verifiers(served):
    mode, server = served
    items = [{"prompt": PROMPT, "response": "the answer is 12 dollars", "reference": 12},
             {"prompt": PROMPT, "response": "the answer is 12 dollars", "reference": "\\frac{24}{2}"},
             {"prompt": PROMPT, "response": "the answer is 12 dollars", "reference": "13"}]
    answer = httpx.post(server.url + "/score", json={"items": items}).json()
    assert [v["verifiers"]["answer"]["passed"] for v in answer["verification"]] == [True, True, False]
    only = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response": "no", "verifiers": ["format"]}).json()
    (verification,) = only["verification"]
    assert list(verification["verifiers"]) == ["format"]  # the numeric one, which needs a reference, did not run
    model = verification["model"]
    want = {"weighted_sum": 0.5 * model - 1.0, "gate": -10.0, "verifier": -1.0}[mode]
    assert verification["combined"] == pytest.approx(want, abs=1e-9)


def test_grpc_score_carries_the_same_components(served):
    mode, server = served
    http = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES,
                                                   "reference": REFERENCE}).json()
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(
            prompt=pb.Prompt(text=PROMPT), responses=RESPONSES, reference=REFERENCE))
    assert len(reply.verification) == len(RESPONSES)
    for got, want in zip(reply.verification, http["verification"]):
        assert got.mode == mode and got.model == pytest.approx(want["model"], abs=1e-9)
        assert got.combined == pytest.approx(want["combined"], abs=1e-9)
        assert {name: (o.passed, o.value, o.type) for name, o in got.verifiers.items()} == {
            name: (o["passed"], o["value"], o["type"]) for name, o in want["verifiers"].items()}
    np.testing.assert_allclose(list(reply.values), http["values"], rtol=0, atol=1e-9)


def test_get_reward_labels_are_references_and_extra_logs_carry_the_components(served, plain_rewards):
    mode, server = served
    prompt = f"\n\nHuman: {PROMPT}\n\nAssistant:"
    body = {"query": [prompt + " " + r for r in RESPONSES], "prompts": [prompt] * len(RESPONSES),
            "labels": [REFERENCE] * len(RESPONSES)}
    answer = httpx.post(server.url + "/get_reward", json=body).json()
    logs = answer["extra_logs"]
    want = [expected_combined(mode, m, n, r) for m, n, r in zip(logs["model_reward"], NUMERIC_PASSES, REGEX_PASSES)]
    np.testing.assert_allclose(logs["combined_reward"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(answer["rewards"], logs["combined_reward"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(answer["scores"], logs["model_reward"], rtol=0, atol=1e-12)
    assert logs["verifier/answer/passed"] == [float(p) for p in NUMERIC_PASSES]
    assert logs["verifier/format/passed"] == [float(p) for p in REGEX_PASSES]
    assert logs["verifier/answer"] == [float(p) for p in NUMERIC_PASSES]
    assert logs["verifier/format"] == [1.0 if p else -1.0 for p in REGEX_PASSES]


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": PROMPT, "responses": ["the answer is 3"]}, "reference", "reference"),
    ({"items": [{"prompt": PROMPT, "response": "3", "reference": "3"}, {"prompt": PROMPT, "response": "3"}]},
     "items.1.reference", "reference"),
    ({"prompt": PROMPT, "response": "3", "reference": "three quarters"}, "reference", "three quarters"),
    ({"prompt": PROMPT, "response": "3", "reference": "3", "verifiers": ["format", "length"]}, "verifiers.1",
     "unknown verifier 'length'"),
])
def test_bad_references_and_names_are_refused_naming_the_field(served, body, field, message):
    _, server = served
    response = httpx.post(server.url + "/score", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"], error
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_get_reward_refuses_labels_that_do_not_line_up(served):
    _, server = served
    prompt = f"\n\nHuman: {PROMPT}\n\nAssistant:"
    response = httpx.post(server.url + "/get_reward", json={"query": [prompt + " 3", prompt + " 4"],
                                                            "prompts": [prompt, prompt], "labels": ["3"]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "labels"
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=["3"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reference" in info.value.details()


def test_a_process_reward_models_aggregate_is_the_model_component(tmp_path):
    from tests.prm_bundles import make_tiny_prm_bundle

    config = tmp_path / "gate.json"
    config.write_text(json.dumps(MODES["gate"]))
    chains = [["one two", "the answer is 3/4"], ["three four", "the answer is 5"]]
    with running_server(make_tiny_prm_bundle(tmp_path / "bundle"), verifiers_config=str(config)) as server:
        answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": chains,
                                                         "aggregate": "mean", "reference": REFERENCE}).json()
    means = [float(np.mean(r)) for r in answer["step_rewards"]]
    assert [v["model"] for v in answer["verification"]] == pytest.approx(means, abs=1e-9)
    assert [v["verifiers"]["answer"]["passed"] for v in answer["verification"]] == [True, False]  # steps joined
    assert answer["values"] == pytest.approx([means[0], -10.0], abs=1e-9)


LONG_NUMBER = "1" * 5000  # more digits than Python turns into an int by default (4300)


@pytest.mark.parametrize("body, field", [
    ({"prompt": PROMPT, "response": "3", "reference": LONG_NUMBER}, "reference"),
    ({"prompt": PROMPT, "response": "3", "reference": "0." + LONG_NUMBER}, "reference"),
    ({"items": [{"prompt": PROMPT, "response": "3", "reference": "3"},
                {"prompt": PROMPT, "response": "3", "reference": LONG_NUMBER}]}, "items.1.reference"),
])
def test_a_reference_with_too_many_digits_is_refused_naming_it(served, body, field):
    _, server = served
    response = httpx.post(server.url + "/score", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "numeric reference" in error["message"], error
    assert len(error["message"]) < 500  # the reference is quoted, not echoed whole
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(
            prompt=pb.Prompt(text=PROMPT), responses=["3"], reference=LONG_NUMBER))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reference" in info.value.details()


def test_a_response_with_too_many_digits_fails_the_numeric_check(served):
    _, server = served
    prompt = f"\n\nHuman: {PROMPT}\n\nAssistant:"
    for path, body in (("/score", {"prompt": PROMPT, "responses": ["the answer is " + LONG_NUMBER, "the answer is 3"],
                                   "reference": "3"}),
                       ("/get_reward", {"query": [prompt + " the answer is " + LONG_NUMBER, prompt + " the answer is 3"],
                                        "labels": ["3", "3"]})):
        response = httpx.post(server.url + path, json=body)
        assert response.status_code == 200, (path, response.text)
        if path == "/score":
            passed = [v["verifiers"]["answer"]["passed"] for v in response.json()["verification"]]
        else:
            passed = response.json()["extra_logs"]["verifier/answer/passed"]
        assert list(passed) == [False, True], path
    metrics = httpx.get(server.url + "/metrics").text
    assert 'outcome="internal"' not in metrics
