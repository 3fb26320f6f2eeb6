"""False and missed warnings per metric (usage, working_set, unreclaimable), side by side.

Each workload of tests/support/workloads.py runs once in a real limited cgroup of this host,
watched at the same time by three `pressured run` daemons that differ only in
thresholds.metric (defaults otherwise: warn 70 %, critical 85 %). Per metric it counts:

- false warnings: warning episodes (a warn or critical event after ok) of a workload that was
  not at risk: page cache only, a page-cache thrash, and the calm part of mixed (anonymous
  memory held at a quarter of the limit beside a hot page cache);
- missed warnings: OOM kills with no warning before them (warned_seconds_before null);
- the lead of each warning before its kill.

Prints one JSON object.

    python bench/oom_risk.py [--only page_cache,anon_leak] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pressured.demo.child import Child, own_memory_cgroup
from tests.support.oom_risk import AT_RISK, METRICS, SCENARIOS, NotHere, Outcome, kills


def episodes(docs: list[dict[str, Any]], before: str | None = None) -> int:
    """Warning episodes begun (before ``before``, an RFC 3339 time, when given)."""
    return sum(
        1
        for d in docs
        if d["event_type"] == "memory_pressure"
        and d["severity"] in ("warn", "critical")
        and d["previous_severity"] == "ok"
        and (before is None or d["time"] <= before)
    )


def score(name: str, outcome: Outcome, metric: str) -> dict[str, Any]:
    docs = outcome.events[metric]
    killed = kills(docs)
    if name in AT_RISK:
        false = episodes(docs, outcome.calm_until) if outcome.calm_until else 0
    else:
        false = episodes(docs)
    leads = [k["warned_seconds_before"] for k in killed if k["warned_seconds_before"] is not None]
    return {
        "false_warnings": false,
        "kills": len(killed),
        "missed_warnings": sum(1 for k in killed if k["warned_seconds_before"] is None),
        "lead_seconds": [round(x, 2) for x in leads],
        "thrash_events": sum(1 for d in docs if d["event_type"] == "memory_thrash"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    a = ap.parse_args()
    base, why = own_memory_cgroup()
    if base is None:
        print(json.dumps({"error": f"no writable memory cgroup: {why}"}))
        sys.exit(1)
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")

    made: list[Child] = []

    def make(limit: int | None) -> Child:
        child = Child(f"pressured-bench-risk-{os.getpid()}-{len(made)}", limit)
        made.append(child)
        return child

    per_scenario: dict[str, Any] = {}
    totals = {m: {"false_warnings": 0, "missed_warnings": 0, "kills": 0} for m in METRICS}
    with tempfile.TemporaryDirectory(prefix="pressured-oom-risk-", dir="/var/tmp") as tmp:
        for name in names:
            runs = []
            for i in range(a.repeat):
                run_dir = Path(tmp) / f"{name}-{i}"
                run_dir.mkdir()
                try:
                    outcome = SCENARIOS[name](make, run_dir, str(run_dir), METRICS)
                except NotHere as exc:
                    runs.append({"skipped": str(exc)})
                    continue
                finally:
                    while made:
                        made.pop().remove()
                scored = {m: score(name, outcome, m) for m in METRICS}
                for m, s in scored.items():
                    for key in totals[m]:
                        totals[m][key] += s[key]
                runs.append({"notes": outcome.notes, **scored})
            per_scenario[name] = runs if a.repeat > 1 else runs[0]

    for m in METRICS:
        leads = [
            x
            for runs in per_scenario.values()
            for run in (runs if isinstance(runs, list) else [runs])
            for x in run.get(m, {}).get("lead_seconds", [])
        ]
        totals[m]["median_lead_seconds"] = round(statistics.median(leads), 2) if leads else None
    print(
        json.dumps(
            {
                "bench": "oom_risk",
                "host": {
                    "kernel": platform.release(),
                    "cgroup": "v2"
                    if os.path.exists("/sys/fs/cgroup/cgroup.controllers")
                    else "v1 (hybrid)",
                },
                "thresholds": {"warn_percent": 70, "critical_percent": 85},
                "totals": totals,
                "scenarios": per_scenario,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
