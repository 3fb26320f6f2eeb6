"""The k8s-event and evict actions: their options, their messages, and the Events API answering
with a status code chosen by the test (the fake API server). What they do against a real API
server (Events created and aggregated, evictions, budgets, RBAC refusals) is in
tests/k8s_real/test_parts.py."""

from __future__ import annotations

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
from tests.support.events import oom_kill_event, pressure_event
from tests.support.wait import wait_for

WEB_UID = "3f1c2b9e-8a47-4c1e-9d2a-6b5e7f8a9c01"
WEB = Identity(
    namespace="shop",
    pod_name="web-7d4b9c-x2x9q",
    pod_uid=WEB_UID,
    container_name="app",
    container_id="a7a1d1b1" * 8,
    node_name="node-1",
    pod_ip="10.244.1.17",
)


def pressure(severity: str = "warn", **options: Any) -> PressureEvent:
    return pressure_event(WEB, severity, **options)


def kill() -> OomKill:
    return oom_kill_event(WEB)


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


def test_unusable_pprof_top_is_left_out() -> None:
    assert "top allocator" not in event_message(pressure(extra={"pprof_top": [{"flat": 1}]}))
    assert "top allocator: x" in event_message(pressure(extra={"pprof_top": "x"}))


def test_a_limit_without_words_and_broken_throttle_evidence_are_left_out() -> None:
    """The words the real Events carry are in tests/k8s_real/test_parts.py; an older producer's
    limit without words, or evidence of the wrong shape, leaves them out, never an error."""
    assert event_message(replace(kill(), extra={"limit": {"text": 3}})).endswith("warning")
    throttled = replace(
        pressure("warn", extra={"throttle": {"held_seconds": "long", "psi_full_avg10": True}}),
        event_type="memory_throttled",
    )
    assert event_message(throttled).endswith("; held at memory.high")


def test_jvm_heap_top_class_is_in_the_message() -> None:
    top = [{"name": "com.shop.Cache$Entry", "bytes": 28800000, "instances": 200000}]
    message = event_message(pressure(extra={"heap_top": top}))
    assert message.endswith("; top class: com.shop.Cache$Entry 27.5Mi in 200000 instances")
    assert "top class" not in event_message(pressure(extra={"heap_top": [{"bytes": 1}]}))
    assert "top class" not in event_message(pressure(extra={"heap_top": "x"}))


def test_an_event_not_taken_is_held_and_posted_later(kube: KubeClient, fake_api: FakeKube) -> None:
    """Fault: HTTP 503 on the Events POST, then a normal answer (a real API server away refuses
    the connection instead: that outage is in tests/k8s_real/test_faults). The write fails the
    run and is held; a repeat joins it; both are posted as one Event once the server answers
    again."""
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


def test_an_event_refused_as_invalid_is_not_held(kube: KubeClient, fake_api: FakeKube) -> None:
    """Fault: HTTP 422 on the Events POST (the Events action writes valid Events, so a real
    server never answers it so). A refusal the API server would repeat is reported and counted,
    not held: retrying it for 15 minutes would only repeat it (the 403 of RBAC is proved the
    same way in tests/k8s_real/test_parts.py)."""
    path = "/api/v1/namespaces/shop/events"
    code = 422
    fake_api.forced[("POST", path)] = code
    action = K8sEventAction({"min_interval_seconds": 0}, ctx_for(kube), "actions[1]")
    action.retry_seconds = 0.05
    with pytest.raises(ActionError, match=rf"HTTP {code}") as err:
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
