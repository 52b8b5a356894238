"""deploy/: the Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate,
offline), compose.yaml against the compose-spec schema (vendored in check-jsonschema), and the
pieces cross-checked: the Grafana dashboard queries only metrics the server exports, settings
named in the manifests exist, probes and grace periods fit the drain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import dashboard as grafana
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import BaseModel

from voxgate.model.engine import SpecDecodeCollector
from voxgate.server import metrics
from voxgate.server.settings import Settings
from voxgate.streaming.timings import TURN_PARTS

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33"
CUSTOM_RESOURCES = {"PodMonitor"}
"""Kinds of operators (prometheus-operator), not of Kubernetes: no schema to check them with."""


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def container() -> dict[str, Any]:
    (c,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c["env"]}


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc"),
    [pytest.param(p, d, id=f"{p.relative_to(K8S)}:{d['kind']}") for p, d in manifests()],
)
def test_manifest_is_valid_kubernetes(path: Path, doc: dict[str, Any]) -> None:
    if doc["kind"] in CUSTOM_RESOURCES:
        assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys()
        return
    # strict: unknown fields are errors too (a misspelt field is otherwise silently ignored).
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schemas are really there (offline) and really applied."""
    broken = json.loads(json.dumps(by_kind("Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(by_kind("Service")))
    broken["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_selectors_reach_the_pods() -> None:
    deployment = by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        by_kind("Service")["spec"]["selector"],
        by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        by_kind("PodMonitor")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector
    port_names = {p["name"] for p in container()["ports"]}
    assert by_kind("Service")["spec"]["ports"][0]["targetPort"] in port_names
    assert by_kind("PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] in port_names


def test_one_replica_is_one_gateway_and_one_engine_on_gpus() -> None:
    c = container()
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus >= 1
    assert int(env(c)["VOXGATE_ENGINE__TENSOR_PARALLEL_SIZE"]) == gpus
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/dev/shm"}


def test_probes_and_the_drain_fit_together() -> None:
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"  # 503 while draining
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"  # 200 while draining
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    drain_s = float(env(c)["VOXGATE_DRAIN_DEADLINE_S"])
    pre_stop_s = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace_s = by_kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s > pre_stop_s + drain_s + 10  # + time to close sessions and stop the engine


def _settings_path(name: str) -> bool:
    """Whether VOXGATE_A__B names a field of Settings (pydantic-settings ignores unknown ones)."""
    model: type[BaseModel] = Settings
    parts = name.removeprefix("VOXGATE_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            model = field.annotation  # type: ignore[assignment]
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return False
    return True


def test_every_voxgate_variable_is_a_setting() -> None:
    names = set(env(container()))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    names |= {e.split("=")[0] for e in compose["services"]["voxgate"]["environment"]}
    for dockerfile in (ROOT / "Dockerfile", DEPLOY / "Dockerfile.cpu"):
        names |= set(re.findall(r"\b(VOXGATE_[A-Z0-9_]+)=", dockerfile.read_text()))
    names = {n for n in names if n.startswith("VOXGATE_")}
    assert len(names) > 10
    assert [n for n in names if not _settings_path(n)] == []


def test_the_autoscaler_scales_on_a_metric_the_server_exports() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        by_kind("Deployment")["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "voxgate_sessions_active"
    assert name in REGISTRY._names_to_collectors
    adapter = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["seriesQuery"].startswith(f"{name}{{")
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


# --- compose, Prometheus, Dockerfiles ---------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(
        (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_file_matches_the_compose_spec() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    validator = compose_validator()
    assert [e.message for e in validator.iter_errors(compose)] == []
    compose["services"]["voxgate"]["stop_grace_period"] = 45  # must be a duration string
    assert list(validator.iter_errors(compose))


def test_compose_pieces_exist_and_fit() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    build = services["voxgate"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    environment = dict(e.partition("=")[::2] for e in services["voxgate"]["environment"])
    assert float(services["voxgate"]["stop_grace_period"].removesuffix("s")) > float(
        environment["VOXGATE_DRAIN_DEADLINE_S"]
    )
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and job["metrics_path"] == "/metrics"
    assert services["voxgate"]["ports"][0].endswith(f":{port}")


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "voxgate.yaml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


@pytest.mark.parametrize(
    ("dockerfile", "extra"), [("Dockerfile", "gpu"), ("deploy/Dockerfile.cpu", "cpu")]
)
def test_dockerfiles(dockerfile: str, extra: str) -> None:
    lines = [line.strip() for line in (ROOT / dockerfile).read_text().splitlines() if line.strip()]
    instructions = [line.split()[0] for line in lines if not line.startswith("#")]
    assert f'pip install ".[{extra}]"' in "\n".join(lines)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf"^{extra} = \[", pyproject, re.M)
    # Runs as a non-root user: USER after the last RUN that needs root, before CMD.
    user = max(i for i, ins in enumerate(instructions) if ins == "USER")
    assert user < instructions.index("CMD")
    assert next(line for line in lines if line.startswith("USER")) != "USER root"
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "STOPSIGNAL SIGTERM" in lines


def test_gpu_image_starts_from_cuda() -> None:
    text = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
    assert base.startswith("nvidia/cuda:")
    assert "FROM ${CUDA_IMAGE}" in text


# --- the dashboard ----------------------------------------------------------------------------


DASHBOARD_GRAPHS = 22
DASHBOARD_QUERIES = 37
"""What the dashboard has now: a panel or query lost (or never read) fails a test."""


def dashboard_metric_names() -> set[str]:
    return {name for expr in grafana.queries() for name in grafana.metric_names(expr)}


def spec_decode_gauge_names() -> set[str]:
    """The gauges `SpecDecodeCollector` derives once the engine has drafted."""
    registry = CollectorRegistry()
    for name in SpecDecodeCollector._COUNTERS:
        Counter(name, name, registry=registry).inc()
    return {family.name for family in SpecDecodeCollector(registry).collect()}


def test_dashboard_parses_and_lays_out() -> None:
    dashboard = json.loads(grafana.DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
    assert dashboard["templating"]["list"][0]["query"] == "prometheus"


def test_dashboard_queries_are_well_formed() -> None:
    assert len(grafana.panels()) >= DASHBOARD_GRAPHS, [p["title"] for p in grafana.panels()]
    assert len(grafana.queries()) >= DASHBOARD_QUERIES, grafana.queries()
    for expr in grafana.queries():
        assert grafana.metric_names(expr), expr  # it parses, and selects some metric
        for quantile in re.findall(r"histogram_quantile\(([^,]+),", expr):
            assert 0 < float(quantile) < 1, expr
        for name in re.findall(r"histogram_quantile\([^,]+, .*?\(rate\(([a-z_:0-9]+)", expr):
            assert name.endswith("_bucket"), expr


@pytest.mark.parametrize(
    "expr",
    [
        "rate(voxgate_x_total[5m]",  # unbalanced
        "sum by (le (rate(voxgate_x_total[5m])))",
        "voxgate_a voxgate_b",  # two selectors, no operator
        "rate(voxgate_x_total[5q])",  # not a duration
        "rate(voxgate_x_total[])",
        "voxgate_x{stage=asr}",  # an unquoted label value
        "ratee(voxgate_x_total[5m])",  # no such function
        "sum(rate(voxgate_x_total[$__rate_interval])) *",
        "",
    ],
)
def test_the_query_reader_refuses_what_is_not_promql(expr: str) -> None:
    with pytest.raises(grafana.PromQLError):
        grafana.metric_names(expr)


def test_dashboard_uses_only_metrics_the_server_exports() -> None:
    exported = set(REGISTRY._names_to_collectors) | spec_decode_gauge_names()
    for expr in grafana.queries():
        # vLLM's names are checked against a live engine's /metrics (integration tests).
        ours = {n for n in grafana.metric_names(expr) if not n.startswith("vllm:")}
        assert ours <= exported, (expr, ours - exported)
    assert {n for n in dashboard_metric_names() if n.startswith("vllm:")}


def test_dashboard_shows_what_an_operator_needs() -> None:
    queries = "\n".join(grafana.queries())
    names = dashboard_metric_names()
    assert "histogram_quantile(0.5, sum by (le, backbone) (rate(voxgate_turn_latency" in queries
    assert "histogram_quantile(0.95, sum by (le, backbone) (rate(voxgate_turn_latency" in queries
    for stage in ("end_of_turn_wait", "asr", "lm_first_sentence", "tts_first_chunk"):
        assert stage in queries and stage in metrics.TURN_STAGES
    assert {
        "voxgate_sessions_active",
        "voxgate_realtime_errors_total",
        "voxgate_rest_errors_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "voxgate_feedback_total",
        "voxgate_feedback_preferences_total",
        "voxgate_feedback_captures_dropped_total",
    } <= names
    # The barge-in rate is per response, not per minute.
    barge_ins = "sum(rate(voxgate_barge_ins_total[$__rate_interval])) / "
    assert barge_ins + "sum(rate(voxgate_responses_total[$__rate_interval]))" in queries


def test_dashboard_waterfall_stacks_the_parts_of_a_turn_in_order() -> None:
    """The stacked bar draws what `turn_timings` splits a turn into, in the order they happen
    and in the browser waterfall's colours, and nothing else: a stage renamed on the server
    would leave a gap in the bar."""
    dashboard = json.loads(grafana.DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["type"] == "barchart"]
    assert panel["options"]["stacking"] == "normal"
    assert panel["options"]["orientation"] == "horizontal"
    (target,) = panel["targets"]
    for selector in re.findall(r'stage=~"([^"]+)"', target["expr"]):
        assert tuple(selector.split("|")) == TURN_PARTS
    assert "[$__range]" in target["expr"] and target["instant"]
    (organize,) = [t for t in panel["transformations"] if t["id"] == "organize"]
    order = sorted(organize["options"]["indexByName"].items(), key=lambda kv: kv[1])
    assert tuple(name for name, _ in order[1:]) == TURN_PARTS
    coloured = {
        o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"]
        for o in panel["fieldConfig"]["overrides"]
    }
    page = dict(
        re.findall(
            r'\[data-stage="(\w+)"\] \{ background: (#[0-9a-f]{6}); \}',
            (ROOT / "clients" / "web" / "style.css").read_text(),
        )
    )
    assert coloured == {part: page[part] for part in TURN_PARTS}  # the browser's colours
    assert set(TURN_PARTS) <= set(metrics.TURN_STAGES)
