"""Every JSON route parses its request body once: the request guard's parse (`body.parse_json`) is the
only one, whether the scoring front serves the route itself (/score, /compare) or FastAPI does through
`common.ParsedBodyRoute` (OpenRLHF's /get_reward, vLLM's /classify and /pooling). The real app and scorer
on a tiny bundle, in process, with `json.loads` counted."""

import asyncio
import json

import httpx
import pytest

from tests.app_in_process import app_client

BODIES = {
    "/score": {"prompt": "the cat", "responses": ["sat on the mat", "ran fast"]},
    "/compare": {"prompt": "the cat", "response_a": "sat", "response_b": "ran"},
    "/get_reward": {"query": ["\n\nHuman: the cat\n\nAssistant: sat on the mat"], "prompts": ["\n\nHuman: the cat"]},
    "/classify": {"input": "\n\nHuman: the cat\n\nAssistant: sat"},
    "/pooling": {"input": "\n\nHuman: the cat\n\nAssistant: sat"},
}


@pytest.mark.parametrize("path", list(BODIES))
def test_a_json_body_is_parsed_once(tiny_bundle, monkeypatch, path):
    parsed: list[str] = []
    original = json.loads

    def counting(text, *args, **kwargs):
        value = original(text, *args, **kwargs)
        if isinstance(value, dict) and value.keys() == BODIES[path].keys():
            parsed.append(path)
        return value

    async def post() -> httpx.Response:
        async with app_client(tiny_bundle) as client:
            monkeypatch.setattr(json, "loads", counting)
            try:
                return await client.post(path, json=BODIES[path])
            finally:
                monkeypatch.setattr(json, "loads", original)

    answer = asyncio.run(post())
    assert answer.status_code == 200, answer.text
    assert parsed == [path]

