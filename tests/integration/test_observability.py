"""Observability against the real service: its /metrics pass `promtool check metrics`, count HTTP and gRPC
alike, and carry reward telemetry; timing headers are the batcher's own measurements; a real Prometheus
(Debian's package) scrapes it with deploy/prometheus's config and rules, and answers PromQL over its HTTP
API; every metric the dashboard, the alerts and the HPA adapter name is one the service exports."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from rmserve.service.core.bundle import load_bundle
from tests.conftest import make_tiny_bundle
from tests.integration.server import free_port, running_server
from tests.system_tools import require
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMPT = "hello there how are you"
RESPONSES = ["i am fine thanks", "no", "sure one two three four five six seven", "help with that"]
METRIC = re.compile(r"\brmserve_[a-z0-9_]+\b")


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics").text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(name, labels) -> value for every sample of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        out[(match.group(1), labels)] = float(match.group(3))
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def exported_names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


def send_traffic(server) -> None:
    """Successes and failures over both protocols, so that labelled series exist."""
    assert httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).status_code == 200
    assert httpx.post(server.url + "/compare", json={"prompt": PROMPT, "response_a": RESPONSES[0],
                                                     "response_b": RESPONSES[1]}).status_code == 200
    assert httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": [" "]}).status_code == 422
    assert httpx.get(server.url + "/v1/model").status_code == 200
    assert httpx.get(server.url + "/score").status_code == 405
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=RESPONSES), timeout=10)
        stub.Compare(pb.CompareRequest(prompt=pb.Prompt(text=PROMPT), response_a="no", response_b="sure"), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(prompt=pb.Prompt(text=PROMPT), responses=[""]), timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("observability") / "bundle")


@pytest.fixture(scope="module")
def server(bundle):
    with running_server(bundle) as running:
        send_traffic(running)
        yield running


def test_metrics_pass_promtool_and_count_both_protocols(server, bundle):
    before = scrape(server.url)
    send_traffic(server)
    text = scrape(server.url)
    check = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr

    def delta(name, **labels):
        return value(text, name, **labels) - value(before, name, **labels)

    assert delta("rmserve_requests_total", endpoint="/score", protocol="http", outcome="ok") == 1
    assert delta("rmserve_requests_total", endpoint="/compare", protocol="http", outcome="ok") == 1
    assert delta("rmserve_requests_total", endpoint="/score", protocol="http", outcome="validation") == 1
    assert delta("rmserve_requests_total", endpoint="/v1/model", protocol="http", outcome="ok") == 1
    assert delta("rmserve_requests_total", endpoint="/score", protocol="http", outcome="invalid") == 1  # the 405
    assert delta("rmserve_requests_total", endpoint="Score", protocol="grpc", outcome="ok") == 1
    assert delta("rmserve_requests_total", endpoint="Compare", protocol="grpc", outcome="ok") == 1
    assert delta("rmserve_requests_total", endpoint="Score", protocol="grpc", outcome="validation") == 1
    assert delta("rmserve_request_duration_seconds_count", endpoint="Score", protocol="grpc") == 2
    rows = 2 * len(RESPONSES) + 4
    assert delta("rmserve_scored_rows_total") == rows
    assert delta("rmserve_reward_count") == rows and delta("rmserve_normalized_reward_count") == rows
    assert value(text, "rmserve_in_flight_requests", protocol="http") == 0
    assert value(text, "rmserve_in_flight_requests", protocol="grpc") == 0
    assert value(text, "rmserve_dropped_rows_total", reason="expired") == 0
    assert value(text, "rmserve_non_finite_rewards_total") == 0
    assert value(text, "rmserve_reward_window_rows") == value(text, "rmserve_scored_rows_total")
    assert -1 <= value(text, "rmserve_reward_length_correlation") <= 1
    assert value(text, "rmserve_queue_capacity_rows") == 1024
    manifest = load_bundle(bundle).manifest
    assert value(text, "rmserve_model_info", bundle_id=manifest.bundle_id, model_sha256=manifest.model_sha256,
                 provider="CPUExecutionProvider", max_length=str(manifest.input.max_length)) == 1


def test_timing_headers_are_the_measurements_of_that_request(server):
    before = scrape(server.url)
    response = httpx.post(server.url + "/score", json={"prompt": PROMPT, "responses": RESPONSES})
    after = scrape(server.url)
    assert response.status_code == 200
    header = {name: float(response.headers[f"x-{name}-time-ms"]) for name in ("tokenize", "queue", "inference", "total")}

    def delta_ms(name):
        return 1000 * (value(after, name) - value(before, name))

    # Alone on the service, this request's batches are the only ones that ran: the engine time in the
    # header is the histogram's increase (the header is rounded to 0.01 ms).
    assert header["inference"] == pytest.approx(delta_ms("rmserve_inference_duration_seconds_sum"), abs=0.011)
    assert header["tokenize"] == pytest.approx(delta_ms("rmserve_tokenize_duration_seconds_sum"), abs=0.011)
    waits = delta_ms("rmserve_queue_duration_seconds_sum")  # one wait per row; the header is the longest
    assert waits / len(RESPONSES) - 0.011 <= header["queue"] <= waits + 0.011
    assert all(v > 0 for v in header.values())
    assert max(header["tokenize"], header["queue"], header["inference"]) <= header["total"]
    compared = httpx.post(server.url + "/compare", json={"prompt": PROMPT, "response_a": "no", "response_b": "sure"})
    assert {f"x-{n}-time-ms" for n in ("tokenize", "queue", "inference", "total")} <= set(compared.headers)


def names_used_by_deploy() -> dict[str, set[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rmserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [rule["expr"] for group in groups for rule in group["rules"]]
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    series = [rule["seriesQuery"] for rule in adapter["rules"]["custom"]]
    return {source: {name for expr in found for name in METRIC.findall(expr)}
            for source, found in (("dashboard", exprs), ("alerts", rules), ("adapter", series))}


def test_every_metric_named_in_deploy_is_exported(server):
    exported = exported_names(scrape(server.url))
    used = names_used_by_deploy()
    assert len(used["dashboard"]) >= 15 and len(used["alerts"]) >= 7 and used["adapter"]
    for source, names in used.items():
        missing = sorted(names - exported)
        assert not missing, f"{source} uses metrics the service does not export: {missing}"


@contextlib.contextmanager
def running_prometheus(target: str, directory: Path) -> Iterator[str]:
    """A real Prometheus on a free 127.0.0.1 port, with deploy/prometheus's scrape job and rules, scraping
    `target` every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(directory / "prometheus.log", "w+")
    process = subprocess.Popen(
        [require("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and httpx.get(url + "/-/ready", timeout=1).status_code == 200,
                 "Prometheus ready", process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_for(condition, what: str, process=None, log=None, timeout: float = 45.0):
    """wait_until, stopping at once with Prometheus's log if it exits."""
    def check():
        if process is not None and process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read()}")
        return condition()

    return wait_until(check, what, timeout, interval=0.25, ignore=(httpx.TransportError,))


def query(url: str, promql: str) -> list[dict]:
    body = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def test_prometheus_scrapes_the_service_and_answers_promql(server, tmp_path):
    target = server.url.removeprefix("http://")
    with running_prometheus(target, tmp_path) as prometheus:
        up = wait_for(lambda: query(prometheus, 'up{job="rmserve"} == 1'), "a successful scrape")
        assert up[0]["metric"]["instance"] == target
        result = wait_for(lambda: query(prometheus, 'rmserve_requests_total{job="rmserve", protocol="grpc"}'),
                          "the request counter in Prometheus")
        served = samples(scrape(server.url))
        for series in query(prometheus, 'rmserve_requests_total{job="rmserve"}') + result:
            labels = {k: series["metric"][k] for k in ("endpoint", "protocol", "outcome")}
            # No traffic since the scrape: Prometheus holds the service's own count.
            assert float(series["value"][1]) == served[("rmserve_requests_total", frozenset(labels.items()))]
        protocols = {s["metric"]["protocol"] for s in query(prometheus, "sum by (protocol) (rmserve_requests_total)")}
        assert protocols == {"http", "grpc"}
        ready = query(prometheus, 'rmserve_model_info{job="rmserve"} * on (instance) group_left rmserve_ready')
        assert ready and ready[0]["metric"]["provider"] == "CPUExecutionProvider"

        # Every dashboard query is valid PromQL that this Prometheus evaluates against the scraped series.
        dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rmserve.json").read_text())
        for panel in dashboard["panels"]:
            for target_ in panel.get("targets", []):
                query(prometheus, target_["expr"].replace("$__rate_interval", "1m"))

        # The alert rules loaded and evaluate without error on the real series.
        def evaluated_rules():
            groups = httpx.get(prometheus + "/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else None

        rules = wait_for(evaluated_rules, "one evaluation of every rule")
        assert {r["name"] for r in rules} >= {"RmserveDown", "RmserveRewardDrift", "RmserveQueueSaturated"}
        for rule in rules:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert not query(prometheus, 'ALERTS{alertname=~"RmserveDown|RmserveNotReady|RmserveNonFiniteRewards"}')
        assert not math.isnan(float(query(prometheus, "rmserve_reward_length_correlation")[0]["value"][1]))
