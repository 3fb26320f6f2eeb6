"""The log action against real files and stdout: one JSON line per event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.log import LogAction
from pressured.errors import ConfigError
from tests.unit.actions.conftest import CGROUP, oom_kill, pressure


def test_log_writes_one_json_line_per_event_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    action = LogAction({"path": str(out)}, ActionContext(), "actions[0]")
    assert not out.exists()  # checked at start, created by the first event
    action.run(pressure("warn"))
    action.run(oom_kill())
    action.close()
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    warn, kill = (json.loads(x) for x in lines)
    assert warn["event_type"] == "memory_pressure"
    assert warn["severity"] == "warn"
    assert warn["time"] == "2025-11-21T05:22:14.250Z"
    assert warn["pod_name"] == "web-0"
    assert warn["usage_percent"] == 78.12
    assert warn["psi"] == {"some_avg10": 1.5, "full_avg10": None}
    assert kill["event_type"] == "oom_killed"
    assert kill["sources"] == ["counters", "kmsg"]


def test_log_appends_to_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    out.write_text('{"earlier": true}\n')
    action = LogAction({}, ActionContext(extra={"events_out": str(out)}), "actions[0]")
    action.run(pressure("critical"))
    action.close()
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True}
    assert json.loads(lines[1])["severity"] == "critical"


def test_log_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    action = LogAction({}, ActionContext(), "actions[0]")
    action.run(pressure("recovered"))
    action.close()
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert doc["severity"] == "recovered"
    assert doc["cgroup"] == CGROUP


def test_log_dry_run_still_records_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    action = LogAction({"path": "-"}, ActionContext(dry_run=True), "actions[0]")
    action.run(pressure("warn", dry_run=True))
    assert json.loads(capsys.readouterr().out)["dry_run"] is True


def test_log_events_out_from_the_config(tmp_path: Path) -> None:
    out = tmp_path / "from-config.jsonl"
    action = LogAction({}, ActionContext(config={"events_out": str(out)}), "actions[0]")
    action.run(pressure())
    action.close()
    assert json.loads(out.read_text())["severity"] == "warn"


def test_log_config_errors(tmp_path: Path) -> None:
    ctx = ActionContext()
    with pytest.raises(ConfigError, match=r"^actions\[0\]\.pth: unknown option .*'path'"):
        LogAction({"pth": "x"}, ctx, "actions[0]")
    with pytest.raises(ConfigError, match=r"^actions\[0\]\.path: expected str, got 5$"):
        LogAction({"path": 5}, ctx, "actions[0]")
    missing = tmp_path / "no" / "such" / "dir" / "events.jsonl"
    with pytest.raises(ConfigError, match=r"^actions\[0\]\.path: .*does not exist"):
        LogAction({"path": str(missing)}, ctx, "actions[0]")
    with pytest.raises(ConfigError, match=r"^events_out: .* is a directory"):
        LogAction({}, ActionContext(extra={"events_out": str(tmp_path)}), "actions[0]")
