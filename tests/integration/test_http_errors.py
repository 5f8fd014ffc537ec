"""Bad input gets a 422 naming the field, and the server stays up (real server, tiny real bundle)."""

import httpx
import pytest

from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("http") / "bundle")
    with running_server(bundle, max_responses_per_request=4) as running:
        yield running.url


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": "hi", "responses": ["ok", "   "]}, "responses.1", "empty"),
    ({"prompt": "hi", "responses": ["ok", 7]}, "responses.1", "valid string"),
    ({"prompt": "hi", "responses": []}, "responses", "at least 1"),
    ({"prompt": "hi"}, None, "exactly one of"),
    ({"responses": ["a"]}, "prompt", "'prompt' is required"),
    ({"prompt": "hi", "response": "a", "extra": 1}, "extra", "Extra inputs"),
    ({"prompt": [{"role": "robot", "content": "x"}], "response": "a"}, "prompt.0.role", "'system', 'user' or 'assistant'"),
    ({"prompt": "hi", "responses": ["a"] * 5}, "responses", "limit is 4"),
    ({"items": [{"prompt": "a", "response": ""}]}, "items.0.response", "empty"),
])
def test_score_validation_errors_name_the_field(server, body, field, message):
    response = httpx.post(server + "/score", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["kind"] == "validation" and error["field"] == field
    assert message in error["message"]


def test_malformed_json_is_a_422(server):
    response = httpx.post(server + "/score", content=b'{"prompt": "x"', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body" and "not valid JSON" in response.json()["error"]["message"]


def test_an_integer_longer_than_python_reads_is_a_422_in_the_services_words(server):
    body = b'{"prompt": "hi", "response": "ok", "reference": ' + b"9" * 5000 + b"}"
    response = httpx.post(server + "/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "body" and "a number of more than 4300 digits" in error["message"], error
    assert "sys." not in error["message"]  # no advice meant for whoever runs the server


def test_compare_missing_field(server):
    response = httpx.post(server + "/compare", json={"prompt": "hi", "response_a": "yes"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "response_b"


def test_server_still_serves_after_bad_input(server):
    httpx.post(server + "/score", content=b"\xff\xfe", headers={"content-type": "application/json"})
    ok = httpx.post(server + "/score", json={"prompt": "hello there", "response": "i am fine thanks"})
    assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
    assert 'outcome="invalid"' in httpx.get(server + "/metrics").text


def test_an_engine_failure_is_internal_with_a_reference_and_none_of_its_text(tmp_path):
    """ONNX Runtime's own message (node names, paths) goes to the server log under a reference; HTTP and
    gRPC clients get INTERNAL with that reference only, and the server goes on serving."""
    import grpc

    from rmserve.proto import reward_pb2 as pb
    from rmserve.proto import reward_pb2_grpc as pb_grpc
    from tests.conftest import make_tiny_bundle
    from tests.integration.engine_gate import ENGINE_FAILURE, EngineGate
    from tests.integration.server import running_server

    gate = EngineGate()
    with running_server(make_tiny_bundle(tmp_path / "bundle"), gate=gate) as server:
        gate.fail_next()
        failed = httpx.post(server.url + "/score", json={"prompt": "hello there", "response": "i am fine thanks"})
        assert failed.status_code == 500, failed.text
        error = failed.json()["error"]
        assert error["kind"] == "internal" and "reference" in error["message"], error
        references = [error["message"].rsplit(" ", 1)[-1].rstrip(")")]
        gate.fail_next()  # vLLM's pooling API, in vLLM's error shape
        failed_vllm = httpx.post(server.url + "/classify", json={"input": "\n\nHuman: hello there\n\nAssistant: i am fine"})
        assert failed_vllm.status_code == 500 and "reference" in failed_vllm.json()["error"]["message"], failed_vllm.text
        references.append(failed_vllm.json()["error"]["message"].rsplit(" ", 1)[-1].rstrip(")"))
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.RewardModelStub(channel)
            gate.fail_next()
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text="hello there"), responses=["no"]), timeout=30)
            assert info.value.code() == grpc.StatusCode.INTERNAL and "reference" in info.value.details()
            references.append(info.value.details().rsplit(" ", 1)[-1].rstrip(")"))
            for told in (failed.text, failed_vllm.text, info.value.details()):
                assert "ONNXRuntimeError" not in told and "/opt/models" not in told and "RuntimeError" not in told
            assert len(stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["ok"]), timeout=30).rewards) == 1
        assert httpx.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}).status_code == 200
        log = (tmp_path / f"server-{server.url.rsplit(':', 1)[1]}.log").read_text()
    for reference in references:  # each reference finds the engine's own text in the log
        assert ENGINE_FAILURE in log.split(reference, 1)[1][:3000], reference
