"""Cross-request batching over real HTTP with the real MiniLM bundle: scores do not depend on batch
company, and a full queue refuses at once while every admitted request is scored."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest

from tests.integration.server import running_server
from training.data import load_pairs, shipped_data


@pytest.fixture(scope="module")
def texts():
    pairs = load_pairs(shipped_data("dev"), limit=20, skip_bad_rows=True).pairs
    return [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def score_one(url, prompt, response, client=None):
    client = client or httpx
    r = client.post(url + "/score", json={"prompt": prompt, "response": response}, timeout=60)
    r.raise_for_status()
    return r.json()["rewards"][0]


def test_scores_do_not_depend_on_batch_company(trained, texts):
    _, bundle, _, _ = trained
    with running_server(bundle.path, max_batch_size=8, max_batch_tokens=2048) as running:
        url = running.url
        alone = [score_one(url, p, r) for p, r in texts[:10]]
        # The same rows inside one request with rows of other lengths, then under concurrent load.
        items = [{"prompt": p, "response": r} for p, r in texts]
        together = httpx.post(url + "/score", json={"items": items}, timeout=60).json()["rewards"][:10]
        with cf.ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(lambda pr: score_one(url, *pr), texts))[:10]
        metrics = httpx.get(url + "/metrics").text
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(concurrent, alone, atol=1e-5, rtol=0)
    batch_count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("rmserve_batch_size_count")))
    assert batch_count < 10 + 2 * len(texts), "rows were never batched together"


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


def test_rows_of_a_client_that_disconnects_are_dropped_before_inference(trained, texts):
    import json
    import socket
    import threading
    import time

    _, bundle, _, _ = trained
    with running_server(bundle.path) as running:
        url = running.url
        long_text = " ".join(["the lock has pins and a spring"] * 40)
        busy = threading.Thread(target=lambda: httpx.post(
            url + "/score", json={"prompt": "q", "responses": [long_text + str(i) for i in range(48)]}, timeout=120))
        busy.start()
        time.sleep(0.3)  # the engine is busy with long rows
        body = json.dumps({"prompt": "hi", "responses": [f"short answer {i}" for i in range(8)]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)  # queued behind the long rows; now the client leaves
        busy.join(120)
        metrics = httpx.get(url + "/metrics").text
    dropped = sum(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('rmserve_dropped_rows_total{reason="cancelled"}'))
    assert dropped == 8
    assert 'outcome="client_gone"' in metrics
