"""`pressured diagnose`: one look at every watched cgroup, sorted by headroom."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from pressured.config import Config
from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import cgroupfs, procfs, sampler
from pressured.model import MACHINE, Sample
from pressured.sources.factory import make_source


def _reading(key: str, ref: cgroupfs.CgroupRef | None, proc: str) -> tuple[Sample, list[int]]:
    # the memory numbers make the row; a missing extra only leaves its column empty
    sample = sampler.read_sample(
        key, ref, now=time.monotonic(), proc=proc, psi=("memory",), strict_psi=False
    )
    pids: list[int] = []
    if ref is not None:
        with contextlib.suppress(CgroupFileError):
            pids = cgroupfs.read_pids(ref)
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
    rows = []
    for key, ref, ident in refs:
        if key not in first:
            continue
        try:
            r, pids = _reading(key, ref, proc)
        except CgroupError:
            continue
        r0 = first[key]
        value, value0 = r.metric_bytes(metric), r0.metric_bytes(metric)
        growth = (value - value0) / (r.time - r0.time) if r.time > r0.time else 0.0
        limit = r.limit_bytes
        pct = 100.0 * value / limit if limit else None
        eta = (limit - value) / growth if limit and growth > 0 else None
        procs: list[dict[str, Any]] = []
        for pid in pids[:256]:
            s = procfs.read_oom_score(pid, proc)
            if s is not None:
                procs.append(
                    {
                        "pid": pid,
                        "comm": procfs.process_name(pid, proc),
                        "oom_score": s[0],
                        "oom_score_adj": s[1],
                    }
                )
        procs.sort(key=lambda p: -p["oom_score"])
        psi = r.memory_psi
        rows.append(
            {
                "cgroup": key,
                "namespace": getattr(ident, "namespace", None),
                "pod": getattr(ident, "pod_name", None),
                "container": getattr(ident, "container_name", None),
                "usage_bytes": r.usage_bytes,
                "working_set_bytes": r.working_set_bytes,
                "limit_bytes": limit,
                "percent": None if pct is None else round(pct, 2),
                "headroom_bytes": None if not limit else limit - value,
                "growth_bytes_per_s": round(growth, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
                "psi_some_avg10": psi.some_avg10 if psi else None,
                "psi_full_avg10": psi.full_avg10 if psi else None,
                "oom_kill": r.oom_kill_count,
                "top_processes": procs[:top],
            }
        )
    rows.sort(key=lambda x: (x["headroom_bytes"] is None, x["headroom_bytes"] or 0))
    return rows


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1048576:.1f}Mi"


def render(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="pressured diagnose (sorted by headroom)")
    for col in (
        "cgroup",
        "usage",
        "working set",
        "limit",
        "%",
        "growth/s",
        "ETA",
        "PSI some/full",
        "oom_kill",
        "top by oom_score",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        name = r["cgroup"]
        if r["pod"]:
            name = f"{r['namespace']}/{r['pod']}/{r['container']}"
        pct = "-" if r["percent"] is None else f"{r['percent']:.1f}"
        style = (
            "red" if (r["percent"] or 0) >= 85 else "yellow" if (r["percent"] or 0) >= 70 else None
        )
        psi = (
            "-"
            if r["psi_some_avg10"] is None
            else f"{r['psi_some_avg10']:.2f}/{r['psi_full_avg10']:.2f}"
        )
        procs = (
            ", ".join(f"{p['comm']}[{p['pid']}]={p['oom_score']}" for p in r["top_processes"])
            or "-"
        )
        table.add_row(
            name,
            _mib(r["usage_bytes"]),
            _mib(r["working_set_bytes"]),
            _mib(r["limit_bytes"]),
            pct,
            _mib(int(r["growth_bytes_per_s"])),
            "-" if r["eta_seconds"] is None else f"{r['eta_seconds']:.0f}s",
            psi,
            "-" if r["oom_kill"] is None else str(r["oom_kill"]),
            procs,
            style=style,
        )
    Console().print(table)
