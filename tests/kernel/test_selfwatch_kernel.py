"""The daemon watching itself, for real: it runs inside a memory cgroup of its own with a real
limit, its /healthz and metrics are read over HTTP, optional work is shed on real events, and
its loop is really stopped (SIGSTOP) to make it wake late.

The levels are set in the configuration relative to the real limit (1 GiB here, the daemon
using a few percent of it), so "near its own limit" is reached without risking the test
daemon's own OOM kill; the decision itself is proved on exact numbers in
tests/unit/test_selfwatch.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cgroups import Child, leaker_argv
from tests.support.daemon import PressuredProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024
GiB = 1024 * MiB

# moves itself into the cgroup directory argv[1], then execs the rest of its arguments
ENTER = (
    sys.executable,
    "-c",
    "import os,sys\n"
    "with open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w') as f: f.write(str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])",
)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def healthz(port: int) -> tuple[int, str]:
    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10, trust_env=False)
    return r.status_code, r.text


@contextmanager
def daemon_in(
    own: Child | None, cfg: Path, watched: Child, tmp_path: Path
) -> Iterator[tuple[PressuredProcess, int]]:
    args = ["run", "-c", str(cfg), "--cgroup", watched.path, "--metrics-port", "0"]
    args += ["--events-out", str(tmp_path / "events.jsonl")]
    wrapper = (*ENTER, own.path) if own is not None else ()
    with PressuredProcess(args, wrapper=wrapper) as daemon:
        daemon.wait_ready()
        port = int(daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        yield daemon, port


def test_near_its_own_limit_it_says_degraded_and_sheds_lua(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    own, watched = make_cgroup(1 * GiB), make_cgroup(64 * MiB)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "thresholds: {warn_percent: 50, critical_percent: 95, metric: usage}\n"
        "metrics: {self_degraded_percent: 1, self_shed_percent: 2}\n"
        "actions:\n"
        "  - {type: log}\n"
        "  - {type: lua, inline_script: 'function on_event(e) end'}\n"
    )
    with daemon_in(own, cfg, watched, tmp_path) as (daemon, port):
        got = samples(port)
        assert got[("pressured_self_memory_limit_bytes", ())] == GiB
        ws = got[("pressured_self_memory_working_set_bytes", ())]
        assert 0.02 * GiB <= ws < GiB, "the daemon's own cgroup is the one read"
        assert got[("pressured_self_rss_bytes", ())] > 0
        assert got[("pressured_self_shedding", ())] == 1
        code, body = healthz(port)
        assert code == 200, "degraded is not down: a liveness probe must not restart it"
        assert body.startswith("degraded: own memory at "), body
        assert "of its limit" in body and "shedding heap captures and Lua" in body
        daemon.wait_for_log(r"shedding optional work")

        watched.spawn(leaker_argv("--rate-mib", "32", "--max-mib", "40", "--hold"))
        daemon.wait_for_log(r"lua: skipped for .*shedding optional work", timeout=30)
        shed = ("pressured_actions_dropped_total", (("action", "lua"), ("reason", "shed")))
        wait_for(lambda: samples(port).get(shed, 0) >= 1, 10, "the shed drop counted")


def test_events_it_could_not_deliver_make_it_degraded(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    watched = make_cgroup(64 * MiB)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "thresholds: {warn_percent: 50, critical_percent: 95, metric: usage}\n"
        "metrics: {self_degraded_percent: 100, self_shed_percent: 100}\n"
        "actions: [{type: log}, {type: exec, command: ['false']}]\n"
    )
    with daemon_in(None, cfg, watched, tmp_path) as (daemon, port):
        assert healthz(port) == (200, "ok")
        watched.spawn(leaker_argv("--rate-mib", "32", "--max-mib", "40", "--hold"))
        daemon.wait_for_log(r"exec false: exit", timeout=30)
        code, body = wait_for(
            lambda: (h := healthz(port))[1] != "ok" and h, 10, "/healthz to say degraded"
        )
        assert code == 200
        assert body.startswith("degraded: 1 event(s) dropped or not delivered"), body
        assert "exec: failed x1" in body
        wait_for(
            lambda: samples(port)[("pressured_self_degraded", ())] == 1, 10, "the degraded gauge"
        )


def test_a_stopped_loop_shows_as_wake_up_lag(
    make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    watched = make_cgroup(64 * MiB)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("actions: [{type: log}]\n")
    with daemon_in(None, cfg, watched, tmp_path) as (daemon, port):
        late = ("pressured_wakeup_lag_seconds_bucket", (("le", "1.0"),))
        every = ("pressured_wakeup_lag_seconds_bucket", (("le", "+Inf"),))
        before = samples(port)
        assert before[every] - before[late] == 0, "no late wake-up before the stop"
        # stopped past the loop's longest sleep (5 s): whatever it slept towards has passed
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(6.5)
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        wait_for(lambda: (s := samples(port))[every] - s[late] >= 1, 15, "a wake-up later than 1 s")
        state = httpx.get(f"http://127.0.0.1:{port}/v1/state", timeout=10, trust_env=False)
        assert state.json()["self"]["wakeup_lag_max_seconds"] > 1.0
