"""The chart's PrometheusRule and Grafana dashboard (both opt-in), rendered by real helm.

The alert rules pass `promtool check rules` and the unit tests of fixtures/alerts.test.yaml
(`promtool test rules`: series in, alerts out, with their labels and texts). promtool is
Debian's (package prometheus), which `scripts/bootstrap --dev` installs as root.

Every metric a rule or a dashboard query names is one that a real `pressured run` exposes: the
daemon is started on a cgroup of this host and its /metrics read; the queries are parsed with
promql-parser (Prometheus' grammar), not matched with a pattern. Only the rules may name `up`,
which Prometheus makes for each scrape.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace
from prometheus_client.parser import text_string_to_metric_families

from tests.k8s_real.conftest import Lane, api_error, lane_requested
from tests.k8s_real.test_lane import (
    CHART,
    MODES,
    Api,
    apply_all,
    operator_crds,  # noqa: F401 - a fixture
    render,
)
from tests.support.cgroups import child_cgroup, own_memory_cgroup
from tests.support.daemon import running

pytestmark = pytest.mark.k8s_real

FIXTURES = Path(__file__).parent / "fixtures"
ALERT_TESTS = FIXTURES / "alerts.test.yaml"
DASHBOARD_FILE = CHART / "dashboards" / "pressured.json"
ALERTS = {
    "PressuredOOMKillUnwarned",
    "PressuredOOMKillAfterWarning",
    "PressuredContainerCritical",
    "PressuredWatcherDown",
    "PressuredWatcherAbsent",
    "PressuredKillSourceInactive",
    "PressuredKillSourceLosingRecords",
    "PressuredEventsDropped",
    "PressuredActionsFailing",
}
KILL_SOURCE_ALERTS = {"PressuredKillSourceInactive", "PressuredKillSourceLosingRecords"}
"""Alerts over the kernel kill sources: none where no source is named (cluster mode)."""
SCRAPE_MADE = {"up"}
"""Series Prometheus itself adds to every scrape."""
# Grafana's variables, replaced by what Grafana would put there before a query is sent.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        why = (
            "promtool is not installed: `scripts/bootstrap --dev` installs Debian's prometheus "
            "package when run as root"
        )
        if lane_requested():  # `make test-k8s` proves the rules: it may not skip them
            pytest.fail(why)
        pytest.skip(why)
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (a syntax error raises)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_metric_names_reads_selectors_only() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{job="x"}[$__rate_interval])) / on (job) group_left '
        'count(b{namespace=~"$namespace"}) or absent(up) or {__name__="c"} > 0'
    )
    assert metric_names(expr) == {"a_bucket", "b", "up", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a[5m])")


# ---------------------------------------------------------------- a real daemon's /metrics


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """The sample names of every family a running daemon declares on /metrics."""
    base, why = own_memory_cgroup()
    if base is None:
        pytest.skip(f"no writable memory cgroup here to run the daemon on: {why}")
    with child_cgroup(f"pressured-metrics-{os.getpid()}", 64 * 1024 * 1024) as child:
        args = ["run", "--cgroup", child.path, "--metrics-port", "0", "--events-out", os.devnull]
        with running(args) as daemon:
            port = int(daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    names: set[str] = set()
    samples: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))}
        samples |= {s.name for s in family.samples}
    # The run is real: the cgroup given is watched and measured.
    assert "memory_usage" in samples and "pressured_watched_cgroups" in samples, text[:2000]
    return names | samples


# ---------------------------------------------------------------- the PrometheusRule


def rendered_rule(lane: Lane, mode: str = "node", *values: str) -> dict[str, Any]:
    docs = [
        m.doc
        for m in render(
            lane,
            "pressured",
            "monitoring",
            "--set",
            f"mode={mode}",
            "--set",
            "metrics.prometheusRule.enabled=true",
            *values,
        )
    ]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule


def rules_file(rule: dict[str, Any], where: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file."""
    where.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    return where


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.usefixtures("operator_crds")
def test_rule_is_accepted_by_the_api_server_under_the_operators_crd(
    k8s_lane: Lane, make_ns: Callable[[], str], mode: str
) -> None:
    ns = make_ns()
    manifests = render(
        k8s_lane,
        "pressured",
        ns,
        "--set",
        f"mode={mode}",
        "--set",
        "metrics.prometheusRule.enabled=true",
    )
    rules = [m for m in manifests if m.doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    apply_all(Api(k8s_lane), rules, ns)  # strict field validation by the operator's schema


def test_rule_is_off_by_default(k8s_lane: Lane) -> None:
    kinds = {m.doc["kind"] for m in render(k8s_lane, "pressured", "monitoring")}
    assert "PrometheusRule" not in kinds


@pytest.mark.parametrize("mode", MODES)
def test_rules_pass_promtool_check(k8s_lane: Lane, tmp_path: Path, mode: str) -> None:
    tool = promtool()
    rule = rendered_rule(k8s_lane, mode)
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    # Cluster mode has no kernel kill sources to watch over.
    assert alerts == (ALERTS if mode == "node" else ALERTS - KILL_SOURCE_ALERTS)
    proc = subprocess.run(
        [tool, "check", "rules", str(rules_file(rule, tmp_path / "rules.yaml"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in proc.stdout


def test_rules_pass_their_promtool_unit_tests(k8s_lane: Lane, tmp_path: Path) -> None:
    tool = promtool()
    rules_file(rendered_rule(k8s_lane), tmp_path / "rules.yaml")
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    tests["rule_files"] = ["rules.yaml"]
    # Every alert has a case that fires it.
    fired = {
        a["alertname"]
        for case in tests["tests"]
        for a in case["alert_rule_test"]
        if a.get("exp_alerts")
    }
    assert fired == ALERTS
    (tmp_path / "alerts.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    proc = subprocess.run(
        [tool, "test", "rules", "alerts.test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_values_reach_the_rules(k8s_lane: Lane) -> None:
    rule = rendered_rule(
        k8s_lane,
        "node",
        "--set",
        "config.thresholds.critical_percent=93",
        "--set",
        "metrics.prometheusRule.criticalFor=3m",
        "--set-string",
        'metrics.prometheusRule.selector=namespace="obs"',
        "--set",
        "metrics.prometheusRule.killSources=",
    )
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    critical = by_name["PressuredContainerCritical"]
    assert critical["expr"] == 'memory_usage{namespace="obs",container!=""} >= 93'
    assert critical["for"] == "3m"
    assert not KILL_SOURCE_ALERTS & set(by_name)


def test_rules_name_only_metrics_a_daemon_exposes(k8s_lane: Lane, exposed: set[str]) -> None:
    for mode in MODES:
        rule = rendered_rule(k8s_lane, mode)
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                unknown = metric_names(r["expr"]) - exposed - SCRAPE_MADE
                assert not unknown, f"{mode} {r['alert']}: {sorted(unknown)} not exposed"


# ---------------------------------------------------------------- the dashboard


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        # label_values(<selector>, <label>): the selector is the PromQL part.
        if text.startswith("label_values("):
            text = text.removeprefix("label_values(").rsplit(",", 1)[0]
        out.append((f"variable {variable['name']!r}", text))
    return out


@pytest.fixture(scope="module")
def dashboard_configmap(k8s_lane: Lane) -> dict[str, Any]:
    docs = [
        m.doc
        for m in render(
            k8s_lane, "pressured", "monitoring", "--set", "metrics.grafanaDashboard.enabled=true"
        )
    ]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "pressured.json" in d["data"]]
    return cm


def test_dashboard_is_off_by_default(k8s_lane: Lane) -> None:
    docs = [m.doc for m in render(k8s_lane, "pressured", "monitoring")]
    assert not [d for d in docs if "pressured.json" in d.get("data", {})]


def test_dashboard_configmap_is_what_grafana_loads(
    k8s_lane: Lane, dashboard_configmap: dict[str, Any], make_ns: Callable[[], str]
) -> None:
    assert dashboard_configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_configmap["data"]["pressured.json"])
    assert dashboard == json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "pressured" and dashboard["panels"]
    ns = make_ns()
    r = Api(k8s_lane).create(
        {**dashboard_configmap, "metadata": {**dashboard_configmap["metadata"], "namespace": ns}},
        ns,
        dry_run=True,
    )
    assert r.status_code == 201, api_error(r)


def test_dashboard_queries_name_only_metrics_a_daemon_exposes(
    dashboard_configmap: dict[str, Any], exposed: set[str]
) -> None:
    dashboard = json.loads(dashboard_configmap["data"]["pressured.json"])
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    named: set[str] = set()
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exposed
        assert not unknown, f"{where}: {sorted(unknown)} not exposed by the daemon ({expr!r})"
        named |= names
    # The panels cover the kills, the warnings and the watcher's own health.
    assert {
        "memory_usage",
        "oom_kills_total",
        "pressured_kills_unwarned_total",
        "pressured_warning_lead_seconds_bucket",
        "pressured_actions_dropped_total",
        "pressured_kill_sources_active",
    } <= named


@pytest.fixture
def make_ns(k8s_lane: Lane) -> Callable[[], str]:
    def make() -> str:
        name = f"mon-{uuid.uuid4().hex[:6]}"
        k8s_lane.client.create(Namespace(metadata=ObjectMeta(name=name)))
        return name

    return make


@pytest.mark.parametrize("mode", MODES)
def test_chart_with_rule_and_dashboard_lints_strictly(k8s_lane: Lane, mode: str) -> None:
    proc = k8s_lane.helm(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        f"mode={mode}",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
