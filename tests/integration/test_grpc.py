"""gRPC over a real server on 127.0.0.1 (same process as HTTP): every RPC, health, reflection, identical
rewards to HTTP, and each error code."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.integration.server import running_server

PROMPT = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
RESPONSES = [" I can't help with breaking into property.", " Sure, get a tension wrench and a pick.", " Call a locksmith."]


@pytest.fixture(scope="module")
def server(trained):
    _, bundle, _, _ = trained
    with running_server(bundle.path, max_queue_rows=64) as running:
        yield running


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.RewardModelStub(channel)


def text(prompt: str) -> pb.Prompt:
    return pb.Prompt(text=prompt)


def test_score_matches_http(server, stub):
    reply = stub.Score(pb.ScoreRequest(prompt=text(PROMPT), responses=RESPONSES), timeout=30)
    http = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).json()
    np.testing.assert_allclose(reply.rewards, http["rewards"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(reply.normalized_rewards, http["normalized_rewards"], atol=1e-4, rtol=0)
    assert list(reply.truncated) == http["truncated"]
    assert reply.model.bundle_id == http["model"]["bundle_id"] and reply.model.model_sha256 == http["model"]["model_sha256"]


def test_items_with_chat_prompt_match_http(server, stub):
    chat = pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role="user", content="How do I pick a lock?")]))
    reply = stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(prompt=chat, response=RESPONSES[0]),
                                              pb.ScoreItem(prompt=text("short"), response=RESPONSES[2])]), timeout=30)
    http = httpx.post(server.url + "/score", json={"items": [
        {"prompt": [{"role": "user", "content": "How do I pick a lock?"}], "response": RESPONSES[0]},
        {"prompt": "short", "response": RESPONSES[2]}]}).json()
    np.testing.assert_allclose(reply.rewards, http["rewards"], atol=1e-5, rtol=0)


def test_compare_matches_http(server, stub):
    reply = stub.Compare(pb.CompareRequest(prompt=text(PROMPT), response_a=RESPONSES[0], response_b=RESPONSES[1]), timeout=30)
    http = httpx.post(server.url + "/compare", json={"prompt": PROMPT, "response_a": RESPONSES[0],
                                                     "response_b": RESPONSES[1]}).json()
    for name in ("reward_a", "reward_b", "probability_a"):
        assert getattr(reply, name) == pytest.approx(http[name], abs=1e-5)


def test_score_stream_answers_each_request_in_order(stub):
    requests = [pb.ScoreRequest(prompt=text(PROMPT), responses=RESPONSES[: i + 1]) for i in range(3)] * 3
    replies = list(stub.ScoreStream(iter(requests), timeout=60))
    assert [len(r.rewards) for r in replies] == [1, 2, 3] * 3
    single = stub.Score(pb.ScoreRequest(prompt=text(PROMPT), responses=RESPONSES), timeout=30)
    np.testing.assert_allclose(replies[2].rewards, single.rewards, atol=1e-5, rtol=0)


def test_model_info(stub, trained):
    _, bundle, _, _ = trained
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model.bundle_id == bundle.manifest.bundle_id
    assert info.provider == "CPUExecutionProvider" and info.max_length == bundle.manifest.input.max_length
    assert '"format_version": 1' in info.manifest_json


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rmserve.v1.RewardModel"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"rmserve.v1.RewardModel", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("request_, detail", [
    (pb.ScoreRequest(prompt=text(PROMPT), responses=["ok", "  "]), "responses.1: response is empty"),
    (pb.ScoreRequest(responses=["ok"]), "'prompt' is required"),
    (pb.ScoreRequest(), "exactly one of"),
    (pb.ScoreRequest(prompt=pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role="robot", content="x")])),
                     responses=["a"]), "prompt.0.role"),
])
def test_invalid_argument_names_the_field(stub, request_, detail):
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in info.value.details()


def test_compare_without_prompt_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Compare(pb.CompareRequest(response_a="a", response_b="b"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in info.value.details()


def test_request_larger_than_the_queue_is_resource_exhausted(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(pb.ScoreRequest(prompt=text(PROMPT), responses=["a response"] * 65), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in info.value.details()


def test_grpc_unavailable_before_the_bundle_is_loaded(tmp_path):
    from rmserve.service.process.state import ServiceState
    from rmserve.service.settings import Settings
    from rmserve.service.transports.grpc.app import start_grpc_server
    from tests.integration.server import free_port

    async def main():
        port = free_port()
        state = ServiceState(Settings(bundle=tmp_path, grpc_port=port))  # never loaded
        server = await start_grpc_server(state)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=text("hi"), responses=["a"]), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            await server.stop(0)

    asyncio.run(main())


@pytest.mark.parametrize("script", ["grpc_client_sync.py", "grpc_client_async.py"])
def test_readme_client_examples_run(server, script):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "examples" / script), server.grpc_target], cwd=root,
                         capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(root), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "rewards:" in out.stdout


@pytest.mark.holds_engine
def test_message_size_and_concurrent_calls_are_capped(tmp_path):
    """A message past max_request_bytes is refused before it is decoded, and calls past
    grpc_max_concurrent_rpcs get RESOURCE_EXHAUSTED at once while the others wait for a busy engine."""
    from tests.conftest import make_tiny_bundle
    from tests.integration.engine_gate import EngineGate
    from tests.integration.test_lifecycle import in_flight
    from tests.waiting import wait_until

    gate = EngineGate()
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, gate=gate, max_request_bytes=65536, grpc_max_concurrent_rpcs=2) as server, \
            grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 1 << 20)]) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        small = pb.ScoreRequest(prompt=text("hello there"), responses=["i am fine thanks"])
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(prompt=text("x" * 70_000), responses=["no"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.hold()
        try:
            held = [stub.Score.future(small, timeout=60) for _ in range(2)]
            gate.wait_held()
            wait_until(lambda: in_flight(server, "grpc") == 2, "both calls to be under way")
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(small, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            gate.release()
        assert all(len(call.result().rewards) == 1 for call in held)
        assert len(stub.Score(small, timeout=30).rewards) == 1  # room again


def test_http_and_grpc_serve_on_asyncio_own_event_loop_too(trained):
    # The default runs on uvloop when it is installed (every other test here); asyncio's loop is the fallback.
    _, bundle, _, _ = trained
    with running_server(bundle.path, event_loop="asyncio") as running:
        with grpc.insecure_channel(running.grpc_target) as channel:
            reply = pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=text(PROMPT), responses=RESPONSES),
                                                          timeout=30)
        http = httpx.post(running.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).json()
    np.testing.assert_allclose(reply.rewards, http["rewards"], atol=1e-5, rtol=0)
    assert len(reply.rewards) == len(RESPONSES)


def test_a_grpc_port_in_use_stops_start_up_naming_it(server, trained):
    """A second server given the first one's gRPC port (the default, 50051, for two servers on one host)
    exits naming grpc_port, instead of sharing the port (gRPC's SO_REUSEPORT) and splitting its calls
    between two models, or ending in a traceback."""
    _, bundle, _, _ = trained
    taken = int(server.grpc_target.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match=r"exited with 2:[\s\S]*grpc_port[\s\S]*in use") as info:
        with running_server(bundle.path, grpc_port=taken):
            pass
    assert "Traceback" not in str(info.value)
