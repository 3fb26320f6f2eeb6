"""End to end on this host: `pressured run` watches two limited cgroups, each with a real
leaking JVM running as nobody. The first refuses attach (-XX:+DisableAttachMechanism): its
heap capture fails with a clear reason in the log and the daemon goes on; the second's warn
is captured, its class histogram stored with the leaking class on top."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pressured.demo.child import Child, own_memory_cgroup
from tests.runtimes.conftest import LEAK_CLASS, NOBODY
from tests.support.daemon import running

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def test_jvm_capture_failure_is_logged_and_the_next_one_succeeds(
    jvm_classes: Path, tmp_path: Path
) -> None:
    base, why = own_memory_cgroup()
    if base is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv (util-linux) to run the JVM as nobody")
    stamp = time.monotonic_ns()
    stubborn = Child(f"pressured-e2e-jvm-noattach-{stamp}", 256 * MiB)
    good = Child(f"pressured-e2e-jvm-{stamp}", 256 * MiB)
    storage, cfg = tmp_path / "store", tmp_path / "cfg.yaml"
    cfg.write_text(
        "thresholds: {warn_percent: 30, critical_percent: 95, metric: usage}\n"
        "actions:\n"
        "  - {type: heapdump, severities: [warn], timeout_ms: 2000, full_dump: never}\n"
        f"storage: {{type: local, path: {storage}}}\n"
        "metrics: {enabled: false}\n"
    )
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    java = ["java", "-Xmx200m", "-XX:+UseSerialGC", "-cp", str(jvm_classes)]
    try:
        with running(
            ["run", "-c", str(cfg), "--cgroup", stubborn.path, "--cgroup", good.path]
        ) as daemon:
            first = stubborn.spawn(
                [*as_nobody, *java, "-XX:+DisableAttachMechanism", "LeakyJvm", "500000"],
                cwd=jvm_classes,
            )
            failed = daemon.wait_for_log(
                r"action heapdump failed for (\S+): heapdump: .*: jvm pid (\d+): (.*)", 60
            )
            assert failed[1] == stubborn.path and int(failed[2]) == first.pid
            assert "DisableAttachMechanism" in failed[3] and "within 2 s" in failed[3]
            assert daemon.alive()

            second = good.spawn([*as_nobody, *java, "LeakyJvm", "500000"], cwd=jvm_classes)
            stored = daemon.wait_for_log(
                rf"heapdump: .*: jvm pid {second.pid}: stored (\S+) \(\d+ bytes\); top: (.*)", 60
            )
            assert daemon.stop() == 0, daemon.stderr.text()
    finally:
        stubborn.remove()
        good.remove()
    key, top = stored[1], stored[2]
    assert top.startswith(LEAK_CLASS), top
    assert key.startswith(f"heaps/local/{Path(good.path).name}/") and key.endswith(".histo.txt")
    beside = json.loads((storage / key.replace(".histo.txt", ".json")).read_text())
    assert beside["severity"] == "warn"
    assert beside["heap_top"][0] == {"name": LEAK_CLASS, "bytes": 500000 * 144, "instances": 500000}
    assert beside["full_dump_skipped"] == "full_dump is never"
