"""The kill pipeline: a confirmed kill carries the OOM-risk figures of its target's last
sample, taken from the daemon's live state when the kill's records arrive."""

from __future__ import annotations

from collections.abc import Callable

from pressured import config
from pressured.daemon.kill_pipeline import KillPipeline
from pressured.daemon.state import LiveState
from pressured.daemon.targets import TargetState
from pressured.engine import Engine
from pressured.model import SOURCE_COUNTERS_RESTART, Identity, KillRecord, OomKill, Sample

MiB = 1 << 20


class NoTargets:
    """Stand-in for the target table (the pipeline asks it only for a target by key here):
    the kill's target has been dropped already, as a killed container's cgroup often is."""

    def get(self, key: str | None) -> TargetState | None:
        return None


def make_pipeline(
    live: LiveState, emitted: list[OomKill], clock: Callable[[], float]
) -> KillPipeline:
    """A pipeline with no kill source open, its kills into ``emitted``."""
    return KillPipeline(
        config.load(None, env={}),
        NoTargets(),  # type: ignore[arg-type]
        Engine(),
        lambda kill, state: emitted.append(kill),
        clock=clock,
        wall=lambda: 1_700_000_000.0,
        proc_root="/proc",
        last_sample=live.last_sample,
    )


def test_a_kill_carries_the_last_samples_risk_figures_after_its_target_is_gone() -> None:
    now = [100.0]
    live = LiveState(None, wall=lambda: 1_700_000_000.0)
    for key in ("job", "old"):
        for t, anon in ((98.0, 40 * MiB), (99.0, 61 * MiB)):
            sample = Sample(key, t, 70 * MiB, 66 * MiB, 64 * MiB, unreclaimable_bytes=anon)
            live.sample(key, f"/{key}", Identity(), sample, value=anon, severity="critical")
    emitted: list[OomKill] = []
    pipeline = make_pipeline(live, emitted, lambda: now[0])
    record = KillRecord("kmsg", 100.0, 1_700_000_000.0, cgroup="/job", pid=7, extra={"key": "job"})
    pipeline.add_polled([record])
    live.forget("job")  # dropped before the merge window closed
    # kills while the daemon was down get no figures: no sample is from before them
    down = KillRecord(SOURCE_COUNTERS_RESTART, 100.0, 1_699_999_000.0, extra={"key": "old"})
    pipeline.add_polled([down])
    now[0] = 200.0
    pipeline.flush(now[0])
    by_pid = {k.pid: k.to_json() for k in emitted}
    assert set(by_pid) == {7, None}
    killed = by_pid[7]
    assert killed["unreclaimable_bytes"] == 61 * MiB
    assert killed["working_set_bytes"] == 66 * MiB
    assert killed["decided_by"] == "unreclaimable"
    while_down = by_pid[None]
    assert while_down["while_down"] is True
    assert (while_down["unreclaimable_bytes"], while_down["decided_by"]) == (None, None)


def test_without_an_unreclaimable_figure_the_kill_says_the_working_set_decided() -> None:
    live = LiveState(None)
    sample = Sample("pod/c", 5.0, 90 * MiB, 80 * MiB, 100 * MiB)  # the kubelet's summary
    live.sample("pod/c", "pod/c", Identity(), sample, value=80 * MiB, severity="warn")
    emitted: list[OomKill] = []
    pipeline = make_pipeline(live, emitted, lambda: 5.0)
    pipeline.add_polled([KillRecord("counters", 5.0, 1_700_000_000.0, extra={"key": "pod/c"})])
    pipeline.flush(50.0)
    (kill,) = [k.to_json() for k in emitted]
    assert (kill["unreclaimable_bytes"], kill["working_set_bytes"], kill["decided_by"]) == (
        None,
        80 * MiB,
        "working_set",
    )
