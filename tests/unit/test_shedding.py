"""The HTTP front refuses from the head alone, before any of the body is read or parsed: a missing or wrong
API key (401, on every keyed route), a full queue or a client's full share of it (429)."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from rmserve.service.core.batcher import BatchObserver
from rmserve.service.core.metrics import Metrics
from rmserve.service.settings import Settings
from rmserve.service.transports.auth import ApiKeys
from rmserve.service.transports.http.app import ScoringFront


def call(front, path, headers=(), method="POST", length=4 << 20):
    sent = []

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "client": ("127.0.0.1", 5000),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(length).encode()), *headers]}
    asyncio.run(front(scope, receive, send))
    return sent


def make(full=(), keys=()):
    """A front over a state whose queue is full for the clients in `full` ("*": for everyone)."""
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    batcher = SimpleNamespace(is_full=lambda client="": "*" in full or client in full, observer=BatchObserver())
    state = SimpleNamespace(settings=Settings(), metrics=Metrics(), scorer=SimpleNamespace(batcher=batcher),
                            api_keys=ApiKeys(list(keys)), reloader=SimpleNamespace(admin_keys=ApiKeys(["admin"])))
    return ScoringFront(app, state, front_routes={}), reached, state


def test_full_queue_is_refused_before_the_body_is_read():
    front, reached, state = make(full="*")
    sent = call(front, "/score")
    assert not reached
    assert sent[0]["status"] == 429 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["kind"] == "overloaded"
    assert state.metrics.requests.labels("/score", "http", "overloaded")._value.get() == 1


def test_a_client_whose_share_is_full_is_refused_and_another_is_not():
    front, reached, _ = make(full=["key-0"], keys=["flooder", "polite"])
    assert call(front, "/score", [(b"authorization", b"Bearer flooder")])[0]["status"] == 429
    assert not reached
    # The polite client's request is let through to be read (its body is empty here).
    polite = call(front, "/score", [(b"authorization", b"Bearer polite")], length=0)
    assert reached == ["/score"] and polite[0]["status"] == 200


def test_room_in_the_queue_passes_through_with_a_timing_header():
    front, reached, _ = make()
    sent = call(front, "/compare", length=0)
    assert reached == ["/compare"] and sent[0]["status"] == 200
    assert any(name == b"x-total-time-ms" for name, _ in sent[0]["headers"])


@pytest.mark.parametrize("path", ["/score", "/compare", "/get_reward", "/classify", "/v1/classify", "/pooling",
                                  "/v1/models", "/v1/model", "/admin/reload", "/no-such-route"])
def test_a_request_without_a_valid_key_is_401_before_its_body_is_read(path):
    """Every route but the open ones (health, metrics, the API's documents) asks for a key from the head, even
    when the queue is full; a route nobody listed is keyed too."""
    front, reached, _ = make(full="*", keys=["secret"])
    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"secret")]):
        sent = call(front, path, headers)
        assert not reached and sent[0]["status"] == 401, (path, headers)
        error = json.loads(sent[1]["body"])["error"]
        assert error.get("kind", error.get("type")) in ("unauthenticated", "AuthenticationError"), error
    # A large announced body stays in the socket to be thrown away; the connection stays usable.
    assert (b"connection", b"close") not in sent[0]["headers"]


def test_the_bearer_scheme_is_matched_in_any_case():
    front, reached, _ = make(full="*", keys=["secret"])
    assert call(front, "/score", [(b"authorization", b"bEaReR secret")])[0]["status"] == 429


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"])
def test_open_routes_need_no_key(path):
    front, reached, _ = make(keys=["secret"])
    sent = call(front, path, method="GET", length=0)
    assert reached == [path] and sent[0]["status"] == 200
