"""Watching one real workload with `pressured run` daemons, one per metric: the OOM-risk
kernel tests (host v1, VM v2) and bench/oom_risk.py share it.

``watch`` starts one daemon per metric on the same cgroup (the same workload seen side by
side), starts the workload, waits for its "READY" line, then for ``until``; it returns each
daemon's events and what it last exported. Every daemon serves /metrics on a free loopback
port: ``Watch.seen(metric)`` is its last reading of the cgroup (pressured_memory_bytes), which
is how a test makes sure the daemon saw the condition it asserts about (a page cache that
would have tripped the working set, say) before it stops looking.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pressured.kernel.watch import WatchOptions
from pressured.model import rfc3339
from tests.support.cgroups import Child
from tests.support.daemon import PressuredProcess
from tests.support.events import Event, read_events
from tests.support.psi import PSI_WINDOW_US, measure_stall_per_window
from tests.support.wait import wait_for
from tests.support.workloads import argv, make_file, shmem_dir

METRICS = ("usage", "working_set", "unreclaimable")
SLOW = 4.0 if os.environ.get("VMTEST_GUEST") == "1" else 1.0
"""Waits are this many times longer, and leaks this many times slower, in the VM lane's guest
(software emulation: Python runs about 18 times slower there, VMTEST.md)."""
_SERIES = re.compile(r'^pressured_memory_bytes\{[^}]*kind="(\w+)"[^}]*\} (\S+)$', re.M)


@dataclass
class Watch:
    child: Child
    app: subprocess.Popen[str] | None
    daemons: dict[str, PressuredProcess]
    events_out: dict[str, Path]
    ports: dict[str, int] = field(default_factory=dict)

    def events(self, metric: str) -> list[Event]:
        return read_events(self.events_out[metric])

    def seen(self, metric: str) -> dict[str, float]:
        """The daemon's last exported reading of the cgroup by kind (usage, working_set,
        unreclaimable), {} before its first sample."""
        url = f"http://127.0.0.1:{self.ports[metric]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {kind: float(value) for kind, value in _SERIES.findall(text)}

    def wait_seen(
        self, check: Callable[[dict[str, float]], bool], what: str, timeout: float = 60.0
    ) -> dict[str, float]:
        timeout *= SLOW
        """Until every daemon's last reading satisfies ``check``; returns the last one's."""
        last: dict[str, float] = {}

        def all_saw() -> bool:
            nonlocal last
            for metric in self.daemons:
                last = self.seen(metric)
                if not last or not check(last):
                    return False
            return True

        wait_for(all_saw, timeout, what, poll=0.1)
        return last

    def wait_events(
        self, done: Callable[[list[Event]], bool], what: str, timeout: float = 60.0
    ) -> None:
        """Until every daemon's events satisfy ``done``."""
        timeout *= SLOW
        wait_for(lambda: all(done(self.events(m)) for m in self.daemons), timeout, what, poll=0.1)

    def send(self, line: str) -> None:
        assert self.app is not None and self.app.stdin is not None
        self.app.stdin.write(line + "\n")
        self.app.stdin.flush()


@contextlib.contextmanager
def watch(
    child: Child,
    workload: Sequence[str] | None,
    tmp_path: Path,
    *,
    metrics: Sequence[str] = ("unreclaimable",),
    thresholds: str = "",
    ready_timeout: float = 60.0,
) -> Iterator[Watch]:
    """Daemons (one per metric, default thresholds plus ``thresholds``, a YAML flow mapping's
    inside) watching ``child``, and ``workload`` (None: what already runs there) started in it.
    Everything is stopped at the end: the daemons first (so their last events are written),
    then the workload."""
    daemons: dict[str, PressuredProcess] = {}
    outs: dict[str, Path] = {}
    app: subprocess.Popen[str] | None = None
    try:
        for metric in metrics:
            cfg = tmp_path / f"{metric}.yaml"
            extra = f", {thresholds}" if thresholds else ""
            cfg.write_text(
                f"thresholds: {{metric: {metric}{extra}}}\n"
                "actions: [{type: log}]\n"
                "metrics: {enabled: true, port: 0, address: 127.0.0.1}\n"
            )
            outs[metric] = tmp_path / f"{metric}.jsonl"
            args = [
                "run",
                "-c",
                str(cfg),
                "--cgroup",
                child.path,
                "--events-out",
                str(outs[metric]),
            ]
            daemons[metric] = PressuredProcess(args)
        ports = {}
        for metric, d in daemons.items():
            d.wait_ready(ready_timeout * SLOW)
            ports[metric] = int(d.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        if workload is not None:
            app = start(child, workload)
        w = Watch(child, app, daemons, outs, ports)
        yield w
    except BaseException:
        for d in daemons.values():
            if d.alive():
                d.dump_stacks()
        raise
    finally:
        for d in daemons.values():
            d.__exit__()
        if app is not None:
            with contextlib.suppress(ProcessLookupError):
                app.kill()
            app.wait(10)


def start(child: Child, workload: Sequence[str]) -> subprocess.Popen[str]:
    """``workload`` running in ``child``, once it said READY."""
    app = child.spawn(
        list(workload),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None
    first = app.stdout.readline()
    if first.strip() != "READY":
        app.kill()
        raise AssertionError(f"workload did not start: {first!r} {app.communicate()[1]}")
    return app


def kills(docs: list[Event]) -> list[Event]:
    return [d for d in docs if d["event_type"] == "oom_killed"]


def warnings(docs: list[Event]) -> list[Event]:
    """OOM warnings (warn and critical): thrash events are pressure, not warnings."""
    return [
        d
        for d in docs
        if d["event_type"] == "memory_pressure" and d["severity"] in ("warn", "critical")
    ]


def every_kill_warned_first(docs: list[Event]) -> None:
    """Each oom_killed event came after a warning of its episode (warned_seconds_before)."""
    for kill in kills(docs):
        assert kill["warned_seconds_before"] is not None, ("kill without a warning", docs)
        assert kill["warned_seconds_before"] > 0, kill
        assert any(w["time"] <= kill["time"] for w in warnings(docs)), docs


def memory_stat(child: Child) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"{child.path}/memory.stat") as f:
        for line in f:
            k, v = line.split()
            out[k] = int(v)
    return out


def summary(docs: list[Event]) -> list[dict[str, Any]]:
    """What an assertion message needs of the events."""
    keys = ("event_type", "severity", "rule", "decided_by", "unreclaimable_bytes")
    return [
        {k: d.get(k) for k in (*keys, "working_set_bytes", "warned_seconds_before")} for d in docs
    ]


# ------------------------------------------------------------------------------ scenarios
# One run of each workload, watched by a daemon per metric. They make sure of the condition
# they are about before they stop looking (the daemons saw a page cache that the working set
# would warn on, a stall PSI measured, kernel memory the kernel charged); where a machine cannot
# give it, NotHere says why (tests skip with it, the bench reports it).

MiB = 1024 * 1024
LIMIT = 64 * MiB
LEAK_MIB_PER_S = 8 / SLOW
V1_COLD_S = WatchOptions().v1_cold_interval_s


class NotHere(Exception):
    """This machine cannot give the condition a scenario is about."""


@dataclass
class Outcome:
    events: dict[str, list[Event]]
    calm_until: str | None = None
    """Wall time (RFC 3339, as events stamp it) until which the workload was not at risk: a
    warning that began before it is a false one."""
    notes: dict[str, Any] = field(default_factory=dict)


MakeChild = Callable[[int | None], Child]


def _collect(w: Watch) -> dict[str, list[Event]]:
    for d in w.daemons.values():
        d.stop()
    return {m: w.events(m) for m in w.daemons}


def _app_killed(w: Watch, timeout: float) -> None:
    assert w.app is not None
    try:
        code = w.app.wait(timeout * SLOW)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the workload was not OOM-killed within {timeout:g}s") from None
    assert code == -9, f"the workload exited with {code}, not an OOM kill"
    w.wait_events(lambda docs: bool(kills(docs)), "the oom_killed event", 30)


def page_cache(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    """A file of 3/4 of the limit read again and again: page cache only, no risk."""
    child = make(LIMIT)
    path = make_file(f"{data_dir}/page-cache.bin", 48 * MiB)
    with watch(child, argv("page_cache", path), tmp_path, metrics=metrics) as w:
        seen = w.wait_seen(
            lambda s: s["working_set"] >= 0.75 * LIMIT,
            "the daemons to see a working set of 3/4 of the limit",
        )
        return Outcome(_collect(w), notes={"seen": seen})


def thrash(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    """A file of 1.5 times the limit read again and again: refaults and stall, no risk. The
    thrash level is set under the stall measured first (a property of the machine)."""
    child = make(LIMIT)
    path = make_file(f"{data_dir}/thrash.bin", 96 * MiB)
    app = start(child, argv("thrash", path))
    psi_file = child.psi_file()
    if psi_file is None:
        raise NotHere("no memory.pressure for the cgroup (no PSI)")
    per_window = measure_stall_per_window(psi_file, timeout=60 * SLOW)
    percent = per_window / PSI_WINDOW_US * 100
    if percent < 0.05:
        raise NotHere(f"the thrash stalls only {percent:.3f}% here")
    level = max(0.01, round(percent / 4, 2))
    try:
        with watch(
            child, None, tmp_path, metrics=metrics, thresholds=f"thrash_psi_percent: {level}"
        ) as w:
            w.wait_events(
                lambda docs: any(d["event_type"] == "memory_thrash" for d in docs),
                "a memory_thrash event",
                90,
            )
            return Outcome(_collect(w), notes={"stall_percent": round(percent, 2), "level": level})
    finally:
        app.kill()
        app.wait(10)


def anon_leak(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    child = make(LIMIT)
    with watch(child, argv("anon_leak", LEAK_MIB_PER_S), tmp_path, metrics=metrics) as w:
        _app_killed(w, 120)
        return Outcome(_collect(w))


def shmem_leak(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    """A tmpfs file grows until the writer is killed (its pages stay: tmpfs keeps them)."""
    tmpfs = shmem_dir()
    if tmpfs is None:
        raise NotHere("no tmpfs at /dev/shm")
    child = make(LIMIT)
    path = f"{tmpfs}/pressured-shmem-{os.getpid()}-{os.path.basename(child.path)}"
    try:
        with watch(child, argv("shmem_leak", path, LEAK_MIB_PER_S), tmp_path, metrics=metrics) as w:
            _app_killed(w, 120)
            return Outcome(_collect(w))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def mixed(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    """Anonymous memory held at a quarter of the limit beside a hot page cache that fills the
    rest (no risk, though the working set is near the limit); then the anonymous part leaks
    until the kill."""
    child = make(LIMIT)
    path = make_file(f"{data_dir}/mixed.bin", 36 * MiB)
    workload = argv("mixed", path, 16, LEAK_MIB_PER_S)
    with watch(child, workload, tmp_path, metrics=metrics) as w:
        seen = w.wait_seen(
            lambda s: s["working_set"] >= 0.75 * LIMIT and s["unreclaimable"] < 0.5 * LIMIT,
            "the daemons to see the hot page cache beside the anonymous memory",
        )
        calm_until = rfc3339(time.time())
        w.send("go")
        _app_killed(w, 120)
        return Outcome(_collect(w), calm_until=calm_until, notes={"seen_calm": seen})


KERNEL_LEAK_MIB_PER_S = min(LEAK_MIB_PER_S, 0.7 * LIMIT / MiB / (3 * V1_COLD_S))
"""Kernel memory crosses no v1 eventfd: on the host the daemon sees this leak only by its reads
of an idle cgroup, one per cold interval. The leak reaches the warn level (70 %) after three of
them, so the test is about the warning, not about where the workload's start fell between two
reads."""


def kernel_leak(make: MakeChild, tmp_path: Path, data_dir: str, metrics: Sequence[str]) -> Outcome:
    """Pipe buffers filled and kept: kernel memory, where the kernel charges it to the cgroup
    (pipe pages are allocated __GFP_ACCOUNT)."""
    child = make(LIMIT)
    workload = argv("kernel_leak", KERNEL_LEAK_MIB_PER_S)
    with watch(child, workload, tmp_path, metrics=metrics) as w:
        assert w.app is not None
        grown = wait_for(
            lambda: w.app.poll() is not None or child.usage() >= LIMIT // 2,
            30 * SLOW,
            "the pipes to fill half the limit",
        )
        anon = _anon_bytes(memory_stat(child))
        if grown and w.app.poll() is None and anon >= LIMIT // 4:
            raise NotHere(f"the growth is anonymous ({anon} bytes), not kernel memory")
        if w.app.poll() is not None and not any(kills(w.events(m)) for m in w.daemons):
            raise NotHere("the pipe writer stopped without an OOM kill")
        _app_killed(w, 120)
        return Outcome(_collect(w), notes={"anon_bytes_at_half": anon})


def _anon_bytes(stat: dict[str, int]) -> int:
    return stat.get("anon", stat.get("total_rss", stat.get("rss", 0)))


SCENARIOS: dict[str, Callable[[MakeChild, Path, str, Sequence[str]], Outcome]] = {
    "page_cache": page_cache,
    "thrash": thrash,
    "anon_leak": anon_leak,
    "shmem_leak": shmem_leak,
    "mixed": mixed,
    "kernel_leak": kernel_leak,
}
AT_RISK = {"anon_leak", "shmem_leak", "mixed", "kernel_leak"}
"""The scenarios that end in an OOM kill (mixed after its calm part)."""
