"""Text as `go tool pprof -top` prints it: units, percentages, the report (pprof
internal/measurement and report.printText).

    print(format_top(result))                         # the layout of `go tool pprof -top`
    summary_text(summarize_top(result))               # one line for logs and Kubernetes Events
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from typing import Any

from pressured.pprof.top import TopResult, percent_of

_Unit = tuple[str, tuple[str, ...], float]
_UNIT_TYPES: tuple[tuple[tuple[_Unit, ...], tuple[str, float]], ...] = (
    (
        (
            ("B", ("b", "byte"), 1.0),
            ("kB", ("kb", "kbyte", "kilobyte"), float(1 << 10)),
            ("MB", ("mb", "mbyte", "megabyte"), float(1 << 20)),
            ("GB", ("gb", "gbyte", "gigabyte"), float(1 << 30)),
            ("TB", ("tb", "tbyte", "terabyte"), float(1 << 40)),
            ("PB", ("pb", "pbyte", "petabyte"), float(1 << 50)),
        ),
        ("B", 1.0),
    ),
    (
        (
            ("ns", ("ns", "nanosecond"), 1.0),
            ("us", ("μs", "us", "microsecond"), 1e3),
            ("ms", ("ms", "millisecond"), 1e6),
            ("s", ("s", "sec", "second"), 1e9),
            ("hrs", ("hour", "hr"), 3600e9),
        ),
        ("s", 1e9),
    ),
    (
        (
            ("n*GCU", ("nanogcu",), 1e-9),
            ("u*GCU", ("microgcu",), 1e-6),
            ("m*GCU", ("milligcu",), 1e-3),
            ("GCU", ("gcu",), 1.0),
            ("k*GCU", ("kilogcu",), 1e3),
            ("M*GCU", ("megagcu",), 1e6),
            ("G*GCU", ("gigagcu",), 1e9),
            ("T*GCU", ("teragcu",), 1e12),
            ("P*GCU", ("petagcu",), 1e15),
        ),
        ("GCU", 1.0),
    ),
)


def _sniff(units: tuple[_Unit, ...], unit: str) -> _Unit | None:
    unit = unit.lower()
    if len(unit) > 2:
        unit = unit.removesuffix("s")
    for u in units:
        if unit in u[1]:
            return u
    return None


def scale(value: int, from_unit: str, to_unit: str) -> tuple[float, str]:
    """pprof measurement.Scale: ``to_unit`` "minimum"/"auto" picks the largest unit <= value."""
    if value < 0:
        v, u = scale(-value, from_unit, to_unit)
        return -v, u
    for units, (default_name, default_factor) in _UNIT_TYPES:
        src = _sniff(units, from_unit)
        if src is None:
            continue
        base = float(value) * src[2]
        if to_unit in ("minimum", "auto"):
            factor, name = 0.0, ""
            for unit_name, _, unit_factor in units:
                if unit_factor >= factor and base / unit_factor >= 1.0:
                    factor, name = unit_factor, unit_name
            if factor:
                return base / factor, name
            return base / default_factor, default_name
        dst = _sniff(units, to_unit)
        if dst is None:
            return base / default_factor, default_name
        return base / dst[2], dst[0]
    if to_unit in ("count", "sample", "unit", "minimum", "auto"):
        return float(value), ""
    return float(value), to_unit


def format_value(value: int, unit: str, to_unit: str = "auto") -> str:
    """pprof measurement.ScaledLabel, e.g. format_value(17301504, "bytes") == "16.50MB"."""
    v, u = scale(value, unit, to_unit)
    text = f"{v:.2f}".removesuffix(".00")
    if text in ("0", "-0"):
        return "0"
    return text + u


def format_percent(value: int, total: int) -> str:
    """pprof measurement.Percentage: width 6, two digits at least."""
    ratio = percent_of(value, total)
    if 99.95 <= ratio <= 100.05:
        return "  100%"
    if ratio >= 1.0:
        return f"{ratio:5.2f}%"
    return f"{ratio:5.2g}%"


def _output_unit(result: TopResult) -> str:
    # report.selectOutputUnit: the unit of the smallest shown value, unless that is 100 times
    # smaller than the total; then one that shows it down to 0.01.
    min_value = 0
    for r in result.rows:
        v = abs(r.flat) or abs(r.cum)
        if v and (min_value == 0 or v < min_value):
            min_value = v
    max_value = result.total
    if min_value == 0:
        min_value = max_value
    _, min_unit = scale(min_value, result.unit, "minimum")
    _, max_unit = scale(max_value, result.unit, "minimum")
    unit = min_unit
    if min_unit != max_unit and min_value * 100 < max_value:
        _, unit = scale(100 * min_value, result.unit, "minimum")
    return unit or result.unit


def format_top(result: TopResult) -> str:
    """The report of ``go tool pprof -top``: header lines, then one row per function."""
    p = result.profile
    out_unit = _output_unit(result) if result.rows else result.unit

    def fmt(v: int) -> str:
        return format_value(v, result.unit, out_unit)

    lines: list[str] = []
    if p.main_file:
        lines.append("File: " + os.path.basename(p.main_file))
    if p.build_id:
        lines.append("Build ID: " + p.build_id)
    lines.extend(c for c in p.comments if not c.startswith("#"))
    lines.append("Type: " + result.sample_type)
    if p.time_nanos:
        # current pprof's layout "2006-01-02 15:04:05 MST" in local time (older releases
        # printed "Jan 2, 2006 at 3:04pm (MST)")
        t = _dt.datetime.fromtimestamp(p.time_nanos / 1e9).astimezone()
        lines.append(f"Time: {t:%Y-%m-%d %H:%M:%S} {t.tzname() or 'UTC'}")
    if p.duration_nanos:
        total_ns, total_unit = scale(result.total, result.unit, "nanoseconds")
        ratio = ""
        if total_unit == "ns" and total_ns:
            ratio = "(" + format_percent(int(total_ns), p.duration_nanos) + ")"
        lines.append(
            f"Duration: {format_value(p.duration_nanos, 'nanoseconds')}, "
            f"Total samples = {fmt(result.total)} {ratio}"
        )
    flat_sum = sum(r.flat for r in result.rows)
    lines.append(
        f"Showing nodes accounting for {fmt(flat_sum)}, "
        f"{format_percent(flat_sum, result.total).strip()} of {fmt(result.total)} total"
    )
    if result.total:
        if result.dropped_nodes:
            plural = "s" if result.dropped_nodes > 1 else ""
            cutoff = abs(int(result.total * result.node_fraction))
            lines.append(f"Dropped {result.dropped_nodes} node{plural} (cum <= {fmt(cutoff)})")
        if 0 < len(result.rows) < result.nodes:
            lines.append(f"Showing top {len(result.rows)} nodes out of {result.nodes}")
    lines.append(f"{'flat':>10} {'flat':>5}% {'sum':>5}% {'cum':>10} {'cum':>5}%")
    flat_sum = 0
    for r in result.rows:
        flat_sum += r.flat
        inline = f" ({r.inline})" if r.inline else ""
        lines.append(
            f"{fmt(r.flat):>10} {format_percent(r.flat, result.total)} "
            f"{format_percent(flat_sum, result.total)} {fmt(r.cum):>10} "
            f"{format_percent(r.cum, result.total)}  {r.function}{inline}"
        )
    return "\n".join(lines) + "\n"


def summary_text(summary: Sequence[dict[str, Any]]) -> str:
    """One line for logs and Kubernetes Event messages, e.g.
    "main.(*leakyCache).grow 16.50MB (98.24%), main.churnBuffers 64.09kB (0.37%)"."""
    return ", ".join(
        f"{e['function']} {format_value(int(e['flat']), str(e['unit']))} ({e['flat_pct']:.2f}%)"
        for e in summary
    )
