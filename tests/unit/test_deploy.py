"""deploy/ checked with the real tools and against the service's settings: promtool validates the
Prometheus config and alert rules and runs their unit tests, `kubectl kustomize` renders deploy/k8s, and
ports, probes, names and grace periods agree with Settings, the Dockerfile and each other. (That every
metric they name is exported is checked against a running server in tests/integration/test_observability.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from rmserve.service.settings import Settings
from tests.system_tools import require

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# --- Prometheus -------------------------------------------------------------------------------------

def test_promtool_checks_config_and_rules():
    promtool = require("promtool")
    run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    out = run(promtool, "check", "rules", "deploy/prometheus/alerts.yml").stdout
    assert "SUCCESS" in out


def test_promtool_rule_unit_tests_pass():
    out = run(require("promtool"), "test", "rules", "deploy/prometheus/tests/alerts_test.yml").stdout
    assert "SUCCESS" in out


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_the_required_alerts_exist_and_each_has_a_firing_unit_test():
    alerts = alert_rules()
    for required in ("RmserveDown", "RmserveNotReady", "RmserveHighOverloadRate", "RmserveHighLatencyP99",
                     "RmserveQueueSaturated", "RmserveNonFiniteRewards", "RmserveRewardDrift"):
        assert required in alerts, required
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    assert set(alerts) == firing == silent, "every alert needs a case where it fires and one where it does not"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_scrape_job_is_the_one_the_alerts_and_kubernetes_use():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "rmserve" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"rmserve:{DEFAULTS['port']}"]  # the compose service
    assert 'up{job="rmserve"}' in alert_rules()["RmserveDown"]["expr"]
    assert config["rule_files"] == ["alerts.yml"]


# --- Grafana ----------------------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "rmserve.json").read_text())


def test_dashboard_is_valid_and_covers_what_operators_need():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs = []
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            exprs.append(target["expr"])
    text = "\n".join(exprs)
    # throughput, latency percentiles, queue depth, batch size and padding, errors by kind, reward
    # distribution and drift, provider
    for needle in ("rmserve_requests_total", "histogram_quantile(0.99, sum by (le) (rate(rmserve_request_duration",
                   "rmserve_queue_depth", "rmserve_batch_size", "rmserve_padding_ratio", "sum by (outcome",
                   "rmserve_reward_bucket", "rmserve_normalized_reward_bucket", "rmserve_reward_length_correlation",
                   "rmserve_model_info"):
        assert needle in text, needle


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert dashboard()["templating"]["list"][0]["current"]["value"] == source["uid"]
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "rmserve.yml").read_text())
    (provider,) = providers["providers"]
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- compose ----------------------------------------------------------------------------------------

def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_compose_wires_rmserve_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == {"rmserve", "prometheus", "grafana"}
    rmserve = services["rmserve"]
    assert rmserve["build"]["context"] == ".." and (DEPLOY / ".." / rmserve["build"]["dockerfile"]).is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for variant in (rmserve["build"]["args"]["VARIANT"], compose("compose.gpu.yaml")["services"]["rmserve"]["build"]["args"]["VARIANT"]):
        assert f"AS base-{variant}\n" in dockerfile, variant
    assert {f"127.0.0.1:{DEFAULTS['port']}:{DEFAULTS['port']}",
            f"127.0.0.1:{DEFAULTS['grpc_port']}:{DEFAULTS['grpc_port']}"} <= set(rmserve["ports"])
    env = rmserve["environment"]
    assert env["RMSERVE_HOST"] == "0.0.0.0" and env["RMSERVE_PORT"] == str(DEFAULTS["port"])
    # The mounted bundle is the one `make bundle` builds.
    bundle_mount = next(v for v in rmserve["volumes"] if v.endswith(":/bundle:ro"))
    makefile_bundle = re.search(r"^BUNDLE \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert bundle_mount.split(":")[0] == f"../{makefile_bundle}"
    stop_grace = int(rmserve["stop_grace_period"].rstrip("s"))
    assert stop_grace > DEFAULTS["shutdown_grace_seconds"]
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    for service in services.values():  # every host path a service mounts exists (but the built bundle)
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith(".") and volume != bundle_mount:
                assert (DEPLOY / host).exists(), host
    gpu = compose("compose.gpu.yaml")["services"]["rmserve"]
    assert "ports" not in gpu  # the overlay publishes nothing of its own
    assert gpu["environment"]["RMSERVE_DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_publishes_on_loopback_with_keys_and_no_default_passwords():
    """Every published port is on 127.0.0.1; rmserve reads its keys from a compose secret (a file, never the
    command line or the compose file); Grafana's admin password comes from the environment, with no default;
    Prometheus has no lifecycle API (anyone reaching it could shut it down)."""
    config = compose()
    services = config["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    rmserve = services["rmserve"]
    env = rmserve["environment"]
    assert "RMSERVE_API_KEYS" not in env and "RMSERVE_ALLOW_UNAUTHENTICATED" not in env
    (secret,) = rmserve["secrets"]
    assert env["RMSERVE_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    keys_file = config["secrets"][secret]["file"]
    assert "deploy/" + keys_file.removeprefix("./") in (ROOT / ".gitignore").read_text().splitlines()  # never committed
    Settings(**{k.removeprefix("RMSERVE_").lower(): v for k, v in env.items() if k != "RMSERVE_API_KEYS_FILE"})
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password  # required, no default
    assert not any("lifecycle" in arg for arg in services["prometheus"]["command"])
    assert "admin/admin" not in (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "README.md").read_text()


# --- Kubernetes -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    """The rendered objects by kind; an object not named rmserve (the headless Service) by kind/name."""
    rendered = run(require("kubectl"), "kustomize", "deploy/k8s").stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    by_kind = {doc["kind"] if doc["metadata"]["name"] == "rmserve" else f"{doc['kind']}/{doc['metadata']['name']}": doc
               for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind expected, and the headless Service"
    return by_kind


def test_kustomize_renders_every_resource(k8s):
    assert set(k8s) == {"Deployment", "Service", "Service/rmserve-headless", "HorizontalPodAutoscaler",
                        "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"}
    assert {doc["metadata"]["name"] for doc in k8s.values()} == {"rmserve", "rmserve-headless"}


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists/DoesNotExist expressions) on `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for rule in selector.get("matchExpressions", []):
        value, present = labels.get(rule["key"]), rule["key"] in labels
        ok = {"In": present and value in rule.get("values", []), "NotIn": not present or value not in rule.get("values", []),
              "Exists": present, "DoesNotExist": not present}[rule["operator"]]
        if not ok:
            return False
    return True


def test_headless_service_lists_every_ready_pod_for_client_side_balancing(k8s):
    from rmserve.client.endpoints import HttpEndpoints, grpc_targets

    service, headless = k8s["Service"], k8s["Service/rmserve-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless.get("publishNotReadyAddresses", False) is False
    assert headless["selector"] == service["spec"]["selector"] and headless["ports"] == service["spec"]["ports"]
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert headless["selector"].items() <= pod_labels.items()
    # The ServiceMonitor scrapes the pods through one Service only (twice would double every counter).
    monitor = k8s["ServiceMonitor"]["spec"]["selector"]
    assert selects(monitor, service["metadata"]["labels"])
    assert not selects(monitor, k8s["Service/rmserve-headless"]["metadata"]["labels"])
    # The names the manifest and deploy/README.md give clients are ones the client library takes.
    ports = {p["name"]: p["port"] for p in headless["ports"]}
    name = "rmserve-headless.default.svc.cluster.local"
    assert grpc_targets(f"dns:///{name}:{ports['grpc']}") == [f"dns:///{name}:{ports['grpc']}"]
    assert repr(HttpEndpoints(f"dns:///{name}:{ports['http']}")) == f"dns:///{name}:{ports['http']}"
    text = (DEPLOY / "k8s" / "service-headless.yaml").read_text() + (DEPLOY / "README.md").read_text()
    for protocol in ("grpc", "http"):
        assert f"dns:///rmserve-headless.<namespace>.svc.cluster.local:{ports[protocol]}" in text, protocol


def test_deployment_ports_probes_gpu_and_drain_match_the_service(k8s):
    deployment = k8s["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "command" not in container and "args" not in container  # the image's `rmserve serve`
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULTS["port"], "grpc": DEFAULTS["grpc_port"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["RMSERVE_PORT"]) == ports["http"] and int(env["RMSERVE_GRPC_PORT"]) == ports["grpc"]
    assert env["RMSERVE_HOST"] == "0.0.0.0" and env["RMSERVE_DEVICE"] == "cuda"
    Settings(**{k.removeprefix("RMSERVE_").lower(): v for k, v in env.items()})  # every variable is a valid setting
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert container["resources"]["requests"]["cpu"]  # the HPA's CPU target is a share of this
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env.get("RMSERVE_SHUTDOWN_GRACE_SECONDS", DEFAULTS["shutdown_grace_seconds"]))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_pod_is_locked_down_and_reads_its_keys_from_a_secret(k8s):
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "RMSERVE_API_KEYS" not in env and "RMSERVE_ALLOW_UNAUTHENTICATED" not in env
    keys_file = Path(env["RMSERVE_API_KEYS_FILE"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(keys_file.parent)]
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "rmserve-api-keys" and "items" not in volume["secret"]
    readme = (DEPLOY / "README.md").read_text()
    assert f"kubectl create secret generic rmserve-api-keys --from-file={keys_file.name}=" in readme
    # The root filesystem is read-only, so anything that writes gets a small emptyDir.
    assert pod["volumes"][[v["name"] for v in pod["volumes"]].index(mounts["/tmp"]["name"])]["emptyDir"]


def test_network_policy_admits_only_scoring_and_scrape_traffic(k8s):
    policy = k8s["NetworkPolicy"]["spec"]
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []  # no way out
    container_ports = {p["name"] for p in k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    scoring, scrape = policy["ingress"]
    assert {p["port"] for p in scoring["ports"]} == container_ports == {"http", "grpc"}
    assert [p["port"] for p in scrape["ports"]] == [k8s["ServiceMonitor"]["spec"]["endpoints"][0]["port"]]
    for rule in (scoring, scrape):  # every rule names the pods it admits: none is open to all
        assert rule["from"] and all(peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"])


def test_service_hpa_pdb_and_servicemonitor_point_at_the_deployment(k8s):
    deployment, service = k8s["Deployment"], k8s["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == DEFAULTS["port"] and ports["grpc"]["port"] == DEFAULTS["grpc_port"]
    assert {p["targetPort"] for p in ports.values()} == container_ports
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rmserve"}
    metrics = {m["type"]: m for m in hpa["metrics"]}
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert metrics["Pods"]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["seriesQuery"].startswith("rmserve_queue_depth{")
    assert metrics["Resource"]["resource"]["name"] == "cpu"  # the fallback when the custom metric is missing
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items() and "maxUnavailable" in pdb
    monitor = k8s["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


# --- documentation ----------------------------------------------------------------------------------

def test_operator_docs_list_every_metric_and_alert():
    from rmserve.service.core.metrics import Metrics

    doc = (DEPLOY / "README.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "_info" if family.type == "info" else "")
        assert f"`{name}`" in doc, name
    for alert in alert_rules():
        assert f"`{alert}`" in doc, alert
