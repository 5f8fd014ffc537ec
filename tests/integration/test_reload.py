"""Model management on a real server: bundles swapped under load by the admin endpoint and by SIGHUP
with no failed request, each answer scored wholly by the bundle it names; bundles that fail verification
refused while the old one keeps serving; /v1/model and the metrics name the live bundle."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import threading
from pathlib import Path

import grpc
import httpx
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from rmserve.service.core.bundle import MANIFEST, load_bundle, write_manifest
from tests.conftest import build_tiny_onnx, make_tiny_bundle
from tests.integration.engine_gate import EngineGate
from tests.integration.server import running_server
from tests.integration.slow_bundle import make_slow_bundle
from tests.integration.test_observability import value
from tests.waiting import wait_until

ADMIN = {"authorization": "Bearer admin-key"}
PROMPT, RESPONSES = "hello there", ["i am fine thanks", "no", "sure thing my friend"]


def make_other_bundle(directory: Path, bundle_id: str, seed: int) -> Path:
    """A tiny bundle with other weights (so other scores) and its own golden set."""
    make_tiny_bundle(directory, golden=False)
    manifest = load_bundle(directory, verify_hashes=False).manifest
    build_tiny_onnx(directory / "model.onnx", manifest.model.vocab_size, seed=seed)
    write_manifest(directory, manifest.model_copy(update={"bundle_id": bundle_id}))
    from rmserve.service.core.bundle import GoldenExample
    from rmserve.service.core.engine import OnnxRewardModel

    bundle = load_bundle(directory)
    engine, encoder = OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder()
    golden = [GoldenExample(prompt=p, response=r, score=float(engine(encoder.pad(encoder.encode([(p, r)])))[0]))
              for p, r in [("hello there", "i am fine thanks"), ("how are you", "no")]]
    write_manifest(directory, bundle.manifest.model_copy(update={"golden": golden}))
    return directory


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("reload")
    a = make_slow_bundle(root / "a", products=40, bundle_id="bundle-a")  # batches take a while: work in flight
    b = make_other_bundle(root / "b", "bundle-b", seed=1)
    bad_hash = make_other_bundle(root / "bad-hash", "bad-hash", seed=2)
    (bad_hash / "model.onnx").write_bytes((bad_hash / "model.onnx").read_bytes() + b"\0")
    bad_golden = make_other_bundle(root / "bad-golden", "bad-golden", seed=3)
    manifest = json.loads((bad_golden / MANIFEST).read_text())
    manifest["golden"][0]["score"] += 1.0
    (bad_golden / MANIFEST).write_text(json.dumps(manifest))
    bad_format = make_other_bundle(root / "bad-format", "bad-format", seed=4)
    manifest = json.loads((bad_format / MANIFEST).read_text())
    manifest["format_version"] = 99
    (bad_format / MANIFEST).write_text(json.dumps(manifest))
    return {"a": a, "b": b, "bad-hash": bad_hash, "bad-golden": bad_golden, "bad-format": bad_format,
            "missing": root / "missing", "root": root}


class Load:
    """HTTP and gRPC clients scoring without pause; every answer is kept with the bundle it names."""

    def __init__(self, server):
        self.server = server
        self.stop = threading.Event()
        self.answers: list[tuple[str, tuple[float, ...]]] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.http) for _ in range(4)] + [threading.Thread(target=self.grpc)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def http(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES})
                    if r.status_code != 200:
                        self.failures.append(f"http {r.status_code}: {r.text}")
                        continue
                    self.answers.append((r.json()["model"]["bundle_id"], tuple(r.json()["rewards"])))
                except httpx.TransportError as e:
                    self.failures.append(f"http {e!r}")

    def grpc(self) -> None:
        request = pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=RESPONSES)
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = pb_grpc.RewardModelStub(channel)
            while not self.stop.is_set():
                try:
                    reply = stub.Score(request, timeout=60)
                    self.answers.append((reply.model.bundle_id, tuple(round(r, 5) for r in reply.rewards)))
                except grpc.RpcError as e:
                    self.failures.append(f"grpc {e.code()}: {e.details()}")

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.answers) >= count or self.failures, f"{count} answers under load")


def live(server) -> str:
    return httpx.get(server.url + "/v1/model", timeout=10).json()["manifest"]["bundle_id"]


def reload_count(server, outcome: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(f'rmserve_model_reloads_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError("rmserve_model_reloads_total is not exported")


@pytest.mark.holds_engine
def test_reload_under_load_fails_no_request_and_bad_bundles_are_refused(bundles, tmp_path):
    with running_server(bundles["a"], admin_api_keys="admin-key", api_keys="", max_queue_rows=4096,
                        bundle_root=str(bundles["root"])) as server:
        with Load(server) as load:
            load.wait_for(10)
            r = httpx.post(server.url + "/admin/reload", json={"bundle": "b"}, headers=ADMIN, timeout=60)  # in bundle_root
            assert r.status_code == 200, r.text
            assert r.json()["model"]["bundle_id"] == "bundle-b" and r.json()["previous"]["bundle_id"] == "bundle-a"
            assert str(bundles["root"]) not in r.text
            assert live(server) == "bundle-b"
            assert 'bundle_id="bundle-b"' in httpx.get(server.url + "/metrics").text
            seen = len(load.answers)
            load.wait_for(seen + 10)

            for name, message in [("bad-hash", "bad hash"), ("bad-golden", "golden-set parity failed"),
                                  ("bad-format", "wrong format version"), ("missing", "does not exist")]:
                r = httpx.post(server.url + "/admin/reload", json={"bundle": str(bundles[name])}, headers=ADMIN,
                               timeout=60)
                assert r.status_code == 422, r.text
                error = r.json()["error"]
                assert error["field"] == "bundle" and message in error["message"], error
                assert "still serving bundle-b" in error["message"]
                assert str(bundles["root"]) not in r.text, "no path of the server's in the answer"
                assert live(server) == "bundle-b"
            assert reload_count(server, "refused") == 4

            # SIGHUP re-reads the configured bundle (a), under the same load.
            server.process.send_signal(signal.SIGHUP)
            wait_until(lambda: live(server) == "bundle-a", "SIGHUP to bring back bundle-a")
            seen = len(load.answers)
            load.wait_for(seen + 10)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'bundle_id="bundle-a"' in metrics and reload_count(server, "ok") == 2

        # The configured bundle is damaged on disk: SIGHUP refuses it and a keeps serving.
        (bundles["a"] / "model.onnx").write_bytes(b"not a model")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: reload_count(server, "refused") >= 5, "SIGHUP to refuse the damaged bundle")
        assert reload_count(server, "refused") == 5
        after = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}, timeout=60)
        assert after.status_code == 200 and after.json()["model"]["bundle_id"] == "bundle-a"

    assert not load.failures, load.failures[:5]
    # Every answer was scored wholly by the bundle it names: one set of rewards per bundle, never a mix.
    by_bundle: dict[str, set] = {}
    for bundle_id, rewards in load.answers:
        by_bundle.setdefault(bundle_id, set()).add(tuple(round(r, 4) for r in rewards))
    assert set(by_bundle) == {"bundle-a", "bundle-b"}, by_bundle.keys()
    assert all(len(scores) == 1 for scores in by_bundle.values()), by_bundle
    assert by_bundle["bundle-a"] != by_bundle["bundle-b"]


def test_admin_endpoint_needs_an_admin_key(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, admin_api_keys="admin-key", api_keys="scoring-key") as server:
        for headers in ({}, {"authorization": "Bearer scoring-key"}, {"authorization": "Bearer wrong"}):
            r = httpx.post(server.url + "/admin/reload", json={}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["kind"] == "unauthenticated"
            # The guard's refusal is written like every other answer: compact JSON.
            assert r.content == json.dumps(r.json(), separators=(",", ":")).encode(), r.content
        r = httpx.post(server.url + "/admin/reload", json={}, headers=ADMIN, timeout=60)  # no body: the configured one
        assert r.status_code == 200 and r.json()["model"]["bundle_id"] == "tiny"
        r = httpx.post(server.url + "/admin/reload", json={"bundle": "/etc"}, headers=ADMIN)
        assert r.status_code == 422
        counted = {outcome: value(httpx.get(server.url + "/metrics", headers={"authorization": "Bearer scoring-key"}).text,
                                  "rmserve_requests_total", endpoint="/admin/reload", protocol="http", outcome=outcome)
                   for outcome in ("unauthenticated", "ok", "validation")}
        assert counted == {"unauthenticated": 3, "ok": 1, "validation": 1}, counted
    with running_server(bundle) as server:  # no admin key configured: closed
        r = httpx.post(server.url + "/admin/reload", json={}, headers=ADMIN)
        assert r.status_code == 401 and "admin_api_keys" in r.json()["error"]["message"]


def test_reload_paths_are_confined_to_bundle_root(bundles, tmp_path):
    """A path outside bundle_root, one that leads out through a symlink, and any path when no bundle_root
    is set are refused with one message that names no path and says nothing of what exists there; the
    log escapes the path the client sent."""
    outside = make_other_bundle(tmp_path / "outside", "outside", seed=5)  # a valid bundle, just not allowed
    inside = make_other_bundle(bundles["root"] / "c", "bundle-c", seed=6)
    link = bundles["root"] / "link-out"
    link.symlink_to(outside, target_is_directory=True)
    sneaky = str(bundles["root"]) + "/../" + tmp_path.name + "/outside"
    try:
        with running_server(bundles["b"], admin_api_keys="admin-key", bundle_root=str(bundles["root"])) as server:
            answers = []
            for given in (str(outside), "link-out", sneaky, "/etc", "..", str(tmp_path / "no-such-dir"),
                          "a\n2099-01-01 INFO forged log line"):
                r = httpx.post(server.url + "/admin/reload", json={"bundle": given}, headers=ADMIN, timeout=60)
                assert r.status_code == 422, (given, r.text)
                assert r.json()["error"]["message"] == "the bundle must be a directory inside the server's bundle_root" \
                    or "does not exist" in r.json()["error"]["message"], (given, r.text)
                assert str(tmp_path) not in r.text and str(bundles["root"]) not in r.text, r.text
                answers.append(r.json()["error"]["message"])
            # Outside the root, existing or not, the answer is the same.
            assert answers[0] == answers[3] == answers[5]
            assert live(server) == "bundle-b"
            ok = httpx.post(server.url + "/admin/reload", json={"bundle": str(inside)}, headers=ADMIN, timeout=60)
            assert ok.status_code == 200 and ok.json()["model"]["bundle_id"] == "bundle-c", ok.text  # absolute, inside
            log = Path(bundles["b"]).parent / f"server-{server.url.rsplit(':', 1)[1]}.log"
        text = log.read_text()
        assert "forged log line" in text and "\n2099-01-01 INFO forged" not in text.replace("\\n", ""), text[-2000:]
        with running_server(bundles["b"], admin_api_keys="admin-key") as server:  # no bundle_root: configured only
            r = httpx.post(server.url + "/admin/reload", json={"bundle": str(inside)}, headers=ADMIN, timeout=60)
            assert r.status_code == 422 and "bundle_root" in r.json()["error"]["message"]
            assert str(inside) not in r.text
            assert httpx.post(server.url + "/admin/reload", json={}, headers=ADMIN, timeout=60).status_code == 200
    finally:
        link.unlink()


def test_admin_keys_can_come_from_a_file(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    (tmp_path / "admin-keys").write_text("# operators\nfrom-file\n")
    with running_server(bundle, admin_api_keys_file=str(tmp_path / "admin-keys")) as server:
        assert httpx.post(server.url + "/admin/reload", json={}, headers=ADMIN).status_code == 401
        r = httpx.post(server.url + "/admin/reload", json={}, headers={"authorization": "bearer from-file"}, timeout=60)
        assert r.status_code == 200, r.text


@pytest.mark.holds_engine
def test_a_replaced_bundle_serves_its_long_requests_to_the_end(bundles):
    """A request that took the old bundle before a reload keeps it to its end, however long it takes:
    /get_reward scores its queries in chunks of max_responses_per_request, one after another, on one
    scorer; the old scorer was closed once it had been busy for shutdown_grace_seconds, and the request's
    next chunk was refused 503 'shutting down' on a server that was not shutting down."""
    import time

    make_other_bundle(bundles["root"] / "long-requests", "bundle-long", seed=7)
    gate = EngineGate()
    grace = 1.0
    queries = ["hello there i am fine thanks", "hello there no"]
    with running_server(bundles["b"], gate=gate, admin_api_keys="admin-key", bundle_root=str(bundles["root"]),
                        max_responses_per_request=1, shutdown_grace_seconds=str(grace)) as server, \
            cf.ThreadPoolExecutor(1) as pool:
        gate.hold(loaded_only=True)  # bundle-b's engine; the new bundle's runs freely
        answer = pool.submit(httpx.post, server.url + "/get_reward",
                             json={"query": queries, "prompts": ["hello there"] * 2}, timeout=120)
        try:
            gate.wait_held()  # the first chunk, on bundle-b
            r = httpx.post(server.url + "/admin/reload", json={"bundle": "long-requests"}, headers=ADMIN, timeout=60)
            assert r.status_code == 200 and r.json()["model"]["bundle_id"] == "bundle-long", r.text
            # Not synchronization: this checks that something does NOT happen (the old bundle closed once it
            # had been busy for the grace period), so time must pass; with the fix nothing depends on how much.
            time.sleep(3 * grace)  # not synchronization: lets the old time limit pass (see above)
        finally:
            gate.release()
        reply = answer.result()
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["rewards"]) == 2
        assert httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES[:1]},
                          timeout=60).json()["model"]["bundle_id"] == "bundle-long"
