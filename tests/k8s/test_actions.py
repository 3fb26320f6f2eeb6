"""The k8s-event and evict actions against the fake API server, through the real client."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.evict import EvictAction
from pressured.actions.k8s_event import K8sEventAction, event_message
from pressured.errors import ActionError, ConfigError
from pressured.k8s.client import KubeClient
from pressured.model import Identity, OomKill, PressureEvent
from tests.k8s.fake_apiserver import FakeKube
from tests.support.wait import wait_for

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
WALL = 1772446560.0  # 2026-03-02T10:16:00Z
WEB = Identity(
    namespace="shop",
    pod_name="web-7d4b9c-x2x9q",
    pod_uid=WEB_UID,
    container_name="app",
    container_id="a7a1d1b1" * 8,
    node_name="node-1",
    pod_ip="10.244.1.17",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pressure(
    severity: str = "warn",
    *,
    identity: Identity = WEB,
    eta: float | None = 42.0,
    extra: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> PressureEvent:
    return PressureEvent(
        time=WALL,
        severity=severity,  # type: ignore[arg-type]
        previous_severity="ok",
        cgroup="/kubepods/burstable/pod" + WEB_UID + "/" + "a7a1d1b1" * 8,
        usage_bytes=230 * 2**20,
        working_set_bytes=200 * 2**20,
        limit_bytes=256 * 2**20,
        usage_percent=78.125,
        growth_bytes_per_s=1.5 * 2**20,
        eta_seconds=eta,
        psi_some_avg10=None,
        psi_full_avg10=None,
        rule="warn_percent>=70",
        key="/sys/fs/cgroup/kubepods/x",
        identity=identity,
        extra=dict(extra or {}),
        dry_run=dry_run,
    )


def kill() -> OomKill:
    return OomKill(
        time=WALL,
        cgroup="/kubepods/burstable/pod" + WEB_UID,
        pid=41807,
        comm="python3",
        oom_kill_count=1,
        sources=("kmsg", "counters"),
        warned_seconds_before=12.4,
        identity=WEB,
    )


def ctx_for(kube: KubeClient | None, **kw: Any) -> ActionContext:
    return ActionContext(mode="node", node_name="node-1", kube=kube, **kw)


def pod_events(fake: FakeKube) -> list[dict[str, Any]]:
    with fake.cond:
        return [
            e
            for e in fake.events.values()
            if e["involvedObject"].get("uid") == WEB_UID and e["source"]["component"] == "pressured"
        ]


# ---------------------------------------------------------------- k8s-event
def test_k8s_event_needs_a_kubernetes_mode() -> None:
    with pytest.raises(ConfigError, match=r"actions\[3\]: k8s-event needs a Kubernetes mode"):
        K8sEventAction({}, ActionContext(mode="local"), "actions[3]")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"severites": ["warn"]},
            r"actions\[0\]\.severites: unknown option .*did you mean 'severities'",
        ),
        (
            {"severities": ["warn", "recovered"]},
            r"actions\[0\]\.severities: expected a non-empty list",
        ),
        ({"severities": []}, r"actions\[0\]\.severities"),
        (
            {"min_interval_seconds": -1},
            r"actions\[0\]\.min_interval_seconds: expected zero or more",
        ),
        ({"max_per_minute": 0}, r"actions\[0\]\.max_per_minute: expected a positive number"),
        ({"max_per_minute": "60"}, r"actions\[0\]\.max_per_minute: expected int"),
    ],
)
def test_k8s_event_options_are_validated(
    kube: KubeClient, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        K8sEventAction(options, ctx_for(kube), "actions[0]")


def test_warning_event_then_aggregated_repeats(kube: KubeClient, fake_api: FakeKube) -> None:
    clock = Clock()
    action = K8sEventAction({"min_interval_seconds": 30}, ctx_for(kube), "actions[0]", clock=clock)
    action.run(pressure("warn"))
    events = pod_events(fake_api)
    assert len(events) == 1
    ev = events[0]
    assert ev["reason"] == "MemoryPressureWarning"
    assert ev["type"] == "Warning"
    assert ev["count"] == 1
    assert ev["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-7d4b9c-x2x9q",
        "namespace": "shop",
        "uid": WEB_UID,
        "fieldPath": "spec.containers{app}",
    }
    assert ev["metadata"]["namespace"] == "shop"
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-03-02T10:16:00Z"
    assert "200.0Mi working set" in ev["message"]
    assert "of 256.0Mi limit (78.1% by working_set)" in ev["message"]
    assert "ETA 42s" in ev["message"]
    assert ev["source"] == {"component": "pressured", "host": "node-1"}

    # Within the interval: no API call, the repeat is folded into the next write.
    clock.now += 10
    action.run(pressure("warn"))
    action.run(pressure("warn"))
    assert len(fake_api.requests_to("PATCH", r"/api/v1/namespaces/shop/events/.*")) == 0
    clock.now += 30
    action.run(pressure("warn", eta=7.0))
    patches = fake_api.requests_to("PATCH", r"/api/v1/namespaces/shop/events/.*")
    assert len(patches) == 1
    assert patches[0].headers["content-type"] == "application/merge-patch+json"
    events = pod_events(fake_api)
    assert len(events) == 1  # aggregated, like kubectl's "x4 over 40s"
    assert events[0]["count"] == 4
    assert "ETA 7s" in events[0]["message"]
    assert len(fake_api.requests_to("POST", "/api/v1/namespaces/shop/events")) == 1


def test_each_severity_has_its_reason(kube: KubeClient, fake_api: FakeKube) -> None:
    action = K8sEventAction({}, ctx_for(kube), "actions[0]")
    action.run(pressure("warn"))
    action.run(pressure("critical"))
    action.run(kill())
    action.run(pressure("recovered"))
    reasons = sorted(e["reason"] for e in pod_events(fake_api))
    assert reasons == ["MemoryPressureCritical", "MemoryPressureWarning", "OOMKillConfirmed"]
    oom = next(e for e in pod_events(fake_api) if e["reason"] == "OOMKillConfirmed")
    assert oom["message"] == (
        "OOM kill confirmed in container app: python3 (pid 41807) killed, 12s after the first "
        "warning"
    )


def test_severities_option_filters(kube: KubeClient, fake_api: FakeKube) -> None:
    action = K8sEventAction({"severities": ["oom_killed"]}, ctx_for(kube), "actions[0]")
    action.run(pressure("critical"))
    assert pod_events(fake_api) == []
    action.run(kill())
    assert [e["reason"] for e in pod_events(fake_api)] == ["OOMKillConfirmed"]


def test_top_allocator_from_heap_analysis_is_in_the_message(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    top = [
        {
            "function": "main.(*leakyCache).grow",
            "flat": 17301504,
            "flat_pct": 98.24,
            "cum": 17301504,
            "cum_pct": 98.24,
            "unit": "bytes",
            "sample_type": "inuse_space",
        },
        {
            "function": "main.churnBuffers",
            "flat": 65630,
            "flat_pct": 0.37,
            "cum": 65630,
            "cum_pct": 0.37,
            "unit": "bytes",
            "sample_type": "inuse_space",
        },
    ]
    K8sEventAction({}, ctx_for(kube), "actions[0]").run(
        pressure("critical", extra={"pprof_top": top})
    )
    (ev,) = pod_events(fake_api)
    assert ev["message"].endswith("; top allocator: main.(*leakyCache).grow 16.50MB (98.24%)")
    assert "churnBuffers" not in ev["message"]


def test_unusable_pprof_top_is_left_out() -> None:
    assert "top allocator" not in event_message(pressure(extra={"pprof_top": [{"flat": 1}]}))
    assert "top allocator: x" in event_message(pressure(extra={"pprof_top": "x"}))


def test_jvm_heap_top_class_is_in_the_message() -> None:
    top = [{"name": "com.shop.Cache$Entry", "bytes": 28800000, "instances": 200000}]
    message = event_message(pressure(extra={"heap_top": top}))
    assert message.endswith("; top class: com.shop.Cache$Entry 27.5Mi in 200000 instances")
    assert "top class" not in event_message(pressure(extra={"heap_top": [{"bytes": 1}]}))
    assert "top class" not in event_message(pressure(extra={"heap_top": "x"}))


def test_global_rate_limit_folds_instead_of_dropping(kube: KubeClient, fake_api: FakeKube) -> None:
    clock = Clock()
    action = K8sEventAction(
        {"max_per_minute": 2, "min_interval_seconds": 0}, ctx_for(kube), "a", clock=clock
    )
    for _ in range(4):
        action.run(pressure("warn"))
    assert action.suppressed == 2
    (ev,) = pod_events(fake_api)
    assert ev["count"] == 2
    clock.now += 30  # one token back
    action.run(pressure("warn"))
    (ev,) = pod_events(fake_api)
    assert ev["count"] == 5  # the two held back plus this one
    requests = fake_api.requests_to(
        "POST", "/api/v1/namespaces/shop/events"
    ) + fake_api.requests_to("PATCH", r"/api/v1/namespaces/shop/events/.*")
    assert len(requests) == 3


def test_expired_event_is_created_again(kube: KubeClient, fake_api: FakeKube) -> None:
    clock = Clock()
    action = K8sEventAction({}, ctx_for(kube), "a", clock=clock)
    action.run(pressure("warn"))
    with fake_api.cond:
        fake_api.events.clear()  # the API server dropped it after its TTL
    clock.now += 100
    action.run(pressure("warn"))
    (ev,) = pod_events(fake_api)
    assert ev["count"] == 1
    assert len(fake_api.requests_to("POST", "/api/v1/namespaces/shop/events")) == 2


def test_no_pod_identity_no_event(kube: KubeClient, fake_api: FakeKube) -> None:
    K8sEventAction({}, ctx_for(kube), "a").run(pressure(identity=Identity(pod_uid=WEB_UID)))
    assert fake_api.requests_to("POST", "/api/v1/namespaces/.*/events") == []


def test_dry_run_only_logs(
    kube: KubeClient, fake_api: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pressured.actions")
    K8sEventAction({}, ctx_for(kube, dry_run=True), "a").run(pressure("critical"))
    K8sEventAction({}, ctx_for(kube), "a").run(pressure("critical", dry_run=True))
    assert fake_api.requests_to("POST", "/api/v1/namespaces/.*/events") == []
    assert (
        "dry run: would record Event MemoryPressureCritical on pod shop/web-7d4b9c-x2x9q"
        in caplog.text
    )


def test_api_failure_is_an_action_error(kube: KubeClient, fake_api: FakeKube) -> None:
    fake_api.forced[("POST", "/api/v1/namespaces/shop/events")] = 403
    with pytest.raises(
        ActionError,
        match=r"Event MemoryPressureWarning on pod shop/web-7d4b9c-x2x9q: "
        r"POST .*/api/v1/namespaces/shop/events: HTTP 403",
    ):
        K8sEventAction({}, ctx_for(kube), "actions[1]").run(pressure("warn"))


def test_an_event_not_taken_is_held_and_posted_later(kube: KubeClient, fake_api: FakeKube) -> None:
    """The API server away (503 here: the real one's outage is in tests/k8s_real/test_faults):
    the write fails the run and is held; a repeat joins it; both are posted as one Event once
    the server answers again."""
    fake_api.forced[("POST", "/api/v1/namespaces/shop/events")] = 503
    action = K8sEventAction({"min_interval_seconds": 0}, ctx_for(kube), "actions[1]")
    action.retry_seconds = 0.05
    with pytest.raises(ActionError, match=r"HTTP 503: .*\(held, retried every 0.05s"):
        action.run(pressure("warn"))
    action.run(pressure("warn"))  # joins the held write, no request of its own
    assert action.unposted == 1
    del fake_api.forced[("POST", "/api/v1/namespaces/shop/events")]
    (event,) = wait_for(lambda: pod_events(fake_api), 10, "the held Event posted")
    assert event["count"] == 2 and event["reason"] == "MemoryPressureWarning"
    action.close()


@pytest.mark.parametrize("code", [403, 422])
def test_an_event_refused_for_good_is_not_held(
    kube: KubeClient, fake_api: FakeKube, code: int
) -> None:
    """A refusal the API server would repeat (RBAC, an invalid object) is reported and
    counted, not held: retrying it for 15 minutes would only repeat it."""
    path = "/api/v1/namespaces/shop/events"
    fake_api.forced[("POST", path)] = code
    action = K8sEventAction({"min_interval_seconds": 0}, ctx_for(kube), "actions[1]")
    action.retry_seconds = 0.05
    with pytest.raises(ActionError, match=rf"HTTP {code}|403") as err:
        action.run(pressure("warn"))
    assert "held" not in str(err.value)
    assert (action.unposted, action.dropped) == (1, 1)
    with pytest.raises(ActionError):
        action.run(pressure("warn"))  # tried again: nothing was held for it to join
    assert len(fake_api.requests_to("POST", path)) == 2
    action.close()


# ---------------------------------------------------------------- evict
def test_evict_needs_a_kubernetes_mode_and_is_destructive() -> None:
    assert EvictAction.destructive is True
    with pytest.raises(ConfigError, match=r"actions\[2\]: evict needs a Kubernetes mode"):
        EvictAction({}, ActionContext(), "actions[2]")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"severities": ["oom_killed"]}, r"actions\[0\]\.severities"),
        ({"max_eta_seconds": 0}, r"actions\[0\]\.max_eta_seconds: expected a positive number"),
        (
            {"grace_period_seconds": -1},
            r"actions\[0\]\.grace_period_seconds: expected zero or more",
        ),
        ({"grace_period_seconds": 1.5}, r"actions\[0\]\.grace_period_seconds: expected int"),
        ({"max_eta": 10}, r"actions\[0\]\.max_eta: unknown option .*max_eta_seconds"),
    ],
)
def test_evict_options_are_validated(
    kube: KubeClient, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        EvictAction(options, ctx_for(kube), "actions[0]")


def evictions(fake: FakeKube) -> list[Any]:
    return fake.requests_to("POST", r"/api/v1/namespaces/[^/]+/pods/[^/]+/eviction")


def test_evict_the_last_rung(
    kube: KubeClient, fake_api: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pressured.actions")
    action = EvictAction(
        {"max_eta_seconds": 30, "grace_period_seconds": 10}, ctx_for(kube), "actions[0]"
    )
    action.run(pressure("warn", eta=5))  # not critical
    action.run(pressure("critical", eta=None))  # not growing
    action.run(pressure("critical", eta=45))  # not close enough
    action.run(kill())  # already dead
    assert evictions(fake_api) == []
    action.run(pressure("critical", eta=12))
    (req,) = evictions(fake_api)
    assert req.path == "/api/v1/namespaces/shop/pods/web-7d4b9c-x2x9q/eviction"
    assert req.body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-7d4b9c-x2x9q", "namespace": "shop"},
        "deleteOptions": {"gracePeriodSeconds": 10},
    }
    assert WEB_UID not in fake_api.pods  # the fake deletes an evicted pod
    assert "evicted pod shop/web-7d4b9c-x2x9q (critical 78.1%, ETA 12s)" in caplog.text
    action.run(pressure("critical", eta=3))
    assert len(evictions(fake_api)) == 1  # not twice


def test_pdb_refusal_is_reported_not_retried_in_a_loop(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    fake_api.pdb_protected.add(("shop", "web-7d4b9c-x2x9q"))
    clock = Clock()
    action = EvictAction({"refused_backoff_seconds": 120}, ctx_for(kube), "actions[4]", clock=clock)
    with pytest.raises(ActionError) as info:
        action.run(pressure("critical"))
    text = str(info.value)
    assert (
        "actions[4]: eviction of pod shop/web-7d4b9c-x2x9q refused by a PodDisruptionBudget" in text
    )
    assert "HTTP 429" in text
    assert "The disruption budget web-pdb needs 2 healthy pods" in text
    for _ in range(5):
        clock.now += 10
        action.run(pressure("critical"))  # within the backoff: not asked again
    assert len(evictions(fake_api)) == 1
    clock.now += 100
    fake_api.pdb_protected.clear()
    action.run(pressure("critical"))
    assert len(evictions(fake_api)) == 2
    assert WEB_UID not in fake_api.pods


def test_evict_dry_run(
    kube: KubeClient, fake_api: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pressured.actions")
    EvictAction({}, ctx_for(kube, dry_run=True), "a").run(pressure("critical"))
    assert evictions(fake_api) == []
    assert "dry run: would evict pod shop/web-7d4b9c-x2x9q" in caplog.text


def test_evict_other_failures_are_action_errors(kube: KubeClient, fake_api: FakeKube) -> None:
    ghost = Identity(
        namespace="shop", pod_name="gone-0", pod_uid="00000000-0000-4000-8000-000000000000"
    )
    with pytest.raises(ActionError, match=r"eviction of pod shop/gone-0 failed: .*HTTP 404"):
        EvictAction({}, ctx_for(kube), "a").run(pressure("critical", identity=ghost))


def test_oom_kill_confirmed_says_which_limit_killed(kube: KubeClient, fake_api: FakeKube) -> None:
    words = "killed by the pod's limit of 512Mi, not the container's 1Gi"
    verdict = {"limit_scope": "pod", "limit": {"cgroup": "/kubepods/x", "text": words}}
    K8sEventAction({}, ctx_for(kube), "actions[0]").run(replace(kill(), extra=verdict))
    (ev,) = pod_events(fake_api)
    assert ev["message"] == (
        "OOM kill confirmed in container app: python3 (pid 41807) killed, 12s after the first "
        "warning; " + words
    )
    # a limit without words (an older producer) leaves the message as it was
    assert event_message(replace(kill(), extra={"limit": {"text": 3}})).endswith("warning")


def test_memory_throttled_is_its_own_reason_with_its_evidence(
    kube: KubeClient, fake_api: FakeKube
) -> None:
    evidence = {
        "memory_high_bytes": 48 * 1024 * 1024,
        "high_events_delta": 5230,
        "psi_full_avg10": 41.5,
        "full_stall_us": 12_400_000,
        "held_seconds": 31.2,
    }
    event = replace(pressure("warn", extra={"throttle": evidence}), event_type="memory_throttled")
    K8sEventAction({"severities": ["warn"]}, ctx_for(kube), "actions[0]").run(event)
    (ev,) = pod_events(fake_api)
    assert ev["reason"] == "MemoryThrottled"
    assert ev["message"].endswith(
        "; held at memory.high 48.0Mi for 31s: memory.events high +5230, "
        "memory PSI full avg10 41.5%, 12.4s fully stalled"
    )
    # evidence of the wrong shape is left out, never an error
    broken = replace(event, extra={"throttle": {"held_seconds": "long", "psi_full_avg10": True}})
    assert event_message(broken).endswith("; held at memory.high")
