"""Heap capture signals a held process, never a pid number: a JVM or Node.js process that
exited between detection and the signal is signalled nowhere, even when its pid names another
process by then (fixtures/reused_pid.py, in a pid namespace of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pressured.kernel.pidfd import pidfd_unavailable
from pressured.runtimes import helper, jvm
from pressured.storage.local import LocalStorage
from tests.runtimes.conftest import LEAK_CLASS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "fixtures" / "reused_pid.py"


@pytest.fixture(scope="module")
def reused() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a pid namespace of its own (and to choose its pids)")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux) for a pid namespace")
    if not os.path.exists("/proc/sys/kernel/ns_last_pid"):
        pytest.skip("no /proc/sys/kernel/ns_last_pid (CONFIG_CHECKPOINT_RESTORE): pids not chosen")
    if pidfd_unavailable() is not None:
        pytest.skip(f"no pidfds here ({pidfd_unavailable()}): a signal goes to a pid number")
    # its own /proc (pids of that namespace); /tmp stays the host's, since the checkout and
    # its .venv may live there (an attach socket of a host JVM can only name a host pid, not
    # the namespace's small ones)
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.hostile
def test_jvm_helper_sends_no_sigquit_to_the_process_that_took_the_pid(
    reused: dict[str, Any],
) -> None:
    got = reused["jvm_helper"]
    assert got["reused"] and got["has_pidfd"]  # SIGQUIT to that number would end a `sleep`
    assert got["error"] == (
        f"GC.class_histogram in JVM pid {got['pid']}: pid {got['pid']} is gone; no SIGQUIT sent"
    )
    assert got["survived"]
    assert got["left"] == []  # the attach trigger file removed


@pytest.mark.hostile
def test_node_sends_no_sigusr1_to_the_process_that_took_the_pid(reused: dict[str, Any]) -> None:
    got = reused["node_send"]
    assert got["reused"] and got["has_pidfd"]
    assert got["error"] == f"pid {got['pid']} is gone; no SIGUSR1 sent"
    assert got["survived"]


@pytest.mark.hostile
@pytest.mark.parametrize(("runtime", "sig"), [("jvm", "SIGQUIT"), ("node", "SIGUSR1")])
def test_capture_of_a_process_gone_says_so_and_sends_nothing(
    reused: dict[str, Any], runtime: str, sig: str
) -> None:
    got = reused[f"{runtime}_gone"]
    assert got["error"] == f"pid {got['pid']} is gone; no {sig} sent"


def test_jvm_helper_gets_the_pidfd(
    start_jvm: Callable[..., subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if pidfd_unavailable() is not None:
        pytest.skip(f"no pidfds here ({pidfd_unavailable()})")
    proc = start_jvm(1000)
    calls: list[tuple[list[str], tuple[int, ...]]] = []
    real_run = helper.run

    def run(argv: list[str], **kw: Any) -> int:
        calls.append((list(argv), tuple(kw.get("pass_fds", ()))))
        return real_run(argv, **kw)

    monkeypatch.setattr(helper, "run", run)
    options = jvm.CaptureOptions(timeout_s=10, max_bytes=16 << 20, full_dump="never")
    cap = jvm.capture(jvm.Target(proc.pid), LocalStorage(tmp_path), "h/x", options)
    assert cap.extra["heap_top"][0]["name"] == LEAK_CLASS
    assert calls
    for argv, fds in calls:
        passed = argv[argv.index("--pidfd") + 1]
        assert len(fds) == 1 and passed == str(fds[0])
