"""What the calls shared by every client do with a server's answers (service/client/calls.py), against a
stand-in server (httpx.MockTransport; the integration tests run real ones): a server redeployed with a
smaller max_responses_per_request refuses a call split for the old one, and the call is split again once,
never more; the call's remaining time travels to the server as X-Request-Timeout."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest

from rmserve.client import AsyncRewardClient, InvalidRequest, RewardClient
from rmserve.client.calls import limit_named_by
from rmserve.client.grpc import _error

MODEL = {"bundle_id": "b", "model_sha256": "s", "normalization_version": "n", "calibration_temperature": 1.0}
MANIFEST = {"bundle_id": "b", "files": {"model.onnx": "s"}, "normalization": {"version": "n"},
            "calibration": {"temperature": 1.0}, "input": {"max_length": 64}}


class Server:
    """A stand-in rmserve that takes at most `limit` responses per request, worded as the real one words
    it (service/core/scoring.py); `limit` can change, as after a redeploy. Records what it was sent."""

    def __init__(self, limit: int, reported: int | None = None, named: int | None = None):
        self.limit = limit
        self.reported = reported  # what /v1/model says, when it differs from what /score enforces
        self.named = named  # what a refusal names, when it differs
        self.sent: list[str | int] = []  # "model", or the number of responses of a /score request
        self.headers: list[httpx.Headers] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.url.path == "/v1/model":
            self.sent.append("model")
            limit = self.limit if self.reported is None else self.reported
            return httpx.Response(200, json={"manifest": MANIFEST, "provider": "CPUExecutionProvider",
                                             "max_responses_per_request": limit})
        responses = json.loads(request.content)["responses"]
        self.sent.append(len(responses))
        if len(responses) > self.limit:
            named = self.limit if self.named is None else self.named
            return httpx.Response(422, json={"error": {
                "kind": "validation", "field": "responses",
                "message": f"{len(responses)} responses in one request; the limit is {named}"}})
        blank = next((i for i, r in enumerate(responses) if not r.strip()), None)
        if blank is not None:
            return httpx.Response(422, json={"error": {"kind": "validation", "field": f"responses.{blank}",
                                                       "message": "response is empty or whitespace only"}})
        rewards = [float(len(r)) for r in responses]
        return httpx.Response(200, json={"rewards": rewards, "normalized_rewards": rewards,
                                         "truncated": [False] * len(rewards), "model": MODEL})

    def sync_client(self, **options) -> RewardClient:
        client = RewardClient("http://rm:1", **options)
        client._http = httpx.Client(transport=httpx.MockTransport(self.answer))
        return client


RESPONSES = ["a", "bb", "ccc", "dddd", "eeeee"]


def test_a_server_redeployed_with_a_smaller_limit_is_asked_again_and_the_call_split_again():
    server = Server(limit=4)
    client = server.sync_client()
    assert client.score("p", RESPONSES).requests == 2
    assert server.sent == ["model", 4, 1] and client.max_responses_per_request == 4
    server.limit = 2  # redeployed
    server.sent.clear()
    result = client.score("p", RESPONSES)
    assert server.sent == [4, "model", 2, 2, 1]  # refused, read again, split again; no other request
    assert result.rewards == [1.0, 2.0, 3.0, 4.0, 5.0] and result.group is not None
    assert client.max_responses_per_request == 2
    server.sent.clear()
    client.score("p", RESPONSES)
    assert server.sent == [2, 2, 1]  # the new limit is kept


def test_the_limit_the_refusal_names_counts_when_the_model_info_still_reports_the_old_one():
    """During a rolling redeploy /v1/model may be answered by a replica with the old limit: the refusal's
    own figure is used then."""
    server = Server(limit=2, reported=4)
    client = server.sync_client()
    assert client.score("p", RESPONSES).rewards == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert server.sent == ["model", 4, "model", 2, 2, 1] and client.max_responses_per_request == 2


def test_a_refused_call_is_split_again_once_never_in_a_loop():
    """A server that names and reports 2 but takes only 1 (redeployed again meanwhile): the call split
    at 2 is refused too, and that refusal reaches the caller."""
    server = Server(limit=1, reported=2, named=2)
    client = server.sync_client(max_responses_per_request=4)
    with pytest.raises(InvalidRequest, match="the limit is 2"):
        client.score("p", RESPONSES)
    assert server.sent == [4, "model", 2]


def test_other_refusals_and_a_limit_that_is_not_smaller_are_raised_at_once():
    server = Server(limit=3, reported=4, named=4)
    client = server.sync_client(max_responses_per_request=4)
    with pytest.raises(InvalidRequest, match="the limit is 4"):
        client.score("p", RESPONSES)
    assert server.sent == [4, "model"]  # nothing smaller than the 4 it sent to split at
    server.sent.clear()
    with pytest.raises(InvalidRequest) as refused:
        client.score("p", ["fine", "   "])
    assert refused.value.field == "responses.1" and server.sent == [2]


def test_grpc_and_http_refusals_for_too_many_responses_read_the_same():
    class Refusal(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self):
            return "items: 9 responses in one request; the limit is 8"

        def trailing_metadata(self):
            return ()

    assert limit_named_by(_error(Refusal())) == 8
    assert limit_named_by(InvalidRequest("response is empty or whitespace only", field="responses.1")) is None
    assert limit_named_by(InvalidRequest("9 responses in one request; the limit is 8", field="items")) == 8
    body = InvalidRequest("JSON body holds 900 arrays and objects; a request holds at most 800 "
                          "(max_responses_per_request x (max_messages + 2))", field="body")
    assert limit_named_by(body) == 0


def test_the_async_client_splits_again_too():
    server = Server(limit=2, reported=2)

    async def main():
        client = AsyncRewardClient("http://rm:1", max_responses_per_request=4, max_concurrent_chunks=2)
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(server.answer))
        try:
            return await client.score("p", RESPONSES), client.max_responses_per_request
        finally:
            await client.close()

    result, limit = asyncio.run(main())
    assert result.rewards == [1.0, 2.0, 3.0, 4.0, 5.0] and limit == 2
    assert server.sent.count("model") == 1 and sorted(n for n in server.sent if n != "model")[-3:] == [2, 2, 4]


def test_the_calls_remaining_time_travels_as_x_request_timeout():
    server = Server(limit=8)
    client = server.sync_client(timeout=30)
    client.score("p", RESPONSES)
    sent = [float(h["x-request-timeout"]) for h in server.headers]
    assert len(sent) == 2 and all(0 < seconds <= 30 for seconds in sent)
    server.headers.clear()
    client.score("p", RESPONSES, timeout=None)
    assert "x-request-timeout" not in server.headers[0]


def test_a_grpc_channel_tries_a_restarted_server_again_within_what_the_default_retries_wait():
    """gRPC fails calls at once while it waits to reconnect, and by default that wait grows to 120 s: a
    replica back from an outage would see calls fail after the client's retries were spent. The channel's
    cap must stay below the shortest total wait of the default RetryPolicy."""
    from rmserve.client import RetryPolicy
    from rmserve.client.grpc import _CHANNEL_OPTIONS

    policy = RetryPolicy()
    shortest_total = sum(min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** attempt)
                         * (1 - policy.jitter) for attempt in range(policy.max_retries))
    cap_ms = dict(_CHANNEL_OPTIONS).get("grpc.max_reconnect_backoff_ms")
    assert cap_ms is not None and cap_ms / 1000 < shortest_total / 2, (cap_ms, shortest_total)


def test_a_proxys_502_is_unavailable_as_grpc_reports_it_and_goes_to_another_replica():
    """An ingress in front of a restarting replica answers 502 with a page of its own; gRPC would say
    UNAVAILABLE. The request goes to the next replica, and the error, once retries are spent, says why."""
    from rmserve.client import NO_RETRIES, Unavailable

    server = Server(limit=8)
    hosts: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "restarting":
            return httpx.Response(502, text="<html>502 Bad Gateway</html>")
        return server.answer(request)

    client = RewardClient(["http://restarting:1", "http://up:2"], max_responses_per_request=8)
    client._http = httpx.Client(transport=httpx.MockTransport(answer))
    assert client.score("p", RESPONSES).rewards == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert hosts == ["restarting", "up"]
    alone = RewardClient("http://restarting:1", max_responses_per_request=8, retry=NO_RETRIES)
    alone._http = httpx.Client(transport=httpx.MockTransport(answer))
    with pytest.raises(Unavailable) as refused:
        alone.score("p", RESPONSES)
    assert refused.value.status == 502 and "502 Bad Gateway" in refused.value.message
