"""Fuzzing against a real server: schemathesis generates requests from the service's own OpenAPI
document (valid and invalid bodies, headers, boundary values) and checks every answer; a hand-written
list of nasty gRPC inputs does the same for the gRPC contract. Nothing may answer 5xx / INTERNAL /
UNKNOWN, and every answer must match the documented schema and status codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

KEY = "fuzz-key"
LIMITS = {"max_request_bytes": 65536, "max_responses_per_request": 16, "max_text_chars": 2000, "max_messages": 8}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("fuzz") / "bundle")
    with running_server(bundle, api_keys=KEY, admin_api_keys="admin-only", **LIMITS) as running:
        yield running


def no_internal_errors(server) -> None:
    metrics = httpx.get(server.url + "/metrics").text
    assert 'outcome="internal"' not in metrics
    log = next(Path(server.process.args[server.process.args.index("--bundle") + 1]).parent.glob(
        f"server-{server.url.rsplit(':', 1)[1]}.log")).read_text()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    st = Path(sys.executable).parent / "st"
    # Every check except positive_data_acceptance: the schema cannot say that a response must not be blank,
    # or that a /get_reward query must contain the bundle's response prefix, so valid-looking bodies may
    # rightly get 422. X-Request-Timeout is pinned: a fuzzed deadline of 1e-300 s rightly gets 504 (its
    # parsing is tested in test_limits.py).
    out = subprocess.run(
        [str(st), "run", server.url + "/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "100", "--seed", "7", "--workers", "1",
         "--request-timeout", "30", "-H", f"Authorization: Bearer {KEY}", "-H", "X-Request-Timeout: 30",
         "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    generated = int(re.search(r"(\d+) generated", out.stdout).group(1))  # type: ignore[union-attr]
    assert generated >= 300, out.stdout[-2000:]  # it really exercised the API
    no_internal_errors(server)


# gRPC: protobuf cannot carry a wrong JSON type or NaN in a string, but it can carry everything below.

TEXT = pb.Prompt(text="hello there")


def chat(*messages: tuple[str, str]) -> pb.Prompt:
    return pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages]))


OK, BAD = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
NASTY_SCORE = [
    ("empty request", pb.ScoreRequest(), BAD),
    ("prompt without responses", pb.ScoreRequest(prompt=TEXT), BAD),
    ("responses without prompt", pb.ScoreRequest(responses=["a"]), BAD),
    ("prompt with no kind set", pb.ScoreRequest(prompt=pb.Prompt(), responses=["a"]), BAD),
    ("prompt and items", pb.ScoreRequest(prompt=TEXT, items=[pb.ScoreItem(prompt=TEXT, response="a")]), BAD),
    ("responses and items", pb.ScoreRequest(responses=["a"], items=[pb.ScoreItem(prompt=TEXT, response="a")]), BAD),
    ("item without prompt", pb.ScoreRequest(items=[pb.ScoreItem(response="a")]), BAD),
    ("empty response", pb.ScoreRequest(prompt=TEXT, responses=[""]), BAD),
    ("whitespace response", pb.ScoreRequest(prompt=TEXT, responses=["ok", "\u2003\n\t "]), BAD),
    ("empty prompt text", pb.ScoreRequest(prompt=pb.Prompt(text=""), responses=["ok"]), OK),
    ("huge response", pb.ScoreRequest(prompt=TEXT, responses=["x" * 2001]), BAD),
    ("huge prompt", pb.ScoreRequest(prompt=pb.Prompt(text="p" * 2001), responses=["ok"]), BAD),
    ("too many responses", pb.ScoreRequest(prompt=TEXT, responses=["ok"] * 17), BAD),
    ("too many items", pb.ScoreRequest(items=[pb.ScoreItem(prompt=TEXT, response="a")] * 17), BAD),
    ("empty conversation", pb.ScoreRequest(prompt=chat(), responses=["ok"]), BAD),
    ("too many messages", pb.ScoreRequest(prompt=chat(*[("user", "hi")] * 9), responses=["ok"]), BAD),
    ("unknown role", pb.ScoreRequest(prompt=chat(("robot", "hi")), responses=["ok"]), BAD),
    ("empty role", pb.ScoreRequest(prompt=chat(("", "hi")), responses=["ok"]), BAD),
    ("huge message", pb.ScoreRequest(prompt=chat(("user", "m" * 2001)), responses=["ok"]), BAD),
    ("unknown values enum", pb.ScoreRequest(prompt=TEXT, responses=["ok"], values=12345), BAD),
    ("negative values enum", pb.ScoreRequest(prompt=TEXT, responses=["ok"], values=-1), BAD),
    ("group values with items", pb.ScoreRequest(items=[pb.ScoreItem(prompt=TEXT, response="a")],
                                                values=pb.REWARD_VALUES_GROUP), BAD),
    ("null bytes", pb.ScoreRequest(prompt=pb.Prompt(text="a\0b"), responses=["\0ok\0"]), OK),
    ("control characters", pb.ScoreRequest(prompt=pb.Prompt(text="\x01\x02\x1b[31m"), responses=["\x7f\x08ok"]), OK),
    ("emoji, RTL and combining marks", pb.ScoreRequest(prompt=pb.Prompt(text="\u202eolleh \U0001f600"),
                                                       responses=["e\u0301\u0301\u0301", "\ufeff\u200bok"]), OK),
    ("unassigned and private-use code points", pb.ScoreRequest(prompt=TEXT, responses=["\U0010fffd\ue000\U000e0001"]), OK),
    ("at the text limit", pb.ScoreRequest(prompt=pb.Prompt(text="p" * 2000), responses=["x" * 2000]), OK),
    ("at the message limit", pb.ScoreRequest(prompt=chat(*[("user", "hi")] * 8), responses=["ok"]), OK),
    ("at the response limit", pb.ScoreRequest(prompt=TEXT, responses=["ok"] * 16), OK),
]

# Raw messages the generated stubs would never send (field 1 prompt, field 2 responses, field 3 items).
NASTY_BYTES = [
    ("zero-length message", b"", BAD),
    ("invalid UTF-8 in a response", b"\x12\x02\xff\xfe", BAD),
    ("overlong UTF-8 encoding", b"\x0a\x04\x0a\x02\xc0\xaf\x12\x02ok", BAD),
    ("UTF-8 encoded surrogate", b"\x0a\x03\x0a\x01a\x12\x03\xed\xa0\x80", BAD),
    ("truncated length", b"\x12\x10ab", BAD),
    ("varint that never ends", b"\x12" + b"\xff" * 11, BAD),
    ("wrong wire type for responses", b"\x0a\x03\x0a\x01a\x10\x05", BAD),
    ("unknown field only", b"\xf8\x01\x01", BAD),
    ("unknown field beside a valid request", b"\x0a\x03\x0a\x01a\x12\x02ok\xf8\x01\x01", OK),
    ("group start tag", b"\x0b\x0c", BAD),
    ("nested prompt garbage", b"\x0a\x02\x12\xff", BAD),
    # gRPC's own message limit is max_request_bytes: refused by gRPC before it is read.
    ("over max_request_bytes", b"\x0a\x03\x0a\x01a" + b"\x12\x80\x80\x04" + b"a" * 65536,
     grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield channel


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


AUTH = [("authorization", f"Bearer {KEY}")]


@pytest.mark.parametrize("name, request_, expected", NASTY_SCORE, ids=[n for n, _, _ in NASTY_SCORE])
def test_nasty_grpc_score_requests(channel, name, request_, expected):
    stub = pb_grpc.RewardModelStub(channel)
    assert code_of(lambda: stub.Score(request_, timeout=30, metadata=AUTH)) == expected
    # The same request inside a stream: answered or refused the same way, the earlier ones still answered.
    good = pb.ScoreRequest(prompt=TEXT, responses=["fine"])
    replies = []

    def stream():
        replies.extend(stub.ScoreStream(iter([good, request_, good]), timeout=30, metadata=AUTH))

    assert code_of(stream) == expected
    assert len(replies) == (3 if expected == OK else 1)


@pytest.mark.parametrize("name, payload, expected", NASTY_BYTES, ids=[n for n, _, _ in NASTY_BYTES])
def test_nasty_grpc_bytes(channel, name, payload, expected):
    for method in ("Score", "Compare"):
        raw = channel.unary_unary(f"/rmserve.v1.RewardModel/{method}", request_serializer=None,
                                  response_deserializer=None)
        code = code_of(lambda raw=raw: raw(payload, timeout=30, metadata=AUTH))
        if method == "Compare" and expected == OK:
            expected = BAD  # field 2 of a CompareRequest is response_a: no response_b
        assert code == expected, (method, code)


def test_nasty_grpc_compare_and_model_info(channel):
    stub = pb_grpc.RewardModelStub(channel)
    for request_ in (pb.CompareRequest(), pb.CompareRequest(prompt=TEXT, response_a="a"),
                     pb.CompareRequest(prompt=TEXT, response_a=" ", response_b="b"),
                     pb.CompareRequest(prompt=chat(), response_a="a", response_b="b"),
                     pb.CompareRequest(prompt=TEXT, response_a="a" * 2001, response_b="b")):
        assert code_of(lambda r=request_: stub.Compare(r, timeout=30, metadata=AUTH)) == BAD, request_
    assert code_of(lambda: stub.Compare(pb.CompareRequest(prompt=TEXT, response_a="\0", response_b="\U0001f600"),
                                        timeout=30, metadata=AUTH)) == OK
    raw = channel.unary_unary("/rmserve.v1.RewardModel/GetModelInfo", request_serializer=None, response_deserializer=None)
    assert code_of(lambda: raw(b"\xf8\x01\x01", timeout=30, metadata=AUTH)) == OK  # unknown fields are ignored
    assert code_of(lambda: raw(b"\x0a\x05", timeout=30, metadata=AUTH)) == BAD


def test_a_message_past_grpc_own_limit_is_resource_exhausted_and_the_server_lives(server, channel):
    stub = pb_grpc.RewardModelStub(channel)
    huge = pb.ScoreRequest(prompt=TEXT, responses=["x" * (9 << 20)])  # far past max_request_bytes
    assert code_of(lambda: stub.Score(huge, timeout=60, metadata=AUTH)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(lambda: stub.Score(pb.ScoreRequest(prompt=TEXT, responses=["fine"]), timeout=30, metadata=AUTH)) == OK
    no_internal_errors(server)
