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
    ({"responses": ["a"]}, None, "'prompt' is required"),
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


def test_compare_missing_field(server):
    response = httpx.post(server + "/compare", json={"prompt": "hi", "response_a": "yes"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "response_b"


def test_server_still_serves_after_bad_input(server):
    httpx.post(server + "/score", content=b"\xff\xfe", headers={"content-type": "application/json"})
    ok = httpx.post(server + "/score", json={"prompt": "hello there", "response": "i am fine thanks"})
    assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
    assert 'outcome="invalid"' in httpx.get(server + "/metrics").text
