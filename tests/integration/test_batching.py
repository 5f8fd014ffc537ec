"""Cross-request batching over real HTTP with the real MiniLM bundle: scores do not depend on batch
company or padding, and a full queue refuses at once while every admitted request is scored."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest

from rmserve.training.data import load_pairs, shipped_data
from tests.integration.server import running_server


@pytest.fixture(scope="module")
def texts():
    """Real HH rows, their prompts cut to the last human turn: 20 to 140 tokens, so that most fit in
    max_length and rows of one batch differ in length (padding), instead of all being cut to max_length."""
    pairs = load_pairs(shipped_data("dev"), limit=20, skip_bad_rows=True).pairs
    last_turn = ["\n\nHuman:" + p.prompt.split("\n\nHuman:")[-1] for p in pairs]
    return ([(prompt, p.chosen) for prompt, p in zip(last_turn, pairs)]
            + [(prompt, p.rejected) for prompt, p in zip(last_turn, pairs)])


def score_one(url, prompt, response, client=None):
    client = client or httpx
    r = client.post(url + "/score", json={"prompt": prompt, "response": response}, timeout=60)
    r.raise_for_status()
    return r.json()["rewards"][0]


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_scores_do_not_depend_on_batch_company_or_padding(trained, texts):
    """The trained MiniLM bundle (whose attention would see padding if the mask were wrong) scores each
    row the same alone and in padded batches of other lengths. No padding cap, so rows of different lengths
    do share batches; the metrics prove they did and that those batches carried padding."""
    _, bundle, _, _ = trained
    with running_server(bundle.path, max_batch_size=8, max_batch_tokens=4096, max_padding_ratio=1.0) as running:
        url = running.url
        alone = [score_one(url, p, r) for p, r in texts]
        # The same rows inside one request, queued at once (so batched with rows of other lengths), then
        # under concurrent load (in whatever company the timing gives).
        before = httpx.get(url + "/metrics").text
        items = [{"prompt": p, "response": r} for p, r in texts]
        together = httpx.post(url + "/score", json={"items": items}, timeout=60).json()["rewards"]
        after = httpx.get(url + "/metrics").text
        with cf.ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(lambda pr: score_one(url, *pr), texts))
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(concurrent, alone, atol=1e-5, rtol=0)
    batches = metric(after, "rmserve_batch_size_count") - metric(before, "rmserve_batch_size_count")
    rows = metric(after, "rmserve_batch_size_sum") - metric(before, "rmserve_batch_size_sum")
    padding = metric(after, "rmserve_padding_ratio_sum") - metric(before, "rmserve_padding_ratio_sum")
    assert rows == len(texts)
    assert batches == len(texts) / 8, f"{rows:.0f} rows in {batches:.0f} batches, expected full batches of 8"
    assert padding / batches > 0.1, f"the batches carried almost no padding (mean ratio {padding / batches:.3f})"


def test_full_queue_answers_429_at_once_and_admitted_requests_succeed(trained, texts):
    _, bundle, _, _ = trained
    with running_server(bundle.path, max_queue_rows=8, max_batch_size=4) as running:
        url = running.url
        def request(i):
            p = texts[i % len(texts)][0]
            responses = [texts[(i + k) % len(texts)][1] for k in range(4)]
            with httpx.Client(timeout=60) as client:
                return client.post(url + "/score", json={"prompt": p, "responses": responses})

        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(request, range(32)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(429) > 0 and statuses.count(200) > 0
        for a in answers:
            if a.status_code == 429:
                assert a.headers["retry-after"] == "1"
                assert a.json()["error"]["kind"] == "overloaded"
            else:
                assert len(a.json()["rewards"]) == 4
        # Still healthy afterwards, and the refusals were counted.
        assert httpx.get(url + "/readyz").status_code == 200
        assert "rmserve_rejected_rows_total" in httpx.get(url + "/metrics").text
