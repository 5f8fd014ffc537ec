"""API keys on HTTP and gRPC: 401 / UNAUTHENTICATED without a valid key; health and metrics stay open."""

import socket

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
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


# Every endpoint that scores or describes the model, on both protocols.

HTTP_ENDPOINTS = [
    ("post", "/score", {"prompt": "hello there", "responses": ["i am fine thanks", "no"]}),
    ("post", "/compare", {"prompt": "hello there", "response_a": "i am fine thanks", "response_b": "no"}),
    ("post", "/get_reward", {"query": ["\n\nHuman: hello there\n\nAssistant: i am fine thanks"]}),
    ("get", "/v1/model", None),
    # vLLM's pooling API (service/transports/http/vllm.py), which refuses in vLLM's error shape.
    ("post", "/classify", {"input": "\n\nHuman: hello there\n\nAssistant: i am fine thanks"}),
    ("post", "/v1/classify", {"input": "\n\nHuman: hello there\n\nAssistant: i am fine thanks"}),
    ("post", "/pooling", {"messages": [{"role": "user", "content": "hello there"},
                                       {"role": "assistant", "content": "i am fine thanks"}]}),
    ("get", "/v1/models", None),
]
VLLM_PATHS = {"/classify", "/v1/classify", "/pooling", "/v1/models"}


@pytest.mark.parametrize("method, path, body", HTTP_ENDPOINTS, ids=[e[1] for e in HTTP_ENDPOINTS])
def test_every_http_scoring_endpoint_needs_a_key(server, method, path, body):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "key-one"}):
        response = httpx.request(method, server.url + path, json=body, headers=headers)
        assert response.status_code == 401, (path, headers)
        error = response.json()["error"]
        if path in VLLM_PATHS:
            assert error == {"type": "AuthenticationError", "param": "authorization", "code": 401,
                             "message": error["message"]}
        else:
            assert error == {"kind": "unauthenticated", "field": "authorization", "message": error["message"]}
    ok = httpx.request(method, server.url + path, json=body, headers={"authorization": "Bearer key-from-file"},
                       timeout=30)
    assert ok.status_code == 200, ok.text


def grpc_calls(stub):
    prompt = pb.Prompt(text="hello there")
    score = pb.ScoreRequest(prompt=prompt, responses=["i am fine thanks"])
    return {
        "Score": lambda md: stub.Score(score, timeout=10, metadata=md),
        "Compare": lambda md: stub.Compare(pb.CompareRequest(prompt=prompt, response_a="yes", response_b="no"),
                                           timeout=10, metadata=md),
        "ScoreStream": lambda md: list(stub.ScoreStream(iter([score, score]), timeout=10, metadata=md)),
        "GetModelInfo": lambda md: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=md),
    }


@pytest.mark.parametrize("method", ["Score", "Compare", "ScoreStream", "GetModelInfo"])
def test_every_grpc_method_needs_a_key(server, method):
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = grpc_calls(pb_grpc.RewardModelStub(channel))[method]
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "key-one")]):
            with pytest.raises(grpc.RpcError) as info:
                call(metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
        assert call([("authorization", "Bearer key-one")])


def test_every_scoring_route_is_covered_by_these_tests(server):
    """A scoring route added later must be added to HTTP_ENDPOINTS (or grpc_calls) too."""
    schema = httpx.get(server.url + "/openapi.json").json()
    open_routes = {"/healthz", "/readyz", "/metrics", "/admin/reload"}  # admin: its own key (test_reload.py)
    assert set(schema["paths"]) - open_routes == {path for _, path, _ in HTTP_ENDPOINTS}
    from rmserve.proto import reward_pb2
    from rmserve.service.transports.grpc.app import SERVICE_NAME

    methods = {m.name for m in reward_pb2.DESCRIPTOR.services_by_name["RewardModel"].methods}
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert methods == set(grpc_calls(pb_grpc.RewardModelStub(channel))), SERVICE_NAME


def test_health_and_metrics_can_be_protected(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, api_keys="key-one", protect_health_and_metrics="true") as server:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(server.url + path).status_code == 401, path
            assert httpx.get(server.url + path, headers={"authorization": "Bearer nope"}).status_code == 401, path
            assert httpx.get(server.url + path, headers={"authorization": "Bearer key-one"}).status_code == 200, path
        with grpc.insecure_channel(server.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                next(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5,
                                 metadata=[("authorization", "Bearer key-one")])
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_undecodable_grpc_message_without_a_key_is_unauthenticated(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        raw = channel.unary_unary("/rmserve.v1.RewardModel/Score", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x12\x02\xff\xfe", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x12\x02\xff\xfe", timeout=10, metadata=[("authorization", "Bearer key-one")])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_matched_whatever_its_case(server, scheme):
    headers = {"authorization": f"{scheme} key-one"}
    assert httpx.post(server.url + "/score", json=BODY, headers=headers).status_code == 200
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert grpc_calls(pb_grpc.RewardModelStub(channel))["Score"](list(headers.items()))


def test_a_public_address_without_keys_serves_with_allow_unauthenticated_and_warns(tmp_path):
    """The other half of the refusal (tests/unit/test_settings_cli.py): said on purpose, it starts, and the
    log says that anyone who can reach the address can use the model."""
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, host="0.0.0.0", allow_unauthenticated="true") as server:
        assert httpx.post(server.url + "/score", json=BODY).status_code == 200
        log = tmp_path / f"server-{server.url.rsplit(':', 1)[1]}.log"
        warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
    assert any("without API keys" in line and "0.0.0.0" in line for line in warnings), warnings


def test_an_ipv6_address_serves_http_and_grpc(tmp_path):
    """`--host ::` (every IPv6 address; reached here on [::1]): gRPC must be given it in brackets, or it reads
    `:::PORT` as a misformatted name and the server exits at start."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, host="::", allow_unauthenticated="true") as server:
        assert httpx.post(server.url + "/score", json=BODY).status_code == 200
        with grpc.insecure_channel(server.grpc_target) as channel:
            assert grpc_calls(pb_grpc.RewardModelStub(channel))["Score"]([])
