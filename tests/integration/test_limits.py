"""Input limits, malformed input and deadlines on both transports, against real servers: every
refusal is a 4xx / INVALID_ARGUMENT (or 504 / DEADLINE_EXCEEDED) naming the field and the limit, never
a 500, and the server keeps serving."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading

import grpc
import httpx
import pytest

from rmserve.client import NO_RETRIES, GrpcRewardClient, RewardClient
from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.engine_gate import EngineGate
from tests.integration.server import running_server
from tests.integration.slow_bundle import make_slow_bundle
from tests.waiting import wait_until

LIMITS = {"max_text_chars": 50, "max_messages": 3, "max_request_bytes": 4096, "max_json_depth": 8,
          "max_responses_per_request": 4}
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("limits") / "bundle")
    with running_server(bundle, **LIMITS) as running:
        yield running


def post(server, path, content, headers=None):
    return httpx.post(server.url + path, content=content,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=30)


@pytest.mark.parametrize("path, body, status, field, message", [
    # limits
    ("/score", {"prompt": "hi", "response": "x" * 51}, 422, "response", "limit is 50 (max_text_chars)"),
    ("/score", {"prompt": "p" * 51, "responses": ["ok"]}, 422, "prompt", "limit is 50 (max_text_chars)"),
    ("/score", {"items": [{"prompt": "hi", "response": "ok"}, {"prompt": "p" * 51, "response": "ok"}]}, 422,
     "items.1.prompt", "max_text_chars"),
    ("/score", {"prompt": [{"role": "user", "content": "c" * 51}], "response": "ok"}, 422, "prompt.0.content",
     "max_text_chars"),
    ("/score", {"prompt": CHAT * 4, "response": "ok"}, 422, "prompt", "limit is 3 (max_messages)"),
    ("/score", {"prompt": "hi", "responses": ["a"] * 5}, 422, "responses", "limit is 4"),
    ("/compare", {"prompt": "hi", "response_a": "x" * 51, "response_b": "ok"}, 422, "response_a", "max_text_chars"),
    ("/get_reward", {"query": ["\n\nHuman: hi\n\nAssistant: " + "x" * 51]}, 422, "query.0", "max_text_chars"),
    # malformed
    ("/score", {"prompt": "hi", "response": " \n\t"}, 422, "response", "empty or whitespace"),
    ("/score", {"prompt": "hi", "response": ""}, 422, "response", "empty or whitespace"),
    ("/compare", {"prompt": "hi", "response_a": "ok", "response_b": "  "}, 422, "response_b", "empty"),
    ("/score", {"prompt": "hi", "responses": []}, 422, "responses", "at least 1"),
    ("/score", {"items": []}, 422, "items", "at least 1"),
    ("/score", {"prompt": [], "response": "ok"}, 422, "prompt", "at least 1 message"),
    ("/get_reward", {"query": []}, 422, "query", "at least 1"),
    ("/score", {"prompt": "hi", "response": 7}, 422, "response", "valid string"),
    ("/score", {"prompt": 7, "response": "ok"}, 422, "prompt", "valid"),
    ("/score", {"prompt": "hi", "responses": "ok"}, 422, "responses", "valid list"),
    ("/score", {"prompt": "hi", "response": None}, 422, None, "exactly one of"),
    ("/score", {"response": "ok"}, 422, "prompt", "'prompt' is required with 'response'"),
    ("/score", {"prompt": None, "responses": ["ok"]}, 422, "prompt", "'prompt' is required with 'responses'"),
    ("/score", {"prompt": "hi", "items": [{"prompt": "hi", "response": "ok"}]}, 422, "prompt", "inside each item"),
    ("/score", {"reference": "3", "items": [{"prompt": "hi", "response": "ok"}]}, 422, "reference", "inside each item"),
    ("/score", {"items": [{"prompt": "hi", "response": "ok"}, {"prompt": "hi"}]}, 422, "items.1", "exactly one of"),
    ("/score", {"prompt": [{"role": "user"}], "response": "ok"}, 422, "prompt.0.content", "Field required"),
    ("/score", {"prompt": [{"role": "user", "content": "a", "name": "x"}], "response": "ok"}, 422, "prompt.0.name",
     "Extra inputs"),
    ("/compare", {"prompt": "hi", "response_a": "a", "response_b": "b", "temperature": 2}, 422, "temperature",
     "Extra inputs"),
    ("/score", {"prompt": "hi", "response": "ok", "values": "median"}, 422, "values", "'raw', 'normalized' or 'group'"),
    ("/score", [1, 2], 422, None, "valid dictionary"),
])
def test_limits_and_malformed_json_name_the_field(server, path, body, status, field, message):
    response = post(server, path, json.dumps(body))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == "validation" and error["field"] == field, error
    assert message in error["message"], error


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "hi", "response": NaN}', "NaN is not a JSON number"),
    (b'{"prompt": "hi", "response": "ok", "values": Infinity}', "Infinity is not a JSON number"),
    (b'{"prompt": "hi", "responses": [-Infinity]}', "-Infinity is not a JSON number"),
    (b'{"prompt": "hi", "response": "\xff\xfe"}', "not valid UTF-8 at byte 30"),
    (b'\xef\xbb\xbf{"prompt": "hi", "response": "ok"}', "not valid JSON"),
    (b'{"prompt": "hi", "response": "ok"', "not valid JSON at character 33"),
    (b'[' * 9 + b']' * 9, "limit of 8 levels (max_json_depth)"),
    (b'[' * 2000 + b']' * 2000, "max_json_depth"),  # deeper than Python's own recursion limit
    (b'{"prompt": "hi", "response": "ok", "x": ' + b'{"a": ' * 8 + b'1' + b'}' * 8 + b'}', "max_json_depth"),
])
def test_bodies_that_are_not_strict_json_are_422(server, content, message):
    for path in ("/score", "/compare", "/get_reward"):
        response = post(server, path, content)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "body" and message in response.json()["error"]["message"]



GOOD = json.dumps({"prompt": "hi", "response": "ok"}).encode()


@pytest.mark.parametrize("headers, field, message", [
    ({"content-type": "text/plain"}, "content-type", "not 'text/plain'"),
    ({"content-type": "application/x-www-form-urlencoded"}, "content-type", "application/json"),  # curl -d's
    ({}, "content-type", "no Content-Type"),
    ({"content-type": "application/json", "content-encoding": "gzip"}, "content-encoding", "'gzip'"),
])
def test_a_body_that_is_not_plain_json_is_415_naming_the_header(server, headers, field, message):
    for path in ("/score", "/compare", "/get_reward", "/classify"):
        # httpx sends no Content-Type of its own for raw content
        response = httpx.post(server.url + path, content=GOOD, headers=headers, timeout=30)
        assert response.status_code == 415, (path, response.text)
        error = response.json()["error"]
        assert error["kind"] == "validation" and error["field"] == field and message in error["message"], (path, error)
    assert post(server, "/score", GOOD).status_code == 200
    assert post(server, "/score", GOOD, {"content-encoding": "identity"}).status_code == 200


def test_a_missing_body_is_named(server):
    for path in ("/score", "/compare", "/get_reward"):
        response = post(server, path, b"")
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "body", (path, response.text)


@pytest.mark.parametrize("path", ["/score", "/get_reward"])
def test_lone_surrogate_escape_is_422_naming_the_text(server, path):
    body = (b'{"prompt": "hi", "responses": ["ok", "bad \\ud800 text"]}' if path == "/score"
            else b'{"query": ["\\n\\nHuman: hi\\n\\nAssistant: \\udfff"]}')
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == ("responses.1" if path == "/score" else "query.0") and "lone surrogate" in error["message"]


def test_body_over_the_limit_is_413_from_content_length_before_it_is_sent(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Only the head: the server must answer without waiting for the 10 MB it announces.
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    error = json.loads(body)["error"]
    assert error["field"] == "body" and "Content-Length 10000000; the limit is 4096 bytes (max_request_bytes)" in error["message"]


def test_streamed_body_over_the_limit_is_413_once_it_passes(server):
    sent = []

    def chunks():
        for _ in range(100):  # 100 x 1 KiB, far past the 4 KiB limit; the server stops reading early
            sent.append(1)
            yield b" " * 1024

    response = httpx.post(server.url + "/score", content=chunks(), headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 413
    assert "more than 4096 bytes arrived" in response.json()["error"]["message"]
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_request_timeout_header_must_be_a_positive_number(server):
    for value in ("abc", "0", "-1", "nan", "inf", ""):
        response = post(server, "/score", json.dumps({"prompt": "hi", "response": "ok"}), {"X-Request-Timeout": value})
        assert response.status_code == 422, value
        assert response.json()["error"]["field"] == "X-Request-Timeout"
    ok = post(server, "/score", json.dumps({"prompt": "hi", "response": "ok"}), {"X-Request-Timeout": "30"})
    assert ok.status_code == 200


def test_no_500_was_ever_answered_and_refusals_were_counted(server):
    metrics = httpx.get(server.url + "/metrics").text
    assert 'outcome="internal"' not in metrics
    assert 'rmserve_requests_total{endpoint="/score",outcome="invalid",protocol="http"}' in metrics


# gRPC: the same limits through the same core; what protobuf cannot express (wrong types, NaN) cannot
# arrive, but undecodable bytes can.

def grpc_raw(server, method: str, payload: bytes, timeout: float = 10):
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(f"/rmserve.v1.RewardModel/{method}", request_serializer=None,
                                   response_deserializer=None)
        return call(payload, timeout=timeout)


@pytest.mark.parametrize("request_, detail", [
    (pb.ScoreRequest(prompt=pb.Prompt(), responses=["ok"]), "prompt: 'prompt' is required with 'responses'"),
    (pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["x" * 51]), "responses.0: text of 51 characters; the limit is 50 (max_text_chars)"),
    (pb.ScoreRequest(prompt=pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role="user", content="a")] * 4)),
                     responses=["ok"]), "prompt: 4 messages in one conversation; the limit is 3 (max_messages)"),
    (pb.ScoreRequest(prompt=pb.Prompt(messages=pb.Conversation()), responses=["ok"]), "prompt: a conversation needs at least 1 message"),
    (pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["ok"] * 5), "responses: 5 responses in one request; the limit is 4 (max_responses_per_request)"),
    (pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["ok", "\t "]), "responses.1: response is empty"),
    (pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["ok"], values=99), "values"),
])
def test_grpc_limits_are_invalid_argument_naming_the_field(server, request_, detail):
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RewardModelStub(channel).Score(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert detail in info.value.details()


@pytest.mark.parametrize("method, request_, path, body", [
    ("Compare", pb.CompareRequest(response_a="yes", response_b="no"), "/compare", {"response_a": "yes", "response_b": "no"}),
    ("Score", pb.ScoreRequest(items=[pb.ScoreItem(response="ok")]), "/score", {"items": [{"response": "ok"}]}),
    ("Score", pb.ScoreRequest(items=[pb.ScoreItem(prompt=pb.Prompt(text="hi"))]), "/score", {"items": [{"prompt": "hi"}]}),
])
def test_a_missing_field_is_named_in_the_same_words_over_grpc_and_http(server, method, request_, path, body):
    """proto3 cannot tell an unset field from an empty one: both are sent as a JSON body without the field."""
    http = httpx.post(server.url + path, json=body).json()["error"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            getattr(pb_grpc.RewardModelStub(channel), method)(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"{http['field']}: {http['message']}"


def test_grpc_message_over_max_request_bytes_is_refused_before_it_is_read(server):
    """gRPC's own message limit is max_request_bytes: a larger message is refused by gRPC from its length."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=pb.Prompt(text="hi"), responses=["y" * 5000]),
                                                   timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert "vs. 4096" in info.value.details()


@pytest.mark.parametrize("method, payload, detail", [
    ("Score", b"\x12\x02\xff\xfe", "bad UTF-8"),  # responses[0] = two bytes that are not UTF-8
    ("Score", b"\x0a\x03\x0a\x01\xc3", "bad UTF-8"),  # prompt.text = a truncated UTF-8 sequence
    ("Compare", b"\x12\x01\x80", "bad UTF-8"),
    ("Score", b"\x12\x10ab", "cannot be decoded"),  # a length past the end of the message
    ("Score", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "cannot be decoded"),
])
def test_grpc_undecodable_messages_are_invalid_argument(server, method, payload, detail):
    with pytest.raises(grpc.RpcError) as info:
        grpc_raw(server, method, payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in info.value.details()


# Deadlines, departed clients and queue slots: the engine is held at the test gate while work queues
# behind it, so every step below waits on what the server reports, never on how long a batch takes.

@pytest.fixture(scope="module")
def gate():
    return EngineGate()


@pytest.fixture(scope="module")
def slow(tmp_path_factory, gate):
    bundle = make_slow_bundle(tmp_path_factory.mktemp("slow") / "bundle")
    with running_server(bundle, gate=gate, request_timeout_seconds=0.5, max_queue_rows=8) as running:
        yield running


def metric(server, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in httpx.get(server.url + "/metrics").text.splitlines()
               if line.startswith(prefix))


def occupy_engine(server, gate: EngineGate) -> threading.Thread:
    """Hold the engine on one batch of one row; returns the thread waiting for it (it never times out)."""
    gate.hold()
    thread = threading.Thread(target=lambda: httpx.post(server.url + "/score", json={"prompt": "a", "response": "b"},
                                                        headers={"X-Request-Timeout": "120"}, timeout=120))
    thread.start()
    assert gate.wait_held() == 1
    return thread


def raw_post(server, body: bytes) -> socket.socket:
    """Send a /score request on a raw connection and return it unread (the caller decides when to leave)."""
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Timeout: 60\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


@pytest.mark.holds_engine
def test_expired_work_is_dropped_before_inference_and_answered_504(slow, gate):
    batches_before = metric(slow, "rmserve_batch_size_count")
    expired_before = metric(slow, 'rmserve_dropped_rows_total{reason="expired"}')
    cancelled_before = metric(slow, 'rmserve_dropped_rows_total{reason="cancelled"}')
    busy = occupy_engine(slow, gate)

    # The server default (0.5 s) applies without a header or gRPC deadline; a header or a gRPC deadline can
    # ask for less. All four expire while the engine holds the busy batch.
    def grpc_call(timeout: float | None) -> grpc.RpcError:
        with grpc.insecure_channel(slow.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(prompt=pb.Prompt(text="a"), responses=["x"]),
                                                       timeout=timeout)
        return info.value

    with cf.ThreadPoolExecutor(4) as pool:
        default_f = pool.submit(httpx.post, slow.url + "/score", json={"prompt": "a", "responses": ["one", "two"]},
                                timeout=30)
        short_f = pool.submit(httpx.post, slow.url + "/compare",
                              json={"prompt": "a", "response_a": "b", "response_b": "c"},
                              headers={"X-Request-Timeout": "0.2"}, timeout=30)
        grpc_default_f = pool.submit(grpc_call, None)
        grpc_deadline_f = pool.submit(grpc_call, 0.3)
        default, short = default_f.result(), short_f.result()
        grpc_default, grpc_deadline = grpc_default_f.result(), grpc_deadline_f.result()
    assert metric(slow, "rmserve_batch_size_count") == batches_before, "the held batch has not run yet"
    gate.release()
    busy.join(60)
    long = httpx.post(slow.url + "/score", json={"prompt": "a", "response": "d"}, headers={"X-Request-Timeout": "60"},
                      timeout=60)
    assert default.status_code == 504 and default.json()["error"]["kind"] == "timeout"
    assert short.status_code == 504
    assert grpc_default.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_deadline.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert long.status_code == 200
    # A gRPC deadline ends the call on both sides at once: the server's own deadline timer counts its row
    # "expired", unless grpc's cancellation of the call reaches the handler first ("cancelled"). Either
    # way the row is dropped before inference; the HTTP rows and the call without a client deadline can only expire.
    expired = metric(slow, 'rmserve_dropped_rows_total{reason="expired"}') - expired_before
    cancelled = metric(slow, 'rmserve_dropped_rows_total{reason="cancelled"}') - cancelled_before
    assert expired + cancelled == 2 + 2 + 1 + 1 and expired >= 2 + 2 + 1, (expired, cancelled)
    # Only the busy request's batch and the long one's ran: the expired rows never reached the engine.
    assert metric(slow, "rmserve_batch_size_count") - batches_before == 2


@pytest.mark.holds_engine
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_client_calls_timeout_is_the_servers_deadline_for_it_over_both_protocols(slow, gate, protocol):
    """The client's 60 s timeout travels with its request (X-Request-Timeout, the gRPC deadline): its row
    waits behind the busy engine past the server's 0.5 s default, which a request sent after it without a
    deadline meets, and is scored once the engine is free."""
    busy = occupy_engine(slow, gate)
    client = RewardClient(slow.url, retry=NO_RETRIES) if protocol == "http" else \
        GrpcRewardClient(slow.grpc_target, retry=NO_RETRIES)
    with client, cf.ThreadPoolExecutor(1) as pool:
        try:
            client.max_responses_per_request = 8  # no model-info request
            call = pool.submit(client.score, "a", ["patient"], timeout=60)
            wait_until(lambda: metric(slow, "rmserve_queue_depth") == 1, "the client's row to be queued")
            without = httpx.post(slow.url + "/score", json={"prompt": "a", "response": "hasty"}, timeout=30)
            assert without.status_code == 504  # queued after the client's row, it met the 0.5 s default
            assert metric(slow, "rmserve_queue_depth") == 1, "the client's row is still queued"
        finally:  # before the pool waits for the call: its row is behind the held batch
            gate.release()
            busy.join(60)
        assert len(call.result(timeout=60).rewards) == 1


@pytest.mark.holds_engine
def test_rows_of_a_client_that_disconnects_are_dropped_before_inference(slow, gate):
    cancelled_before = metric(slow, 'rmserve_dropped_rows_total{reason="cancelled"}')
    gone_before = metric(slow, 'rmserve_requests_total{endpoint="/score",outcome="client_gone",protocol="http"}')
    scored_before = metric(slow, "rmserve_scored_rows_total")
    busy = occupy_engine(slow, gate)
    body = json.dumps({"prompt": "hi", "responses": [f"short answer {i}" for i in range(8)]}).encode()
    with raw_post(slow, body):
        wait_until(lambda: metric(slow, "rmserve_queue_depth") == 8, "the 8 rows to be queued")
    # The client has gone: its rows leave the queue while the engine still holds the busy batch.
    wait_until(lambda: metric(slow, 'rmserve_dropped_rows_total{reason="cancelled"}') - cancelled_before == 8,
               "the departed client's rows to be dropped")
    assert metric(slow, "rmserve_queue_depth") == 0
    gate.release()
    busy.join(60)
    wait_until(lambda: metric(slow, 'rmserve_requests_total{endpoint="/score",outcome="client_gone",protocol="http"}')
               > gone_before, "the departed request to be counted")
    assert metric(slow, 'rmserve_dropped_rows_total{reason="cancelled"}') - cancelled_before == 8
    assert metric(slow, "rmserve_scored_rows_total") - scored_before == 1  # only the busy row reached the engine


@pytest.mark.holds_engine
def test_a_client_that_disconnects_frees_its_queue_slots_at_once(slow, gate):
    busy = occupy_engine(slow, gate)
    body = json.dumps({"prompt": "hi", "responses": [f"answer {i}" for i in range(8)]}).encode()
    with raw_post(slow, body):
        wait_until(lambda: metric(slow, "rmserve_queue_depth") == 8, "the 8 rows to be queued")
        full = httpx.post(slow.url + "/score", json={"prompt": "a", "response": "b"}, timeout=30)
    # The client has gone; its 8 rows leave the queue while the engine still holds the first batch.
    wait_until(lambda: metric(slow, "rmserve_queue_depth") == 0, "the departed client's rows to leave the queue")
    with cf.ThreadPoolExecutor(1) as pool:
        admitted_f = pool.submit(httpx.post, slow.url + "/score",
                                 json={"prompt": "hi", "responses": [f"r{i}" for i in range(8)]},
                                 headers={"X-Request-Timeout": "60"}, timeout=60)
        # Admitted into the freed slots while the first batch is still held.
        wait_until(lambda: metric(slow, "rmserve_queue_depth") == 8, "the new request's rows to be queued")
        gate.release()
        admitted = admitted_f.result()
    busy.join(60)
    assert full.status_code == 429
    assert admitted.status_code == 200 and len(admitted.json()["rewards"]) == 8
