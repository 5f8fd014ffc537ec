"""vLLM's pooling API on real servers (service/transports/http/vllm.py): requests built and read exactly as
verl's reward loop builds and reads them get /score's raw reward for the same conversation; the chat form,
list inputs, /pooling, both activation flags, /v1/models; every answer validates against vLLM 0.33.0's
response classes (tests/integration/vllm_033.py), errors included.

Two bundles: the tiny pair-template encoder (text input is split after "\\n\\nAssistant:", as /get_reward
splits queries) and the same model with a concatenating join (text input is scored as one sequence)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from rmserve.service.core.bundle import Manifest, ModelInfo, Normalization, write_manifest
from rmserve.service.core.inputs import InputSpec
from tests.conftest import build_tiny_onnx, build_tiny_tokenizer, make_tiny_bundle
from tests.integration import vllm_033
from tests.integration.engine_gate import EngineGate
from tests.integration.server import running_server
from tests.waiting import wait_until

KEY = "vllm-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL_PATH = "/models/tiny-reward"  # verl sends its config's reward-model path as `model`
# A chat template in the bundle's own format (role prefixes "\n\nHuman: ", "\n\nAssistant: "); the one in
# the concatenating case writes BOS first, as Llama's do, and verl strips it.
HH_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '\\n\\nHuman: ' }}{% elif m['role'] == "
               "'assistant' %}{{ '\\n\\nAssistant: ' }}{% endif %}{{ m['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}")
CONVERSATIONS = [  # (raw prompt, rollout response)
    ([{"role": "user", "content": "how are you today?"}], "i am fine thanks"),
    ([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello there"},
      {"role": "user", "content": "can you help with a lock?"}], "sure, i can help with that lock"),
    ([{"role": "system", "content": "you help."}, {"role": "user", "content": "one two three?"}], "four five six"),
]


def make_concat_bundle(directory):
    """The tiny bundle's tokenizer and model, joined as decoders are: one sequence, [CLS] prompt response [SEP]."""
    directory.mkdir(parents=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    build_tiny_onnx(directory / "model.onnx", tokenizer.get_vocab_size())
    write_manifest(directory, Manifest(
        bundle_id="tiny-concat", input=InputSpec(max_length=40, join="concat", pad_id=0),
        model=ModelInfo(base_model="tiny-test", vocab_size=tokenizer.get_vocab_size(), onnx_opset=17),
        normalization=Normalization(mean=0.5, std=2.0, computed_on="test", version="test-1")))
    return directory


@dataclass(frozen=True)
class Served:
    url: str
    join: str  # the bundle's: "pair" or "concat"


@pytest.fixture(scope="module", params=["pair", "concat"])
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"vllm-{request.param}")
    bundle = (make_tiny_bundle(root / "bundle", max_length=40) if request.param == "pair"
              else make_concat_bundle(root / "bundle"))
    with running_server(bundle, api_keys=KEY, max_responses_per_request=4) as running:
        yield Served(running.url, request.param)


def rm_tokenizer(join: str):
    """The reward model's Hugging Face tokenizer, as verl loads it (transformers)."""
    transformers = pytest.importorskip("transformers")
    bos = "[CLS]" if join == "concat" else None
    template = ("{{ bos_token }}" if bos else "") + HH_TEMPLATE
    return transformers.PreTrainedTokenizerFast(tokenizer_object=build_tiny_tokenizer(), bos_token=bos,
                                                chat_template=template)


def verl_rm_prompt(tokenizer, raw_prompt, rollout_response) -> str:
    """verl's RewardLoopWorker._preprocess_reward_inputs (verl/experimental/reward_loop/reward_loop.py)."""
    chat = list(raw_prompt)
    chat.append({"role": "assistant", "content": rollout_response})
    rm_prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
    if tokenizer.bos_token is not None and rm_prompt.startswith(tokenizer.bos_token):
        rm_prompt = rm_prompt[len(tokenizer.bos_token):]
    return rm_prompt


def verl_compute_score(server, rm_prompt: str) -> float:
    """verl's compute_score_disrm for engine "vllm": its payload, its endpoint, and how it reads the answer."""
    payloads = {"model": MODEL_PATH, "input": rm_prompt, "activation": False}
    resp = httpx.post(f"{server.url}/classify", json=payloads, headers=AUTH, timeout=60)
    resp.raise_for_status()
    output = resp.json()
    vllm_033.ClassificationResponse.model_validate(output)
    return output["data"][-1]["probs"][-1]


def score_raw(server, raw_prompt, response) -> float:
    answer = httpx.post(server.url + "/score", json={"prompt": raw_prompt, "response": response}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["rewards"][0]


def classify(server, body, path="/classify", status=200):
    answer = httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)
    assert answer.status_code == status, answer.text
    return answer.json()


def test_verl_requests_get_the_raw_reward_of_score(server):
    tokenizer = rm_tokenizer(server.join)
    for raw_prompt, response in CONVERSATIONS:
        rm_prompt = verl_rm_prompt(tokenizer, raw_prompt, response)
        assert not rm_prompt.startswith("[CLS]")
        reward = verl_compute_score(server, rm_prompt)
        assert math.isfinite(reward)
        assert reward == pytest.approx(score_raw(server, raw_prompt, response), abs=1e-5)


def test_a_conversation_longer_than_max_length_is_cut_as_score_cuts_it(server):
    raw_prompt = [{"role": "user", "content": "hello there how are you doing today my friend " * 8}]
    response = "i am fine thanks , one two three four five six seven eight nine ten"
    reward = verl_compute_score(server, verl_rm_prompt(rm_tokenizer(server.join), raw_prompt, response))
    assert reward == pytest.approx(score_raw(server, raw_prompt, response), abs=1e-5)


def test_the_chat_form_scores_the_last_message_against_the_ones_before(server):
    for raw_prompt, response in CONVERSATIONS:
        messages = [*raw_prompt, {"role": "assistant", "content": response}]
        body = classify(server, {"model": MODEL_PATH, "messages": messages, "use_activation": False})
        vllm_033.ClassificationResponse.model_validate(body)
        assert body["data"][0]["probs"] == [pytest.approx(score_raw(server, raw_prompt, response), abs=1e-5)]


def test_list_inputs_answer_one_item_each_in_order_across_chunks(server):
    tokenizer = rm_tokenizer(server.join)
    pairs = [(p, r) for p, r in CONVERSATIONS] + [(CONVERSATIONS[0][0], f"{w} i am fine") for w in ("one", "two", "no")]
    texts = [verl_rm_prompt(tokenizer, p, r) for p, r in pairs]  # 6 inputs: two chunks of the server's 4
    body = classify(server, {"input": texts, "use_activation": False, "request_id": "step-7"})
    answer = vllm_033.ClassificationResponse.model_validate(body)
    assert answer.id == "classify-step-7" and answer.object == "list" and answer.model == f"tiny{'-concat' * (server.join == 'concat')}"
    assert [d.index for d in answer.data] == list(range(6))
    assert all(d.num_classes == 1 and d.label == "reward" for d in answer.data)
    expected = [score_raw(server, p, r) for p, r in pairs]
    np.testing.assert_allclose([d.probs[0] for d in answer.data], expected, atol=1e-5, rtol=0)
    singles = [classify(server, {"input": t})["usage"]["prompt_tokens"] for t in texts]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(singles) > 6


def test_activation_flags_both_names_and_the_default(server):
    text = verl_rm_prompt(rm_tokenizer(server.join), *CONVERSATIONS[0])
    raw = classify(server, {"input": text, "activation": False})["data"][0]["probs"][0]
    assert classify(server, {"input": text, "use_activation": False})["data"][0]["probs"][0] == raw
    manifest = httpx.get(server.url + "/v1/model", headers=AUTH).json()["manifest"]
    mean, temperature = manifest["normalization"]["mean"], manifest["calibration"]["temperature"]
    calibrated = 1 / (1 + math.exp(-(raw - mean) / temperature))
    for flags in ({"use_activation": True}, {"activation": True}, {}, {"use_activation": True, "activation": True}):
        assert classify(server, {"input": text, **flags})["data"][0]["probs"][0] == pytest.approx(calibrated, abs=1e-9)
    error = classify(server, {"input": text, "use_activation": True, "activation": False}, status=400)
    assert vllm_033.ErrorResponse.model_validate(error).error.param == "activation"


def test_pooling_answers_one_value_per_input(server):
    text = verl_rm_prompt(rm_tokenizer(server.join), *CONVERSATIONS[1])
    raw = score_raw(server, *CONVERSATIONS[1])
    for body, expected in (({"input": [text, text], "use_activation": False}, raw),
                           ({"input": text, "task": "classify", "encoding_format": "float", "activation": False}, raw)):
        answer = vllm_033.PoolingResponse.model_validate(classify(server, body, "/pooling"))
        assert answer.id.startswith("pool-") and all(d.object == "pooling" for d in answer.data)
        assert [d.index for d in answer.data] == list(range(len(answer.data)))
        assert all(d.data == [pytest.approx(expected, abs=1e-5)] for d in answer.data)
    sglang = classify(server, {"input": text, "use_activation": False}, "/v1/classify")  # SGLang's path
    assert sglang["data"][0]["probs"] == [pytest.approx(raw, abs=1e-5)]


def test_v1_models_lists_the_served_bundle(server):
    answer = httpx.get(server.url + "/v1/models", headers=AUTH)
    assert answer.status_code == 200
    models = vllm_033.ModelList.model_validate(answer.json())
    manifest = httpx.get(server.url + "/v1/model", headers=AUTH).json()["manifest"]
    (card,) = models.data
    assert card.id == manifest["bundle_id"] and card.max_model_len == manifest["input"]["max_length"]
    assert card.object == "model" and card.created > 0


@pytest.mark.parametrize("path, body, status, param, words", [
    ("/classify", {"input": ["\n\nHuman: hi\n\nAssistant: fine", "no assistant turn"]}, "split", "input.1", "messages"),
    ("/classify", {"input": [1, 2, 3]}, 400, "input", "token ids"),
    ("/classify", {"input": []}, 400, "input", "empty"),
    ("/classify", {"model": "x"}, 400, "input", "exactly one"),
    ("/classify", {"input": 7}, 400, "input", "valid string"),
    ("/classify", {"input": "a", "use_activation": "false"}, 400, "use_activation", "boolean"),
    ("/classify", {"messages": [{"role": "user", "content": "hi"}]}, 400, "messages", "at least 2"),
    ("/classify", {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}, 400,
     "messages.1.role", "assistant"),
    ("/classify", {"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages.0.role", ""),
    ("/classify", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, 422,
     "messages.1.content", "empty"),
    ("/classify", {"input": "x", "truncation_side": "right"}, 400, "truncation_side", "left"),
    ("/classify", {"input": "x", "truncate_prompt_tokens": 8}, 400, "truncate_prompt_tokens", "max_length (40)"),
    ("/classify", {"input": "x", "truncate_prompt_tokens": 4096}, 400, "truncate_prompt_tokens", "greater"),
    ("/classify", {"input": "x", "add_special_tokens": False}, 400, "add_special_tokens", "special tokens"),
    ("/classify", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                   "add_special_tokens": True}, 400, "add_special_tokens", "template"),
    ("/classify", {"input": "x", "chat_template": "{{ messages }}"}, 400, "chat_template", "bundle"),
    ("/classify", {"input": "x", "normalize": False}, 400, "normalize", "use_activation"),
    ("/pooling", {"input": "x", "task": "token_classify"}, 400, "task", "classify"),
    ("/pooling", {"input": "x", "encoding_format": "base64"}, 400, "encoding_format", "float"),
])
def test_errors_have_vllms_shape_and_name_the_field(server, path, body, status, param, words):
    if status == "split":  # text the pair-template bundle cannot split; a concatenating one scores it whole
        status = 422 if server.join == "pair" else 200
    answer = httpx.post(server.url + path, json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    if status == 200:
        return
    error = vllm_033.ErrorResponse.model_validate(answer.json()).error
    assert error.code == status and error.param == param and words in error.message, error
    assert error.type in {400: ("BadRequestError", "Bad Request"), 422: ("UnprocessableEntityError",)}[status]


def test_truncation_options_at_the_bundles_values_are_accepted(server):
    text = verl_rm_prompt(rm_tokenizer(server.join), *CONVERSATIONS[0])
    raw = classify(server, {"input": text, "activation": False})["data"][0]["probs"][0]
    for options in ({"truncate_prompt_tokens": -1}, {"truncate_prompt_tokens": 40}, {"truncation_side": "left"},
                    {"add_special_tokens": True}):
        assert classify(server, {"input": text, "activation": False, **options})["data"][0]["probs"][0] == raw


def test_a_missing_key_is_401_and_requests_are_counted(server):
    classify(server, {"input": "\n\nHuman: hi\n\nAssistant: fine"})
    classify(server, {"input": "\n\nHuman: hi\n\nAssistant: fine"}, "/pooling")
    answer = httpx.post(server.url + "/classify", json={"input": "x"})
    assert answer.status_code == 401
    assert vllm_033.ErrorResponse.model_validate(answer.json()).error.type == "AuthenticationError"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'rmserve_requests_total{endpoint="/classify",outcome="ok",protocol="http"}' in metrics
    assert 'rmserve_requests_total{endpoint="/classify",outcome="unauthenticated",protocol="http"}' in metrics
    assert 'rmserve_request_duration_seconds_count{endpoint="/pooling",protocol="http"}' in metrics


@pytest.mark.holds_engine
def test_a_full_queue_is_503_with_retry_after_so_that_verl_retries(tmp_path):
    """verl retries 5xx answers and gives up at once on 4xx: overload is answered 503 here, not 429."""
    gate = EngineGate()
    with running_server(make_tiny_bundle(tmp_path / "bundle"), gate=gate, max_queue_rows=1) as server:
        gate.hold()
        busy = [threading.Thread(target=httpx.post, args=(server.url + "/score",),
                                 kwargs={"json": {"prompt": "a", "response": w}, "timeout": 120}) for w in ("b", "c")]
        busy[0].start()
        assert gate.wait_held() == 1  # one row in the engine
        busy[1].start()
        wait_until(lambda: "rmserve_queue_depth 1.0" in httpx.get(server.url + "/metrics").text, "a row to be queued")
        answer = httpx.post(server.url + "/classify", json={"input": "\n\nHuman: hi\n\nAssistant: fine"})
        gate.release()
        for thread in busy:
            thread.join(60)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    error = vllm_033.ErrorResponse.model_validate(answer.json()).error
    assert error.type == "ServiceUnavailableError" and error.code == 503
