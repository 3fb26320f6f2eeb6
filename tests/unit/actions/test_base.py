"""The action contract of pressured/actions/base.py as the daemon runs it: an action that
fails is reported to ActionRunner's on_failure (the daemon counts it) and the actions after
it in the chain still run. The failure is the kernel refusing a kill: os.kill is stubbed to
raise EPERM for a pid that exists only in a fake /proc tree.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.log import LogAction
from pressured.actions.signal import SignalAction
from tests.unit.actions.conftest import fake_proc, held, pressure


def test_a_failed_action_is_counted_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pressured.actions.runner import ActionRunner

    proc = tmp_path / "proc"
    fake_proc(proc, 31, "31")
    (proc / "31" / "cgroup").write_text("0::/kubepods/pod-a/app\n")

    def kill_stub(pid: int, sig: int) -> None:
        """Stub at the edge: the kernel refusing the kill."""
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill_stub)
    out = tmp_path / "events.jsonl"
    ctx = ActionContext(proc_root=str(proc))
    failures: list[str] = []
    runner = ActionRunner(
        [SignalAction({}, ctx, "actions[0]"), LogAction({"path": str(out)}, ctx, "actions[1]")],
        still_holds=lambda _e: True,
        on_failure=failures.append,
    )
    try:
        runner.run_chain(held(pressure("warn", pids=[31]), str(proc)))
    finally:
        runner.close()
    assert failures == ["signal"]
    assert json.loads(out.read_text())["severity"] == "warn"
