"""`pressured diagnose`: one look at every watched cgroup, sorted by headroom.

Each row shows the OOM-risk figure (unreclaimable) and the working set side by side, with the
percent, headroom and ETA by the configured metric (``decided_by``: the one they rest on), the
cgroup's top processes by oom_score and by RSS (the machine row's: of every process), and the
kills the daemon confirmed in it since boot (the state directory's kill journal; a container's
kills are matched by pod and container, so a restarted container's earlier kills show too).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final

from pressured.config import Config
from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import cgroupfs, procfs, sampler
from pressured.kills.journal import read_kills
from pressured.model import MACHINE, METRIC_SHORT, Sample
from pressured.sources.factory import make_source

MAX_CGROUP_PIDS: Final = 256
"""Processes of one cgroup read for its top lists; the machine row reads every process (the
kernel's OOM killer chooses among all of them)."""


def _reading(key: str, ref: cgroupfs.CgroupRef | None, proc: str) -> tuple[Sample, list[int]]:
    """The target's sample and the pids whose processes its row ranks."""
    # the memory numbers make the row; a missing extra only leaves its column empty
    sample = sampler.read_sample(
        key, ref, now=time.monotonic(), proc=proc, psi=("memory",), strict_psi=False
    )
    pids: list[int] = []
    if ref is not None:
        with contextlib.suppress(CgroupFileError):
            pids = cgroupfs.read_pids(ref)[:MAX_CGROUP_PIDS]
    elif key == MACHINE:
        with contextlib.suppress(OSError):
            pids = procfs.pids(proc)
    return sample, pids


def diagnose(cfg: Config, *, interval: float = 1.0, top: int = 3) -> list[dict[str, Any]]:
    proc = str(cfg.get("source.proc_root"))
    source = make_source(cfg)
    source.start()
    try:
        specs = source.targets()
    finally:
        source.close()
    refs: list[tuple[str, cgroupfs.CgroupRef | None, Any]] = [
        (s.key, s.ref, s.identity) for s in specs
    ]
    if cfg.mode == "local" and not cfg.get("source.cgroup.paths") and cfg.get("source.machine"):
        refs.insert(0, (MACHINE, None, None))
    first: dict[str, Sample] = {}
    for key, ref, _ in refs:
        with contextlib.suppress(CgroupError):
            first[key] = _reading(key, ref, proc)[0]
    if interval > 0:
        time.sleep(interval)
    metric = cfg.get("thresholds.metric")
    state_dir = cfg.get("state_dir")
    journal = read_kills(str(state_dir)) if state_dir else []
    rows = []
    for key, ref, ident in refs:
        if key not in first:
            continue
        try:
            r, pids = _reading(key, ref, proc)
        except CgroupError:
            continue
        r0 = first[key]
        decided = r.decided_by(metric)
        value, value0 = r.metric_bytes(metric), r0.metric_bytes(metric)
        growth = (value - value0) / (r.time - r0.time) if r.time > r0.time else 0.0
        limit = r.limit_bytes
        pct = 100.0 * value / limit if limit else None
        eta = (limit - value) / growth if limit and growth > 0 else None
        procs = procfs.processes_memory(pids, proc)
        by_score = sorted(procs, key=lambda p: -p.oom_score)[:top]
        by_rss = sorted(procs, key=lambda p: -(p.rss_bytes or 0))[:top]
        terms: dict[str, int] | None = None
        if ref is not None:
            with contextlib.suppress(CgroupError):
                terms = cgroupfs.read_memory(ref).oom_risk.as_dict()
        psi = r.memory_psi
        rows.append(
            {
                "cgroup": key,
                "namespace": getattr(ident, "namespace", None),
                "pod": getattr(ident, "pod_name", None),
                "container": getattr(ident, "container_name", None),
                "usage_bytes": r.usage_bytes,
                "working_set_bytes": r.working_set_bytes,
                "unreclaimable_bytes": r.unreclaimable_bytes,
                "unreclaimable": terms,
                "limit_bytes": limit,
                "decided_by": decided,
                "percent": None if pct is None else round(pct, 2),
                "working_set_percent": _percent(r.working_set_bytes, limit),
                "unreclaimable_percent": _percent(r.unreclaimable_bytes, limit),
                "headroom_bytes": None if not limit else limit - value,
                "growth_bytes_per_s": round(growth, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
                "psi_some_avg10": psi.some_avg10 if psi else None,
                "psi_full_avg10": psi.full_avg10 if psi else None,
                "oom_kill": r.oom_kill_count,
                "top_processes": [p.as_dict() for p in by_score],
                "top_by_rss": [p.as_dict() for p in by_rss],
                "kills_since_boot": _kills_of(journal, key, ident),
            }
        )
    rows.sort(key=lambda x: (x["headroom_bytes"] is None, x["headroom_bytes"] or 0))
    return rows


def _percent(value: int | None, limit: int | None) -> float | None:
    return None if value is None or not limit else round(100.0 * value / limit, 2)


def _kills_of(journal: list[dict[str, Any]], key: str, ident: Any) -> list[dict[str, Any]]:
    """The journal's kills of one target: by pod and container where it has them (a restarted
    container gets a new cgroup), else by cgroup path."""
    pod, container = getattr(ident, "pod_name", None), getattr(ident, "container_name", None)
    namespace = getattr(ident, "namespace", None)
    out = []
    for k in journal:
        if pod is not None:
            same = (k.get("namespace"), k.get("pod_name")) == (namespace, pod) and (
                container is None or k.get("container_name") == container
            )
        else:
            same = k.get("cgroup") == key
        if same:
            fields = ("time", "pid", "comm", "warned_seconds_before", "limit_scope")
            out.append({f: k.get(f) for f in fields})
    return out


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1048576:.1f}Mi"


def _procs(by_score: list[dict[str, Any]], by_rss: list[dict[str, Any]]) -> str:
    """The top processes by oom_score, then those by RSS that are not among them."""
    shown = [*by_score, *(p for p in by_rss if p not in by_score)]
    return (
        ", ".join(f"{p['comm']}[{p['pid']}] {p['oom_score']} {_mib(p['rss_bytes'])}" for p in shown)
        or "-"
    )


def render(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(
        title="pressured diagnose (sorted by headroom)",
        caption="unreclaimable: what the kernel cannot reclaim short of a kill (the OOM risk); "
        "% of the limit, headroom and ETA by the metric named after the %; kills: the "
        "cgroup's oom_kill counter / kills the daemon confirmed since boot",
    )
    for col in (
        "cgroup",
        "usage",
        "working set",
        "unreclaimable",
        "limit",
        "%",
        "growth/s",
        "ETA",
        "PSI some/full",
        "kills",
        "top: oom_score, RSS",
    ):
        table.add_column(col, overflow="fold")
    kills: list[tuple[str, dict[str, Any]]] = []
    for r in rows:
        name = r["cgroup"]
        if r["pod"]:
            name = f"{r['namespace']}/{r['pod']}/{r['container']}"
        pct = "-" if r["percent"] is None else f"{r['percent']:.1f} {METRIC_SHORT[r['decided_by']]}"
        style = (
            "red" if (r["percent"] or 0) >= 85 else "yellow" if (r["percent"] or 0) >= 70 else None
        )
        psi = (
            "-"
            if r["psi_some_avg10"] is None
            else f"{r['psi_some_avg10']:.2f}/{r['psi_full_avg10']:.2f}"
        )
        kills.extend((name, k) for k in r["kills_since_boot"])
        table.add_row(
            name,
            _mib(r["usage_bytes"]),
            _mib(r["working_set_bytes"]),
            _mib(r["unreclaimable_bytes"]),
            _mib(r["limit_bytes"]),
            pct,
            _mib(int(r["growth_bytes_per_s"])),
            "-" if r["eta_seconds"] is None else f"{r['eta_seconds']:.0f}s",
            psi,
            f"{'-' if r['oom_kill'] is None else r['oom_kill']} / {len(r['kills_since_boot'])}",
            _procs(r["top_processes"], r["top_by_rss"]),
            style=style,
        )
    console = Console()
    console.print(table)
    if kills:
        seen = Table(title="kills since boot (state directory)")
        for col in ("time", "target", "victim", "limit", "warned before"):
            seen.add_column(col, overflow="fold")
        for name, k in sorted(kills, key=lambda x: str(x[1]["time"])):
            lead = k["warned_seconds_before"]
            seen.add_row(
                str(k["time"]),
                name,
                f"{k['comm'] or '?'}[{k['pid'] or '?'}]",
                k.get("limit_scope") or "-",
                "not warned" if lead is None else f"{lead:.1f}s",
                style="red" if lead is None else None,
            )
        console.print(seen)
