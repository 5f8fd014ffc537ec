"""Process reward model bundles on a real server, over HTTP and gRPC: step rewards equal the bundle's engine
(sigmoid of its scores at the separators) whatever the batch, every aggregate, steps given or split from the
response, truncation keeping the last steps, group statistics of the aggregate, reward metrics, refusals
naming the field; and an outcome bundle refusing step requests."""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import pytest

from rmserve.group_stats import GROUP_EPS
from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from rmserve.service.core.bundle import load_bundle
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import join_steps
from rmserve.service.core.step_scores import activate
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server
from tests.prm_bundles import SEPARATOR, make_tiny_prm_bundle

PROMPT = "hello there how are you"
CHAINS = [["one two", "three four five six", "no"], ["i am fine"], ["sure", "seven eight", "nine", "ten ten ten"]]
AGGREGATE = {"min": np.min, "last": lambda r: r[-1], "mean": np.mean, "prod": np.prod}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_prm_bundle(tmp_path_factory.mktemp("prm") / "bundle", max_length=32)


@pytest.fixture(scope="module")
def server(bundle):
    with running_server(bundle) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.RewardModelStub(channel)


def engine_step_rewards(bundle, prompt, chains):
    """What the exported model gives each chain alone: sigmoid of its scores at the step separators."""
    loaded = load_bundle(bundle)
    engine, encoder = OnnxRewardModel.for_bundle(loaded, device="cpu"), loaded.encoder()
    return [activate(engine(encoder.pad(encoder.encode([(prompt, join_steps(c, SEPARATOR))])))[0]) for c in chains]


def test_http_step_rewards_equal_the_exported_models(server, bundle):
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": CHAINS}).json()
    expected = engine_step_rewards(bundle, PROMPT, CHAINS)
    assert [len(r) for r in answer["step_rewards"]] == [len(c) for c in CHAINS]
    for served, alone in zip(answer["step_rewards"], expected):
        np.testing.assert_allclose(served, alone, rtol=0, atol=1e-6)
    assert answer["aggregate"] == "min" and answer["steps_cut"] == [0, 0, 0]
    np.testing.assert_allclose(answer["rewards"], [min(r) for r in expected], rtol=0, atol=1e-6)
    assert answer["model"]["bundle_id"] == "tiny-prm"


@pytest.mark.parametrize("how", ["min", "last", "mean", "prod"])
def test_every_aggregate_over_http_and_grpc(server, stub, how):
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": CHAINS,
                                                     "aggregate": how}).json()
    assert answer["aggregate"] == how
    np.testing.assert_allclose(answer["rewards"], [AGGREGATE[how](np.array(r)) for r in answer["step_rewards"]],
                               rtol=1e-12)
    reply = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), response_steps=[pb.Steps(steps=c) for c in CHAINS],
                                       aggregate=getattr(pb, f"STEP_AGGREGATE_{how.upper()}")))
    assert reply.aggregate == how
    np.testing.assert_allclose(list(reply.rewards), answer["rewards"], rtol=0, atol=1e-12)
    for got, want in zip(reply.step_rewards, answer["step_rewards"]):
        np.testing.assert_allclose(list(got.rewards), want, rtol=0, atol=1e-12)


def test_steps_given_or_split_from_the_response_score_the_same(server):
    given = httpx.post(server.url + "/score", json={"prompt": PROMPT, "steps": CHAINS[0]}).json()
    whole = SEPARATOR.join(CHAINS[0])  # the trailing separator is optional
    split = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": [whole, whole + SEPARATOR]}).json()
    items = httpx.post(server.url + "/score", json={"items": [{"prompt": PROMPT, "steps": CHAINS[0]},
                                                              {"prompt": PROMPT, "response": whole}]}).json()
    for other in (split["step_rewards"][0], split["step_rewards"][1], *items["step_rewards"]):
        np.testing.assert_allclose(other, given["step_rewards"][0], rtol=0, atol=1e-7)


def test_group_statistics_use_the_aggregate(server):
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": CHAINS, "values": "group",
                                                     "aggregate": "mean"}).json()
    rewards = np.array(answer["rewards"])
    np.testing.assert_allclose(rewards, [np.mean(r) for r in answer["step_rewards"]], rtol=1e-12)
    mean, std = rewards.mean(), rewards.std()
    assert answer["group"]["mean"] == pytest.approx(mean) and answer["group"]["std"] == pytest.approx(std)
    np.testing.assert_allclose(answer["values"], (rewards - mean) / (std + GROUP_EPS), rtol=1e-9)


def test_truncation_keeps_the_last_steps_and_says_how_many_were_cut(server, bundle):
    long = ["one two three four five six seven eight nine ten"] * 5 + ["sure no"]
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "steps": long}).json()
    cut = answer["steps_cut"][0]
    assert cut >= 1 and answer["truncated"] == [True]
    assert len(answer["step_rewards"][0]) == len(long) - cut
    loaded = load_bundle(bundle)
    engine, encoder = OnnxRewardModel.for_bundle(loaded, device="cpu"), loaded.encoder()
    (row,) = encoder.encode([(PROMPT, join_steps(long, SEPARATOR))])
    assert row.steps_cut == cut
    np.testing.assert_allclose(answer["step_rewards"][0], activate(engine(encoder.pad([row]))[0]), atol=1e-7)


def metric(server, name):
    text = httpx.get(server.url + "/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def test_step_rows_are_counted_in_the_reward_metrics(server):
    rows, rewards = metric(server, "rmserve_scored_rows_total"), metric(server, "rmserve_reward_count")
    httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": CHAINS}).raise_for_status()
    assert metric(server, "rmserve_scored_rows_total") == rows + len(CHAINS)
    assert metric(server, "rmserve_reward_count") == rewards + len(CHAINS)


def test_trainer_protocols_answer_the_aggregate_of_the_step_rewards(server):
    """/get_reward and the vLLM routes score a whole text as /score splits a response: their reward is the
    aggregate of the step rewards, itself a probability, so vLLM's activation (on by default) leaves it as it
    is rather than applying a second sigmoid."""
    response = f"one two{SEPARATOR}three four five six{SEPARATOR}no"
    scored = httpx.post(server.url + "/score", json={"prompt": PROMPT + "\n\nAssistant:", "response": response}).json()
    text = f"{PROMPT}\n\nAssistant:{response}"
    openrlhf = httpx.post(server.url + "/get_reward", json={"query": [text]}).json()
    assert openrlhf["rewards"] == scored["rewards"]
    for path in ("/classify", "/pooling"):
        for activation in (None, True, False):
            body = {"model": "m", "input": [text]} | ({} if activation is None else {"activation": activation})
            answer = httpx.post(server.url + path, json=body).json()
            value = answer["data"][0]["probs" if path == "/classify" else "data"][0]
            assert value == pytest.approx(scored["rewards"][0], abs=1e-12), (path, activation)


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": PROMPT, "response_steps": [["one", f"two {SEPARATOR} three"]]}, "response_steps.0.1",
     "contains the step separator"),
    ({"prompt": PROMPT, "steps": ["one", "  "]}, "steps.1", "empty"),
    ({"prompt": PROMPT, "response_steps": [["one"], []]}, "response_steps.1", "no steps"),
    ({"prompt": f"hello {SEPARATOR}", "steps": ["one"]}, "prompt", "step separator"),
    ({"items": [{"prompt": PROMPT, "response": f"one{SEPARATOR}{SEPARATOR}two"}]}, "items.0.response", "empty"),
    ({"items": [{"prompt": PROMPT, "response": "one", "steps": ["one"]}]}, "items.0", "exactly one of"),
    ({"prompt": PROMPT, "steps": ["one"], "aggregate": "median"}, "aggregate", "'min', 'last', 'mean' or 'prod'"),
])
def test_bad_step_requests_name_the_field(server, body, field, message):
    response = httpx.post(server.url + "/score", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"], error


def test_grpc_refuses_a_bad_step_with_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(prompt=pb.Prompt(text=PROMPT),
                                                       steps=pb.Steps(steps=["one", f"x{SEPARATOR}"]))]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items.0.steps.1" in info.value.details()


@pytest.fixture(scope="module")
def outcome_server(tmp_path_factory):
    with running_server(make_tiny_bundle(tmp_path_factory.mktemp("outcome") / "bundle")) as running:
        yield running


@pytest.mark.parametrize("body, field", [
    ({"prompt": PROMPT, "steps": ["one", "two"]}, "steps"),
    ({"items": [{"prompt": PROMPT, "response": "no"}, {"prompt": PROMPT, "steps": ["one"]}]}, "items.1.steps"),
    ({"prompt": PROMPT, "responses": ["one"], "aggregate": "min"}, "aggregate"),
])
def test_an_outcome_bundle_refuses_step_requests(outcome_server, body, field):
    response = httpx.post(outcome_server.url + "/score", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field and "outcome reward model" in error["message"]
    plain = httpx.post(outcome_server.url + "/score", json={"prompt": PROMPT, "responses": ["no"]}).json()
    assert plain["step_rewards"] is None and plain["aggregate"] is None  # an outcome answer carries no steps


def test_an_outcome_bundle_refuses_steps_over_grpc(outcome_server):
    with grpc.insecure_channel(outcome_server.grpc_target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), response_steps=[pb.Steps(steps=["one"])]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outcome reward model" in info.value.details()
        reply = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=["no"]))
        assert not reply.step_rewards and reply.aggregate == ""


def scored_rows(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"^rmserve_scored_rows_total (\S+)$", text, re.M).group(1))


def test_a_separator_that_merges_with_the_step_text_is_refused_not_misread(tmp_path):
    """A separator that is one token on its own ("ten", a plain word here) merges with a step written
    against it ("nineten" is no word of the tokenizer): the engine would find fewer separators than steps,
    and the scores would belong to the wrong steps. The request is refused, naming the response; steps that
    keep the separator apart score."""
    from tokenizers import Tokenizer

    from rmserve.service.core.bundle import write_manifest

    directory = make_tiny_prm_bundle(tmp_path / "bundle")
    manifest = load_bundle(directory).manifest
    separator_id = Tokenizer.from_file(str(directory / "tokenizer.json")).token_to_id("ten")
    write_manifest(directory, manifest.model_copy(update={
        "input": manifest.input.model_copy(update={"step_separator": "ten", "step_separator_id": separator_id}),
        "golden": []}))
    with running_server(directory) as server:
        before = scored_rows(server.url)
        merged = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": [["one two", "nine"]]})
        refused_without_inference = scored_rows(server.url) == before
        apart = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": [["one two ", " nine "]]})
        assert scored_rows(server.url) == before + 1
    assert refused_without_inference  # the refusal comes from the tokenized rows, before the engine
    assert merged.status_code == 422, merged.text
    error = merged.json()["error"]
    assert error["field"] == "response_steps.0" and "2 steps sent" in error["message"], error
    assert apart.status_code == 200 and len(apart.json()["step_rewards"][0]) == 2, apart.text
