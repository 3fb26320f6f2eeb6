"""Runtime detection and the heapdump options that choose a runtime, on real processes."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.heapdump import HeapdumpAction
from pressured.errors import ConfigError
from pressured.model import Identity
from pressured.runtimes.detect import detect
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import pod_event


def test_detects_jvm_node_go_and_nothing(
    start_jvm: Callable[..., subprocess.Popen[str]],
    start_node: Callable[..., subprocess.Popen[str]],
    leaky_bin: Path,
) -> None:
    java = start_jvm(10)
    node = start_node()
    go = subprocess.Popen([str(leaky_bin), "-port", "0", "-cap", "1"], stdout=subprocess.DEVNULL)
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert detect(java.pid) == "jvm"
        assert detect(node.pid) == "node"
        assert detect(go.pid) == "go"
        assert detect(python.pid) is None
        assert detect(2**22 + 1) is None  # no such process
    finally:
        for proc in (go, python):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"runtime": "jvmm"},
            r"actions\[0\]\.runtime: must be one of auto, go, jvm, node "
            r"\(got 'jvmm'\) \(did you mean 'jvm'\?\)",
        ),
        ({"full_dump": "yes"}, r"actions\[0\]\.full_dump: must be one of never, auto, always"),
        ({"sample_seconds": 0}, r"actions\[0\]\.sample_seconds: must be in \(0, 60\]"),
        ({"inspector_port": 70000}, r"actions\[0\]\.inspector_port: must be a TCP port"),
    ],
)
def test_bad_runtime_options_name_the_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HeapdumpAction(options, ActionContext(), "actions[0]")


def test_dry_run_names_the_runtime_and_touches_nothing(
    start_jvm: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    java = start_jvm(10)
    storage = LocalStorage(tmp_path / "store")
    ctx = ActionContext(dry_run=True, storage_factory=lambda: storage)
    action = HeapdumpAction({}, ctx, "actions[0]")
    event = pod_event(Identity(namespace="shop", pod_name="web-1"), extra={"pids": [java.pid]})
    with caplog.at_level(logging.INFO, logger="pressured.actions.heapdump"):
        action.run(event)
    assert any(
        f"jvm pid {java.pid} (dry run): would capture" in r.getMessage() for r in caplog.records
    )
    assert list(storage.list()) == []
    assert not Path(f"/proc/{java.pid}/root/tmp/.java_pid{java.pid}").exists()  # never attached
