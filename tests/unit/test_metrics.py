from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pressured.errors import ConfigError
from pressured.metrics import Metrics, MetricsServer, MetricsSettings, start_http
from pressured.model import Identity, OomKill, PressureEvent, Psi, Sample

Labels = tuple[tuple[str, str], ...]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Metrics:
    return Metrics(node="node-1", pid_labels=False, clock=clock)


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    with start_http(metrics.registry, "127.0.0.1", 0) as srv:
        yield srv


def scrape(server: MetricsServer) -> dict[str, dict[Labels, float]]:
    """Every sample of a real scrape: {sample name: {sorted labels: value}}."""
    reply = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def lab(*base: Labels, **labels: str) -> Labels:
    merged = dict(labels)
    for b in base:
        merged.update(b)
    return tuple(sorted(merged.items()))


IDENT = Identity(namespace="shop", pod_name="cart-1", container_name="app")
TARGET = lab(namespace="shop", pod="cart-1", container="app", cgroup="/kubepods/cart")


def sample(key: str = "cart", psi: bool = True) -> Sample:
    return Sample(
        key=key,
        time=1.0,
        usage_bytes=900,
        working_set_bytes=800,
        limit_bytes=1000,
        memory_psi=Psi(some_avg10=1.5, some_avg60=1.0, some_avg300=0.5, full_avg10=0.75)
        if psi
        else None,
        io_psi=Psi(some_avg300=4.0) if psi else None,
        oom_score=812,
    )


def kill(warned: float | None, **extra: object) -> OomKill:
    return OomKill(
        time=1_700_000_123.5,
        cgroup="/kubepods/cart",
        pid=4242,
        comm="java",
        oom_kill_count=1,
        sources=("kmsg",),
        warned_seconds_before=warned,
        identity=IDENT,
        extra=dict(extra),
    )


def test_target_families_over_http(metrics: Metrics, server: MetricsServer) -> None:
    metrics.observe_sample(sample(), "/kubepods/cart", IDENT, 80.0)
    got = scrape(server)
    assert got["memory_usage"] == {TARGET: 80.0}
    assert got["oom_score"] == {TARGET: 812.0}
    mem = got["memory_pressure"]
    assert len(mem) == 6
    assert mem[lab(TARGET, severity_level="some", severity_window="avg10")] == 1.5
    assert mem[lab(TARGET, severity_level="some", severity_window="avg60")] == 1.0
    assert mem[lab(TARGET, severity_level="full", severity_window="avg10")] == 0.75
    assert mem[lab(TARGET, severity_level="full", severity_window="avg300")] == 0.0
    assert got["io_pressure"][lab(TARGET, severity_level="some", severity_window="avg300")] == 4.0
    assert "cpu_pressure" not in got  # the sample had no CPU PSI


def test_pid_label_only_when_asked(clock: Clock) -> None:
    m = Metrics(node="n", pid_labels=True, clock=clock)
    m.observe_sample(sample(psi=False), "/kubepods/cart", IDENT, 12.5, pid=99)
    assert m.registry.get_sample_value("memory_usage", dict(TARGET) | {"pid": "99"}) == 12.5
    plain = Metrics(node="n", pid_labels=False, clock=clock)
    plain.observe_sample(sample(psi=False), "/kubepods/cart", IDENT, 12.5, pid=99)
    assert plain.registry.get_sample_value("memory_usage", dict(TARGET)) == 12.5


def test_kill_families_over_http(metrics: Metrics, server: MetricsServer) -> None:
    rss = {"anon_rss": 734003200, "file_rss": 4096, "shmem_rss": 0, "total_vm": 2147483648}
    metrics.observe_event(kill(12.5, rss=rss))
    metrics.observe_event(kill(None))
    got = scrape(server)
    per_pod = lab(node="node-1", namespace="shop", pod="cart-1", container="app")
    assert got["oom_kills_total"] == {per_pod: 2.0}
    assert got["oom_kills_per_node_total"] == {lab(node="node-1"): 2.0}
    assert got["oom_last_timestamp"] == {per_pod: 1_700_000_123.5}
    usage = got["oom_memory_usage_bytes"]
    assert usage[lab(per_pod, memory_type="anon_rss")] == 734003200
    assert usage[lab(per_pod, memory_type="total_vm")] == 2147483648
    assert len(usage) == 4
    assert got["pressured_kills_unwarned_total"] == {(): 1.0}
    assert got["pressured_warning_lead_seconds_count"] == {(): 1.0}
    assert got["pressured_warning_lead_seconds_sum"] == {(): 12.5}
    buckets = got["pressured_warning_lead_seconds_bucket"]
    assert buckets[lab(le="10.0")] == 0.0
    assert buckets[lab(le="30.0")] == 1.0
    assert buckets[lab(le="+Inf")] == 1.0
    assert got["pressured_events_total"] == {lab(severity="oom_killed"): 2.0}


def test_daemon_families_over_http(metrics: Metrics, server: MetricsServer) -> None:
    event = PressureEvent(
        time=1.0,
        severity="warn",
        previous_severity="ok",
        cgroup="/x",
        usage_bytes=1,
        working_set_bytes=1,
        limit_bytes=2,
        usage_percent=50.0,
        growth_bytes_per_s=None,
        eta_seconds=None,
        psi_some_avg10=None,
        psi_full_avg10=None,
        rule="warn_percent>=70",
    )
    metrics.observe_event(event)
    metrics.observe_event(event)
    metrics.wakeup("psi")
    metrics.wakeup("psi")
    metrics.wakeup("timer")
    metrics.action_failed("webhook")
    metrics.set_watched(17)
    metrics.set_kill_source("kmsg", True)
    metrics.set_kill_source("bcc", True)
    metrics.set_kill_source("bcc", False)
    got = scrape(server)
    assert got["pressured_events_total"] == {lab(severity="warn"): 2.0}
    assert got["pressured_wakeups_total"] == {lab(cause="psi"): 2.0, lab(cause="timer"): 1.0}
    assert got["pressured_actions_failed_total"] == {lab(action="webhook"): 1.0}
    assert got["pressured_watched_cgroups"] == {(): 17.0}
    assert got["pressured_kill_sources_active"] == {lab(source="kmsg"): 1.0, lab(source="bcc"): 0.0}


def test_kill_source_problems_are_counters_from_the_first_reading(
    metrics: Metrics, server: MetricsServer
) -> None:
    metrics.set_kill_source_problems("kmsg", {"lost": 0, "malformed": 0})
    got = scrape(server)["pressured_kill_source_problems_total"]
    assert got == {lab(source="kmsg", kind="lost"): 0.0, lab(source="kmsg", kind="malformed"): 0.0}
    metrics.set_kill_source_problems("kmsg", {"lost": 4, "malformed": 0})
    metrics.set_kill_source_problems("kmsg", {"lost": 6, "malformed": 1})
    # a source reopened counts from 0 again: the counter never goes down
    metrics.set_kill_source_problems("kmsg", {"lost": 2, "malformed": 1})
    got = scrape(server)["pressured_kill_source_problems_total"]
    assert got == {lab(source="kmsg", kind="lost"): 6.0, lab(source="kmsg", kind="malformed"): 1.0}


def test_stale_targets_are_dropped_after_the_ttl(
    metrics: Metrics, server: MetricsServer, clock: Clock
) -> None:
    metrics.observe_sample(sample("old"), "/kubepods/old", Identity(), 10.0)
    clock.now += 30
    metrics.observe_sample(sample("new"), "/kubepods/new", Identity(), 20.0)
    metrics.observe_event(kill(1.0))
    old = lab(namespace="", pod="", container="", cgroup="/kubepods/old")
    new = lab(namespace="", pod="", container="", cgroup="/kubepods/new")

    assert metrics.forget_stale(clock.now + 30) == 0  # old is exactly 60 s old: kept
    assert set(scrape(server)["memory_usage"]) == {old, new}

    assert metrics.forget_stale(clock.now + 31) == 1
    got = scrape(server)
    assert set(got["memory_usage"]) == {new}
    assert set(got["oom_score"]) == {new}
    assert all(k[: len(new)] != old for k in got["memory_pressure"])
    assert len(got["memory_pressure"]) == 6
    assert "oom_kills_total" in got  # kill counters are history, never expired

    clock.now += 100
    assert metrics.forget_stale(ttl=60) == 1  # the injected clock is the default "now"
    assert "memory_usage" not in scrape(server)


def test_a_target_seen_again_is_kept(metrics: Metrics, clock: Clock) -> None:
    metrics.observe_sample(sample(), "/kubepods/cart", IDENT, 10.0)
    clock.now += 50
    metrics.observe_sample(sample(), "/kubepods/cart", IDENT, 11.0)
    assert metrics.forget_stale(clock.now + 20) == 0
    assert metrics.registry.get_sample_value("memory_usage", dict(TARGET)) == 11.0


def test_healthz_and_unknown_paths(server: MetricsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert (health.status_code, health.text) == (200, "ok")
    assert httpx.get(f"{base}/nope", timeout=10).status_code == 404


def test_healthz_says_503_and_why_until_ready() -> None:
    state = {"ready": False}

    def health() -> tuple[bool, str]:
        return (True, "ok") if state["ready"] else (False, "starting: arming targets")

    srv = start_http(Metrics(node=None, pid_labels=False).registry, "127.0.0.1", 0, health=health)
    try:
        url = f"http://127.0.0.1:{srv.port}/healthz"
        r = httpx.get(url, timeout=10)
        assert (r.status_code, r.text) == (503, "starting: arming targets")
        state["ready"] = True
        r = httpx.get(url, timeout=10)
        assert (r.status_code, r.text) == (200, "ok")
    finally:
        srv.close()


def test_registry_is_not_the_global_one(metrics: Metrics) -> None:
    assert metrics.registry is not REGISTRY
    assert REGISTRY.get_sample_value("pressured_watched_cgroups") is None
    # Two instances in one process do not collide.
    Metrics(node="other", pid_labels=False)


def test_bind_failure_names_the_config_keys() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics.address/metrics.port: .*127.0.0.1:{port}"):
            start_http(Metrics(node="n").registry, "127.0.0.1", port)


def test_server_closes(metrics: Metrics) -> None:
    srv = start_http(metrics.registry, "127.0.0.1", 0)
    port = srv.port
    assert port > 0
    srv.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_settings_from_config() -> None:
    assert MetricsSettings.from_config({}) == MetricsSettings()
    s = MetricsSettings.from_config(
        {"metrics": {"enabled": False, "port": "9100", "address": "::1", "pid_labels": True}}
    )
    assert s == MetricsSettings(enabled=False, port=9100, address="::1", pid_labels=True)
    with pytest.raises(ConfigError) as info:
        MetricsSettings.from_config(
            {"metrics": {"port": 70000, "enabled": "sometimes", "address": "", "porr": 1}}
        )
    problems = info.value.problems
    assert "metrics.port: expected a port number 0-65535 (got 70000)" in problems
    assert "metrics.enabled: expected true or false (got 'sometimes')" in problems
    assert "metrics.address: expected a host address (got '')" in problems
    assert any(p.startswith("metrics.porr: unknown key") for p in problems)


def test_both_figures_and_which_decides(
    metrics: Metrics, server: MetricsServer, clock: Clock
) -> None:
    s = replace(sample(), unreclaimable_bytes=300, refault_file=4242)
    metrics.observe_sample(s, "/kubepods/cart", IDENT, 30.0, decided_by="unreclaimable")
    got = scrape(server)
    assert got["pressured_memory_bytes"] == {
        lab(TARGET, kind="usage", decides="0"): 900.0,
        lab(TARGET, kind="working_set", decides="0"): 800.0,
        lab(TARGET, kind="unreclaimable", decides="1"): 300.0,
    }
    assert got["pressured_memory_refaults_file"] == {TARGET: 4242.0}
    # a source without the figure (the kubelet's summary): the working set decides
    other = lab(namespace="", pod="", container="", cgroup="/kubepods/other")
    metrics.observe_sample(
        sample("other"), "/kubepods/other", Identity(), 80.0, decided_by="working_set"
    )
    got = scrape(server)["pressured_memory_bytes"]
    assert got[lab(other, kind="working_set", decides="1")] == 800.0
    assert not any(
        dict(k)["cgroup"] == "/kubepods/other" and dict(k)["kind"] == "unreclaimable" for k in got
    )
    clock.now += 100
    assert metrics.forget_stale(ttl=60) == 2
    got = scrape(server)
    assert "pressured_memory_bytes" not in got and "pressured_memory_refaults_file" not in got


def test_throttled_seconds_add_up_per_target_and_go_with_it(metrics: Metrics, clock: Clock) -> None:
    name = "pressured_memory_throttled_seconds_total"
    metrics.observe_sample(sample(), "/kubepods/cart", IDENT, 90.0)
    metrics.add_throttled_seconds("/kubepods/cart", IDENT, 1.5)
    metrics.add_throttled_seconds("/kubepods/cart", IDENT, 0.0)  # nothing held: no change
    metrics.add_throttled_seconds("/kubepods/cart", IDENT, 2.25)
    assert metrics.registry.get_sample_value(name, dict(TARGET)) == 3.75
    assert metrics.forget_stale(clock.now + 61) == 1
    assert metrics.registry.get_sample_value(name, dict(TARGET)) is None


def test_self_levels_from_config() -> None:
    s = MetricsSettings.from_config(
        {"metrics": {"self_degraded_percent": "70", "self_shed_percent": 80}}
    )
    assert (s.self_degraded_percent, s.self_shed_percent) == (70.0, 80.0)
    with pytest.raises(ConfigError) as info:
        MetricsSettings.from_config({"metrics": {"self_shed_percent": 150}})
    assert "metrics.self_shed_percent: expected a percent 1-100 (got 150)" in info.value.problems


def test_extra_routes_are_read_only_and_listed() -> None:
    asked: list[dict[str, list[str]]] = []

    def route(query: Mapping[str, list[str]]) -> tuple[str, str, bytes]:
        asked.append(dict(query))
        return "200 OK", "application/json", b'{"targets": []}'

    registry = Metrics(node=None).registry
    with start_http(registry, "127.0.0.1", 0, routes={"/v1/state": route}) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        r = httpx.get(f"{base}/v1/state?after=3&wait=1", timeout=10)
        assert (r.status_code, r.json()) == (200, {"targets": []})
        assert r.headers["content-type"] == "application/json"
        assert asked == [{"after": ["3"], "wait": ["1"]}]
        assert httpx.post(f"{base}/v1/state", timeout=10).status_code == 405
        many = "&".join(f"k{i}=1" for i in range(40))
        assert httpx.get(f"{base}/v1/state?{many}", timeout=10).status_code == 400
        missing = httpx.get(f"{base}/nope", timeout=10)
        assert missing.status_code == 404 and "/v1/state" in missing.text
    assert len(asked) == 1
