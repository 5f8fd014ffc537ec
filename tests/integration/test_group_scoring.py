"""Group scoring (one prompt x N responses) over HTTP and gRPC on a real server: mean, population std and
advantages exactly as numpy computes them from the returned rewards; the `values` choice; the same answer
on both protocols; refusals naming the field."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from rmserve.group_stats import GROUP_EPS
from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

PROMPT = "\n\nHuman: how are you today?\n\nAssistant:"
RESPONSES = [" i am fine thanks", " no", " hello my friend , i am fine", " sure one two three", " no no no"]
NORMALIZATION = (0.5, 2.0)  # the tiny bundle's mean and std


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("groups") / "bundle")
    with running_server(bundle, max_responses_per_request=8) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.RewardModelStub(channel)


def numpy_group(rewards):
    r = np.asarray(rewards, dtype=np.float64)
    mean, std = r.mean(), r.std(ddof=0)
    return mean, std, (r - mean) / (std + GROUP_EPS)


def test_http_group_statistics_are_exactly_numpys(server):
    answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).json()
    rewards = answer["rewards"]
    assert len(set(rewards)) > 2  # distinct rewards: the statistics are not trivial
    mean, std, advantages = numpy_group(rewards)
    group = answer["group"]
    assert group["mean"] == mean and group["std"] == std and group["eps"] == GROUP_EPS
    np.testing.assert_array_equal(group["advantages"], advantages)
    assert answer["values"] == rewards  # raw by default
    assert abs(np.mean(group["advantages"])) < 1e-12 and np.std(group["advantages"]) == pytest.approx(1, abs=1e-5)


def test_grpc_group_statistics_are_exactly_numpys_and_match_http(server, stub):
    reply = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=RESPONSES,
                                       values=pb.REWARD_VALUES_GROUP), timeout=10)
    mean, std, advantages = numpy_group(reply.rewards)
    assert reply.HasField("group")
    assert reply.group.mean == mean and reply.group.std == std and reply.group.eps == GROUP_EPS
    np.testing.assert_array_equal(reply.group.advantages, advantages)
    np.testing.assert_array_equal(reply.values, advantages)
    http = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES, "values": "group"}).json()
    np.testing.assert_array_equal(reply.rewards, http["rewards"])
    np.testing.assert_array_equal(reply.values, http["values"])
    assert reply.group.std == http["group"]["std"]


@pytest.mark.parametrize("kind, proto_kind", [("raw", pb.REWARD_VALUES_RAW), ("normalized", pb.REWARD_VALUES_NORMALIZED),
                                              ("group", pb.REWARD_VALUES_GROUP)])
def test_values_choice_on_both_protocols(server, stub, kind, proto_kind):
    http = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES, "values": kind}).json()
    raw = np.asarray(http["rewards"], dtype=np.float64)
    expected = {"raw": raw, "normalized": (raw - NORMALIZATION[0]) / NORMALIZATION[1],
                "group": numpy_group(raw)[2]}[kind]
    np.testing.assert_allclose(http["values"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(http["normalized_rewards"], (raw - NORMALIZATION[0]) / NORMALIZATION[1], atol=1e-12)
    reply = stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=RESPONSES, values=proto_kind), timeout=10)
    np.testing.assert_array_equal(reply.values, http["values"])


def test_one_response_is_a_group_of_one_and_items_have_no_group(server, stub):
    one = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response": RESPONSES[0], "values": "group"}).json()
    assert one["group"]["std"] == 0.0 and one["group"]["advantages"] == [0.0] and one["values"] == [0.0]
    items = httpx.post(server.url + "/score", json={"items": [{"prompt": PROMPT, "response": r} for r in RESPONSES[:2]],
                                                    "values": "normalized"}).json()
    assert items["group"] is None and len(items["values"]) == 2
    reply = stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(prompt=pb.Prompt(text=PROMPT), response=RESPONSES[0])]),
                       timeout=10)
    assert not reply.HasField("group") and list(reply.values) == list(reply.rewards)


def test_group_values_for_items_are_refused_naming_the_field(server, stub):
    answer = httpx.post(server.url + "/score", json={"items": [{"prompt": PROMPT, "response": "no"}], "values": "group"})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "values"
    bad = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": ["no"], "values": "advantages"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "values"
    with pytest.raises(grpc.RpcError) as refused:
        stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(prompt=pb.Prompt(text=PROMPT), response="no")],
                                   values=pb.REWARD_VALUES_GROUP), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.value.details().startswith("values:")


def test_model_info_names_the_request_limit(server, stub):
    assert httpx.get(server.url + "/v1/model").json()["max_responses_per_request"] == 8
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).max_responses_per_request == 8
