"""API keys on HTTP and gRPC: 401 / UNAUTHENTICATED without a valid key; health and metrics stay open."""

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc_gen import reward_pb2 as pb
from service.grpc_gen import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

BODY = {"prompt": "hello there", "response": "i am fine thanks"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    bundle = make_tiny_bundle(root / "bundle")
    (root / "keys.txt").write_text("# operators\nkey-from-file\n")
    with running_server(bundle, api_keys="key-one,key-two", api_keys_file=str(root / "keys.txt")) as running:
        yield running


@pytest.mark.parametrize("header", [None, "Bearer wrong", "key-one", "Basic key-one"])
def test_http_refuses_without_a_valid_key(server, header):
    headers = {"authorization": header} if header else {}
    response = httpx.post(server.url + "/score", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["kind"] == "unauthenticated"
    assert httpx.get(server.url + "/v1/model", headers=headers).status_code == 401


@pytest.mark.parametrize("key", ["key-one", "key-two", "key-from-file"])
def test_http_accepts_each_configured_key(server, key):
    response = httpx.post(server.url + "/score", json=BODY, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_health_and_metrics_stay_open(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert "rmserve_requests_total" in httpx.get(server.url + "/metrics").text


def test_grpc_unauthenticated_without_key_and_ok_with_it(server):
    request = pb.ScoreRequest(prompt=pb.Prompt(text="hello there"), responses=["i am fine thanks"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(request, timeout=10, metadata=[("authorization", "Bearer nope")])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Score(request, timeout=10, metadata=[("authorization", "Bearer key-two")])
        assert len(reply.rewards) == 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
