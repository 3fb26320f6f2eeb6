"""The exec action running real commands: the event on stdin and in PRESSURED_* variables,
timeouts that reach the whole process group, and what a failed command reports."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.exec import ExecAction, event_env
from pressured.errors import ActionError, ConfigError
from tests.support.wait import wait_for
from tests.unit.actions.conftest import CGROUP, oom_kill, pressure

REPORT = textwrap.dedent(
    """
    import json, os, sys
    doc = json.load(sys.stdin)
    env = {k: v for k, v in os.environ.items() if k.startswith("PRESSURED_") or k == "TEAM"}
    with open(sys.argv[1], "w") as f:
        json.dump({"stdin": doc, "env": env}, f)
    """
)


def test_exec_gets_the_event_on_stdin_and_in_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    action = ExecAction(
        {"command": [sys.executable, "-c", REPORT, str(out)], "env": {"TEAM": "shop"}},
        ActionContext(),
        "actions[0]",
    )
    event = pressure("critical", pids=[7, 8])
    action.run(event)
    got = json.loads(out.read_text())
    assert got["stdin"] == json.loads(json.dumps(event.to_json()))
    env = got["env"]
    assert env["TEAM"] == "shop"
    assert env["PRESSURED_SEVERITY"] == "critical"
    assert env["PRESSURED_EVENT_TYPE"] == "memory_pressure"
    assert env["PRESSURED_CGROUP"] == CGROUP
    assert env["PRESSURED_POD_NAME"] == "web-0"
    assert env["PRESSURED_USAGE_BYTES"] == str(900 << 20)
    assert env["PRESSURED_DRY_RUN"] == "false"
    assert env["PRESSURED_PSI_SOME_AVG10"] == "1.5"
    assert "PRESSURED_PSI_FULL_AVG10" not in env  # None is left out, not "None"
    assert "PRESSURED_PIDS" not in env  # lists stay in the JSON


def test_exec_command_as_a_string_and_oom_kill_events(tmp_path: Path) -> None:
    out = tmp_path / "kill.txt"
    script = 'import os, sys; open(sys.argv[1], "w").write(os.environ["PRESSURED_PID"])'
    command = f"{sys.executable} -c '{script}' {out}"
    action = ExecAction({"command": command}, ActionContext(), "actions[0]")
    action.run(oom_kill())
    assert out.read_text() == "4242"


def test_event_env_of_an_oom_kill() -> None:
    env = event_env(oom_kill().to_json())
    assert env["PRESSURED_EVENT_TYPE"] == "oom_killed"
    assert env["PRESSURED_COMM"] == "python3"
    assert env["PRESSURED_WARNED_SECONDS_BEFORE"] == "12.5"


def test_exec_severities_filter(tmp_path: Path) -> None:
    out = tmp_path / "ran"
    action = ExecAction(
        {"command": ["touch", str(out)], "severities": ["critical"]}, ActionContext(), "a"
    )
    action.run(pressure("warn"))
    assert not out.exists()
    action.run(pressure("critical"))
    assert out.exists()


def test_exec_timeout_kills_the_whole_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    # the shell starts a grandchild and waits: the timeout must reach both
    command = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    action = ExecAction({"command": command, "timeout_ms": 300}, ActionContext(), "actions[0]")
    with pytest.raises(ActionError, match=r"^exec sh: killed after timeout 0\.3s$"):
        action.run(pressure())
    sleeper = int(pidfile.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{sleeper}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] == "Z"  # killed, not yet reaped
        except FileNotFoundError:
            return True

    wait_for(gone, what=f"the grandchild {sleeper} to be killed")


def test_exec_non_zero_exit_reports_the_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('first line\\nthe real reason\\n'); sys.exit(3)"
    action = ExecAction({"command": [sys.executable, "-c", script]}, ActionContext(), "a")
    with pytest.raises(ActionError) as info:
        action.run(pressure())
    assert str(info.value) == f"exec {sys.executable}: exit status 3: the real reason"


def test_exec_killed_by_a_signal() -> None:
    script = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    action = ExecAction({"command": [sys.executable, "-c", script]}, ActionContext(), "a")
    with pytest.raises(ActionError, match=r": killed by SIGTERM: \(no stderr\)$"):
        action.run(pressure())


def test_exec_missing_program() -> None:
    action = ExecAction({"command": "/nonexistent/hook --now"}, ActionContext(), "a")
    with pytest.raises(ActionError, match=r"^exec /nonexistent/hook: cannot run: No such file"):
        action.run(pressure())


def test_exec_dry_run_runs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "ran"
    action = ExecAction({"command": ["touch", str(out)]}, ActionContext(dry_run=True), "a")
    with caplog.at_level(logging.INFO, logger="pressured.actions.exec"):
        action.run(pressure("warn"))
    assert not out.exists()
    assert f"dry-run: would run ['touch', '{out}'] for warn {CGROUP}" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"^actions\[2\]\.command: required for type 'exec'$"),
        ({"command": ""}, r"^actions\[2\]\.command: must not be empty, got ''$"),
        ({"command": []}, r"^actions\[2\]\.command: must not be empty, got \[\]$"),
        ({"command": "echo 'oops"}, r"^actions\[2\]\.command: cannot split \"echo 'oops\""),
        ({"command": ["ls", {"a": 1}]}, r"^actions\[2\]\.command: expected a list of words"),
        ({"command": 5}, r"^actions\[2\]\.command: expected str or list, got 5$"),
        (
            {"command": "true", "timeout_ms": 0},
            r"^actions\[2\]\.timeout_ms: must be positive, got 0",
        ),
        (
            {"command": "true", "timeout_ms": "5s"},
            r"^actions\[2\]\.timeout_ms: expected int, got '5s'",
        ),
        (
            {"command": "true", "timeout_ms": True},
            r"^actions\[2\]\.timeout_ms: expected int, got True",
        ),
        (
            {"command": "true", "severities": ["warning"]},
            r"^actions\[2\]\.severities\[0\]: must be one of .* "
            r"got 'warning' \(did you mean 'warn'\?\)",
        ),
        (
            {"command": "true", "comand": "x"},
            r"^actions\[2\]\.comand: unknown option for type 'exec' \(did you mean 'command'\?\)",
        ),
    ],
)
def test_exec_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExecAction(options, ActionContext(), "actions[2]")
