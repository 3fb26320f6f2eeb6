"""Events on the pods are on by default and off with one value: the k8s-event action in the
rendered config, its RBAC, and NOTES telling how to see the Events, all three together."""

from __future__ import annotations

import pytest
import yaml

from tests.k8s_real.conftest import Lane
from tests.k8s_real.test_lane import CHART, MODES, render

pytestmark = pytest.mark.k8s_real

SEE_KILLS = "kubectl get events -A --field-selector reason=OOMKillConfirmed"


def notes(lane: Lane, *values: str) -> str:
    """NOTES.txt as `helm install` prints it (a dry run against the lane's API server)."""
    out = lane.helm(
        "install", "notes", str(CHART), "--namespace", "default", "--dry-run=server", *values
    ).stdout
    return out.partition("NOTES:")[2]


def rendered(lane: Lane, *values: str) -> tuple[list[str], set[tuple[str, str]]]:
    """(action types of the config, (resource, verb) granted on events)."""
    docs = [m.doc for m in render(lane, "ev", "watchers", *values)]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    actions = [a["type"] for a in yaml.safe_load(cm["data"]["config.yaml"])["actions"]]
    grants = {
        (resource, verb)
        for d in docs
        if d["kind"] == "ClusterRole"
        for rule in d["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if resource == "events"
    }
    return actions, grants


@pytest.mark.parametrize("mode", MODES)
def test_events_are_on_by_default(k8s_lane: Lane, mode: str) -> None:
    actions, grants = rendered(k8s_lane, "--set", f"mode={mode}")
    assert actions.count("k8s-event") == 1
    assert {("events", "create"), ("events", "patch")} <= grants
    text = notes(k8s_lane, "--set", f"mode={mode}")
    assert SEE_KILLS in text
    assert "--set actions.events=false" in text


def test_events_off_with_one_value(k8s_lane: Lane) -> None:
    actions, grants = rendered(k8s_lane, "--set", "actions.events=false")
    assert actions == ["log"]
    assert not {("events", "create"), ("events", "patch")} & grants
    text = notes(k8s_lane, "--set", "actions.events=false")
    assert SEE_KILLS not in text
    assert "Events on the pods are off" in text


def test_a_configured_k8s_event_action_is_not_doubled(k8s_lane: Lane) -> None:
    actions, _ = rendered(
        k8s_lane, "--set-json", 'config.actions=[{"type":"k8s-event","severities":["critical"]}]'
    )
    assert actions == ["k8s-event"]


def test_a_k8s_event_action_without_its_rbac_is_refused(k8s_lane: Lane) -> None:
    proc = k8s_lane.helm(
        "template",
        "ev",
        str(CHART),
        "--set",
        "actions.events=false",
        "--set-json",
        'config.actions=[{"type":"k8s-event"}]',
        check=False,
    )
    assert proc.returncode != 0
    assert "/actions/events" in proc.stderr, proc.stderr
