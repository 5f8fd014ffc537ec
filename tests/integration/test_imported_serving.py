"""Imported reward models served by the real server: one encoder (BERT) and two decoders with their chat
templates (Qwen2's ChatML, Llama 3's headers). Over HTTP and gRPC, every conversation that fits scores as
transformers' own fp32 forward of the templated text, within 1e-4; the one that does not fit is flagged
truncated; a conversation the model's template refuses is a 422 / INVALID_ARGUMENT naming the prompt."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmserve.proto import reward_pb2 as pb  # noqa: E402
from rmserve.proto import reward_pb2_grpc as pb_grpc  # noqa: E402
from rmserve.training.importer import import_model  # noqa: E402
from tests.chat_models import CONVERSATIONS, TRUNCATED, make_hub_model, transformers_scores  # noqa: E402
from tests.integration.server import running_server  # noqa: E402

MAX_LENGTH = 256
SOURCES: dict = {}  # name -> the hub model directory the served bundle was imported from


@pytest.fixture(scope="module", params=["bert", "qwen2", "llama"])
def served(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"served-{name}")
    source = SOURCES[name] = make_hub_model(root / "hub", name, seed=7)
    bundle = import_model(source, root / "bundle", max_length=MAX_LENGTH).bundle
    expected = transformers_scores(source, CONVERSATIONS[:TRUNCATED], bundle.manifest.model.architecture)
    assert all(score is not None for score in expected)
    with running_server(bundle.path) as server:
        yield name, server, np.array(expected)


def prompt_proto(prompt) -> pb.Prompt:
    if isinstance(prompt, str):
        return pb.Prompt(text=prompt)
    return pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                                        for m in prompt]))


def check(name, rewards, truncated, expected) -> None:
    assert truncated == [i == TRUNCATED for i in range(len(CONVERSATIONS))], name
    np.testing.assert_allclose(rewards[:TRUNCATED], expected, atol=1e-4, rtol=0, err_msg=name)
    assert np.ptp(expected) > 1e-3  # the rows really differ, so a mix-up would show


def test_http_scores_are_transformers_forward(served):
    name, server, expected = served
    items = [{"prompt": prompt, "response": response} for prompt, response in CONVERSATIONS]
    body = httpx.post(server.url + "/score", json={"items": items}, timeout=60).json()
    check(name, np.array(body["rewards"]), body["truncated"], expected)


def test_grpc_scores_are_transformers_forward(served):
    name, server, expected = served
    items = [pb.ScoreItem(prompt=prompt_proto(prompt), response=response) for prompt, response in CONVERSATIONS]
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(items=items), timeout=60)
    check(name, np.array(reply.rewards), list(reply.truncated), expected)


def test_one_prompt_many_responses_score_as_each_alone(served):
    name, server, _ = served
    prompt = CONVERSATIONS[3][0]
    responses = [response for _, response in CONVERSATIONS[:12]]
    group = httpx.post(server.url + "/score", json={"prompt": prompt, "responses": responses}, timeout=60).json()
    alone = [httpx.post(server.url + "/score", json={"prompt": prompt, "responses": [r]}, timeout=60).json()["rewards"][0]
             for r in responses]
    np.testing.assert_allclose(group["rewards"], alone, atol=1e-5, rtol=0, err_msg=name)


def test_a_conversation_the_template_refuses_is_a_client_error(served):
    name, server, _ = served
    if name != "llama":
        pytest.skip("of these templates, only Llama 3's refuses a conversation (roles must alternate)")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    body = {"items": [{"prompt": "fine", "response": "ok"}, {"prompt": twice, "response": "ok"}]}
    reply = httpx.post(server.url + "/score", json=body, timeout=30)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["kind"] == "validation" and error["field"] == "items.1.prompt"
    assert "roles must alternate" in error["message"]
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=prompt_proto(twice), responses=["ok"]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "roles must alternate" in refused.value.details()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200  # the server stays up


def test_formatted_text_from_the_trainers_protocols_scores_as_the_conversation(served):
    """verl's /classify `input` and OpenRLHF's /get_reward `query` carry the conversation already formatted
    by the model's template: scored as it is, it gives transformers' reward for that conversation."""
    import transformers

    from tests.chat_models import conversation

    name, server, expected = served
    if name == "bert":
        pytest.skip("an encoder has no chat template: its formatted text is split as /get_reward splits it")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(SOURCES[name]))
    texts = [tokenizer.apply_chat_template(conversation(prompt, response), tokenize=False)
             for prompt, response in CONVERSATIONS[:TRUNCATED]]
    classify = httpx.post(server.url + "/classify", json={"model": "rm", "input": texts, "activation": False},
                          timeout=60).json()
    np.testing.assert_allclose([d["probs"][-1] for d in classify["data"]], expected, atol=1e-4, rtol=0, err_msg=name)
    reward = httpx.post(server.url + "/get_reward", json={"query": texts}, timeout=60).json()
    np.testing.assert_allclose(reward["rewards"], expected, atol=1e-4, rtol=0, err_msg=name)
