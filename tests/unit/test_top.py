"""`pressured top`'s screen from a daemon state (the live view in a terminal is
tests/kernel/test_top.py): the figure shown against the limit is the one that decides."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from pressured.top import View, render

MiB = 1 << 20


def screen(targets: list[dict[str, Any]]) -> str:
    state = {"generation": 1, "node": None, "targets": targets, "events": [], "self": {}}
    console = Console(width=160, record=True, color_system=None)
    console.print(render(state, View(), None))
    return console.export_text()


def row(key: str, decided_by: str | None, percent: float) -> dict[str, Any]:
    return {
        "key": key,
        "cgroup": key,
        "usage_bytes": 120 * MiB,
        "working_set_bytes": 100 * MiB,
        "unreclaimable_bytes": 30 * MiB if decided_by == "unreclaimable" else None,
        "decided_by": decided_by,
        "limit_bytes": 128 * MiB,
        "percent": percent,
        "headroom_bytes": 10 * MiB,
        "severity": "ok",
    }


def test_the_figure_against_the_limit_is_the_deciding_one() -> None:
    # 100 MiB of working set, most of it page cache: 30 MiB decides, and the bar says 23 %
    text = screen([row("/job", "unreclaimable", 23.44)])
    assert "deciding / limit" in text
    (line,) = [x for x in text.splitlines() if "/job" in x]
    assert "30.0Mi unrecl / 128.0Mi" in line and "100.0Mi" not in line
    assert "23.4" in line


def test_where_no_unreclaimable_figure_is_known_the_working_set_is_shown_as_such() -> None:
    text = screen([row("/pod", "working_set", 78.12), row("/old-daemon", None, 78.12)])
    for name in ("/pod", "/old-daemon"):
        (line,) = [x for x in text.splitlines() if name in x]
        assert "100.0Mi ws / 128.0Mi" in line


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").strip("│").split("│")]


def test_growth_eta_and_psi_are_shown_and_a_missing_one_is_a_dash() -> None:
    leaking = {
        **row("/leak", "unreclaimable", 90.0),
        "growth_bytes_per_s": 4 * MiB,
        "eta_seconds": 2.6,
        "psi_some_avg10": 12.5,
        "psi_full_avg10": 3.25,
        "severity": "critical",
    }
    text = screen([leaking, row("/calm", "unreclaimable", 10.0)])
    header = next(x for x in text.splitlines() if "deciding / limit" in x)
    assert cells(header)[3:] == ["%", "growth/s", "ETA", "PSI some/full", "sev"]
    (line,) = [x for x in text.splitlines() if "/leak" in x]
    assert cells(line)[3:] == ["90.0", "4.0Mi", "3s", "12.50/3.25", "critical"]
    (calm,) = [x for x in text.splitlines() if "/calm" in x]
    assert cells(calm)[3:] == ["10.0", "-", "-", "-", "ok"]
