"""What each OOM-risk scenario must show with the default metric (unreclaimable), checked the
same way on the host (cgroup v1, tests/kernel) and in the VM (cgroup v2, tests/vm)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.oom_risk import (
    LIMIT,
    SCENARIOS,
    MakeChild,
    NotHere,
    Outcome,
    every_kill_warned_first,
    kills,
    summary,
    warnings,
)

METRIC = "unreclaimable"


def run(name: str, make: MakeChild, tmp_path: Path, data_dir: str) -> list[dict[str, object]]:
    try:
        outcome: Outcome = SCENARIOS[name](make, tmp_path, data_dir, (METRIC,))
    except NotHere as exc:
        pytest.skip(f"{name}: {exc}")
    docs = outcome.events[METRIC]
    CHECKS[name](docs, outcome)
    every_kill_warned_first(docs)
    return docs


def _decided_here(docs: list[dict[str, object]]) -> None:
    # a kill carries the figures of its target's last sample, as warnings do
    for d in docs:
        assert d["decided_by"] == METRIC, d
        assert d["unreclaimable_bytes"] is not None and d["working_set_bytes"] is not None


def check_page_cache(docs: list[dict[str, object]], outcome: Outcome) -> None:
    # the daemon saw a working set that the working_set metric warns on (70 %), and no warning
    assert outcome.notes["seen"]["working_set"] >= 0.75 * LIMIT
    assert warnings(docs) == [], summary(docs)
    assert kills(docs) == []


def check_thrash(docs: list[dict[str, object]], outcome: Outcome) -> None:
    assert warnings(docs) == [], summary(docs)
    assert kills(docs) == []
    thrash = [d for d in docs if d["event_type"] == "memory_thrash"]
    assert thrash, summary(docs)
    first = thrash[0]
    assert first["severity"] == "thrash"
    assert first["refault_file_per_s"] > 0, first
    assert first["psi"]["some_avg10"] >= outcome.notes["level"], first
    assert first["unreclaimable_bytes"] < 0.5 * LIMIT, first
    _decided_here(docs)


def check_leak(docs: list[dict[str, object]], outcome: Outcome) -> None:
    kinds = [d["severity"] if d["event_type"] != "oom_killed" else "oom_killed" for d in docs]
    assert "warn" in kinds and "critical" in kinds and "oom_killed" in kinds, summary(docs)
    assert kinds.index("warn") < kinds.index("critical") < kinds.index("oom_killed")
    warn = docs[kinds.index("warn")]
    assert warn["unreclaimable_bytes"] >= 0.7 * LIMIT, warn
    assert warn["usage_percent"] >= 70, warn
    _decided_here(docs)


def check_mixed(docs: list[dict[str, object]], outcome: Outcome) -> None:
    assert outcome.calm_until is not None
    # calm: the hot page cache took the working set past the warn level, and nothing warned
    assert outcome.notes["seen_calm"]["working_set"] >= 0.75 * LIMIT
    early = [d for d in warnings(docs) if d["time"] <= outcome.calm_until]
    assert early == [], summary(docs)
    # then the warning comes from the anonymous part
    check_leak(docs, outcome)


CHECKS: dict[str, Callable[[list[dict[str, object]], Outcome], None]] = {
    "page_cache": check_page_cache,
    "thrash": check_thrash,
    "anon_leak": check_leak,
    "shmem_leak": check_leak,
    "mixed": check_mixed,
    "kernel_leak": check_leak,
}
