"""Nothing blinds the watcher: hostile or careless input must not crash, stall or bloat it.

Each case here is something a user or a tenant could do (a hook that never stops writing, a
config built to explode, a path to the wrong kind of file, connections left open) and checks
that the daemon stays up, stays small and says clearly what was wrong. Everything is real:
real commands, real files, real sockets, real `pressured` processes.

Sections:
  exec action        output and time of a command are bounded
  configuration      deep, huge or absurd configs are clear config errors (exit 2), short ones
  kill sources       a kill source pointed at the wrong kind of file is inactive, not fatal
  metrics endpoint   idle or slow connections cannot take threads, fds or the scrape
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pressured import config
from pressured.actions.base import ActionContext
from pressured.actions.evict import EvictAction
from pressured.actions.exec import OUTPUT_CAP, ExecAction, run_command
from pressured.actions.k8s_event import K8sEventAction
from pressured.actions.webhook import WebhookAction
from pressured.cli import EXIT_CONFIG
from pressured.errors import ActionError, ConfigError, quote
from pressured.kills.config import KillsConfig
from pressured.kills.readers.kmsg import KmsgReader, available
from pressured.kills.sources import KillSources
from pressured.metrics import Metrics, MetricsServer, start_http
from tests.unit.actions.conftest import pressure

pytestmark = pytest.mark.hostile

MiB = 1 << 20


def pressured(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m pressured ARGS` with no PRESSURED_* (or OOMHero) variable of ours leaking in."""
    names = ("WARNING", "CRITICAL", "COOLDOWN", "WARNING_SIGNAL", "CRITICAL_SIGNAL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSURED_") and k not in names}
    return subprocess.run(
        [sys.executable, "-m", "pressured", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def config_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(str(path), env={})
    return info.value.problems


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB$", f.read(), re.M)
    assert match, field
    return int(match.group(1))


@pytest.fixture
def peak_rss_growth() -> Callable[[], int]:
    """A function: how many bytes this process's peak RSS grew by since the fixture ran.

    The peak (VmHWM) is first reset to the current RSS (clear_refs 5), so an earlier test's
    peak cannot hide this one's."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    return lambda: (_status_kib("VmHWM") - before) * 1024


# --- exec action -------------------------------------------------------------------------


def test_exec_of_an_endless_writer_stops_at_the_deadline_and_keeps_little(
    peak_rss_growth: Callable[[], int],
) -> None:
    action = ExecAction({"command": ["yes"], "timeout_ms": 1000}, ActionContext(), "actions[0]")
    start = time.monotonic()
    with pytest.raises(ActionError) as info:
        action.run(pressure("critical"))
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"the 1 s deadline took {elapsed:.1f}s"
    growth = peak_rss_growth()
    assert growth < 100 * MiB, f"the test process grew by {growth / MiB:.0f} MiB"
    message = str(info.value)
    assert message.startswith("exec yes: killed after timeout 1s (output truncated: stdout was ")
    assert message.endswith(f"kept the first {OUTPUT_CAP})")


def test_exec_output_is_capped_while_the_command_runs_to_its_end() -> None:
    # 8 MiB on each stream, then a clean exit: drained to the end, kept only in part
    script = "import sys; sys.stdout.write('o' * (8 << 20)); sys.stderr.write('e' * (8 << 20))"
    done = run_command([sys.executable, "-c", script], b"", None, 30)
    assert done.returncode == 0
    assert done.stdout.total == done.stderr.total == 8 * MiB
    assert len(done.stdout.data) == len(done.stderr.data) == OUTPUT_CAP
    assert done.truncation() == (
        f" (output truncated: stdout was {8 * MiB} bytes, kept the first {OUTPUT_CAP}; "
        f"stderr was {8 * MiB} bytes, kept the last {OUTPUT_CAP})"
    )


def test_exec_deadline_covers_a_command_that_never_reads_its_stdin() -> None:
    # an event bigger than a pipe buffer, and a command that neither reads nor exits
    start = time.monotonic()
    done = run_command(["sleep", "60"], b"x" * (4 * MiB), None, 0.5)
    assert done.timed_out
    assert time.monotonic() - start < 10


def test_exec_stderr_tail_survives_a_flood_before_it() -> None:
    script = "import sys; sys.stderr.write('noise\\n' * (1 << 20) + 'the real reason\\n'); exit(4)"
    action = ExecAction({"command": [sys.executable, "-c", script]}, ActionContext(), "a")
    with pytest.raises(ActionError) as info:
        action.run(pressure())
    assert str(info.value).startswith(
        f"exec {sys.executable}: exit status 4: the real reason (output truncated: stderr was "
    )


# --- configuration -----------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    [
        "thresholds:",
        "  warn_percent:",
        "    - &a [x, x, x, x, x, x, x, x, x]",
        *(f"    - &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in itertools.pairwise("abcdefghi")),
    ]
)
"""9 levels of 9 aliases where a number is expected: 9**9 (387 million) strings once expanded,
a repr of 226 MB."""


@pytest.mark.parametrize(
    ("name", "text"),
    [("deep.yaml", "a: " + "[" * 100_000 + "\n"), ("deep.json", '{"a": ' + "[" * 100_000)],
)
def test_config_nested_100000_deep_is_a_config_error(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    done = pressured("config", "check", name, cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr[-2000:]
    assert done.stderr == (
        f"pressured: invalid configuration:\n  {name}: nested more than 32 levels deep\n"
    )


def test_config_nested_beyond_the_limit_but_parseable_is_refused(tmp_path: Path) -> None:
    # 200 levels parse (below Python's recursion limit) but would not survive a deep copy
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * 200 + "]" * 200 + "}")
    assert config_problems(path) == [f"{path}: nested more than 32 levels deep"]


def test_config_nested_json_in_the_environment_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, env={"PRESSURED__ACTIONS": "[" * 100_000})
    assert info.value.problems == [
        "actions (from env:PRESSURED__ACTIONS): nested more than 32 levels deep"
    ]


def test_config_alias_bomb_is_refused_quickly_and_briefly(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB + "\n")
    start = time.monotonic()
    done = pressured("config", "check", "bomb.yaml", cwd=tmp_path)
    assert time.monotonic() - start < 30
    assert done.returncode == EXIT_CONFIG, done.stderr[-2000:]
    assert len(done.stderr) < 2000, done.stderr[:2000]
    assert "bomb.yaml: more than 100000 values once YAML aliases are expanded" in done.stderr


def test_config_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("thresholds:\n  warn_percent: &a [1, *a]\n")
    assert config_problems(path) == [f"{path}: a value contains itself (a recursive YAML alias)"]


def test_config_integer_too_long_to_convert_is_a_config_error(tmp_path: Path) -> None:
    for name in ("long.yaml", "long.json"):
        path = tmp_path / name
        digits = "1" * 5000
        path.write_text(
            f"thresholds:\n  cooldown_seconds: {digits}\n"
            if name.endswith("yaml")
            else f'{{"a": {digits}}}'
        )
        (found,) = config_problems(path)
        assert found == (
            f"{path}: invalid {name[-4:].upper()}: Exceeds the limit (4300 digits) for integer "
            "string conversion: value has 5000 digits"
        )


def test_config_file_too_large_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * config.MAX_FILE_BYTES + "\n")
    assert config_problems(path) == [f"{path}: config file larger than 16 MiB"]


def test_quote_cuts_a_long_value_and_says_how_long_it_was() -> None:
    assert quote("short") == "'short'"
    assert quote({"a": [1, (2,)]}) == repr({"a": [1, (2,)]})
    assert quote("x" * 1000) == "'" + "x" * 79 + "… (1002 characters)"
    looped: list[Any] = []
    looped.append(looped)
    assert quote(looped) == "[[...]]"
    assert quote(10**5000) == "<an integer of 16610 bits>"
    bomb: Any = ["x"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    start = time.monotonic()
    shown = quote(bomb)
    assert time.monotonic() - start < 5
    assert shown.startswith("[[[[[[[[['x', 'x'")
    assert shown.endswith("… (more than 65616 characters)")


BIG = list(range(20_000))
"""Under every size limit, but its repr has over 100,000 characters."""


@pytest.mark.parametrize(
    "doc",
    [
        {"source": {"poll_interval_ms": BIG}},
        {"source": {"mode": BIG}},
        {"source": {"cgroup": {"paths": BIG}}},
        {"log_level": BIG},
        {"actions": {"type": BIG}},
        {"thresholds": {"warn_percent": BIG}},
        {"thresholds": BIG},
        {"rules": {"critical": BIG}},
        {"metrics": {"port": BIG}},
        {"metrics": {"enabled": BIG}},
        {"kills": {"window_seconds": BIG}},
        {"kills": {"kmsg": {"path": BIG}}},
        {"kills": {"kmsg": BIG}},
    ],
    ids=lambda doc: json.dumps(doc, default=str)[:40],
)
def test_config_errors_quote_a_bad_value_briefly(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    found = config_problems(path)
    assert found
    for problem in found:
        assert len(problem) < 300, problem[:300]
        assert "characters)" in problem, problem


@pytest.mark.parametrize(
    ("options", "cls"),
    [
        ({"command": ["ls", BIG]}, ExecAction),
        ({"command": "true", "timeout_ms": BIG}, ExecAction),
        ({"url": "http://127.0.0.1:1/", "headers": {"X": BIG}}, WebhookAction),
        ({"command": "true", "severities": [BIG]}, ExecAction),
    ],
)
def test_action_errors_quote_a_bad_value_briefly(options: dict[str, Any], cls: type) -> None:
    with pytest.raises(ConfigError) as info:
        cls(options, ActionContext(), "actions[0]")
    (problem,) = info.value.problems
    assert len(problem) < 300, problem[:300]
    assert "characters)" in problem, problem


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (
            {"source": {"poll_interval_ms": 10**29}},
            "source.poll_interval_ms: must be at most 3600000, got 1",
        ),
        (
            {"source": {"min_interval_ms": 7_200_000, "poll_interval_ms": 3_600_000}},
            "source.min_interval_ms: must be at most 3600000",
        ),
        (
            {"source": {"kubelet": {"poll_interval_ms": 10**12}}},
            "source.kubelet.poll_interval_ms: must be at most 3600000",
        ),
        (
            {"source": {"psi": {"window_us": 20_000_000}}},
            "source.psi.window_us: must be at most 10000000",
        ),
        (
            {"storage": {"spool": {"max_bytes": 1 << 50}}},
            "storage.spool.max_bytes: must be at most 1099511627776",
        ),
        (
            {"thresholds": {"cooldown_seconds": 1e29}},
            "thresholds.cooldown_seconds: must be at most 86400 (got 1e+29)",
        ),
        (
            {"thresholds": {"cooldown_seconds": 10**400}},
            "thresholds.cooldown_seconds: expected a number (got 1000",
        ),
        (
            {"thresholds": {"predict_seconds": 1e9}},
            "thresholds.predict_seconds: must be at most 86400",
        ),
        (
            {"thresholds": {"predict_window_seconds": 1e9}},
            "thresholds.predict_window_seconds: must be at most 3600",
        ),
        (
            {"thresholds": {"predict_samples": 10**6}},
            "thresholds.predict_samples: must be at most 300 (got 1000000)",
        ),
        (
            {"kills": {"window_seconds": math.inf}},
            "kills.window_seconds: expected a number of seconds in (0, 300] (got inf)",
        ),
    ],
)
def test_config_numbers_have_upper_bounds(
    tmp_path: Path, doc: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "bounds.json"
    path.write_text(json.dumps(doc))
    found = config_problems(path)
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_config_refuses_nan_and_infinity(tmp_path: Path, value: str) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text(
        f"thresholds:\n  cooldown_seconds: {value}\n  predict_seconds: {value}\n"
        f"kills:\n  window_seconds: {value}\n"
    )
    found = config_problems(path)
    for key in (
        "thresholds.cooldown_seconds",
        "thresholds.predict_seconds",
        "kills.window_seconds",
    ):
        assert any(p.startswith(f"{key}: expected a number") for p in found), (key, found)


@pytest.mark.parametrize(
    ("options", "cls"),
    [
        ({"min_interval_seconds": math.nan}, K8sEventAction),
        ({"max_eta_seconds": math.nan}, EvictAction),
        ({"refused_backoff_seconds": math.inf}, EvictAction),
    ],
)
def test_action_options_refuse_nan_and_infinity(options: dict[str, Any], cls: type) -> None:
    # NaN compares false with everything: "max_eta_seconds: nan" passed "<= 0" and never evicted
    with pytest.raises(ConfigError) as info:
        cls(options, ActionContext(mode="node", kube=object()), "actions[0]")
    (key,) = options
    assert str(info.value) == f"actions[0].{key}: expected a number, got {options[key]!r}"


@pytest.mark.parametrize(
    ("options", "cls", "problem"),
    [
        (
            {"command": "true", "timeout_ms": 10**12},
            ExecAction,
            "actions[0].timeout_ms: must be at most 600000, got 1000000000000",
        ),
        (
            {"url": "http://127.0.0.1:1/", "timeout_ms": 10**12},
            WebhookAction,
            "actions[0].timeout_ms: must be at most 60000",
        ),
        (
            {"url": "http://127.0.0.1:1/", "backoff_ms": 10**400},
            WebhookAction,
            "actions[0].backoff_ms: must be at most 60000",
        ),
    ],
)
def test_action_durations_have_upper_bounds(
    options: dict[str, Any], cls: type, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(options, ActionContext(), "actions[0]")
    assert str(info.value).startswith(problem), str(info.value)


# --- kill sources ------------------------------------------------------------------------


def _not_kmsg(path: Path, kind: str) -> str:
    return (
        f"kills.kmsg.path: {path} is {kind}, not a character device like /dev/kmsg "
        "(the kernel's log)"
    )


@pytest.mark.parametrize("kind", ["a regular file", "a FIFO", "a directory"])
def test_kmsg_path_that_is_not_a_character_device_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "kmsg"
    if kind == "a regular file":
        path.write_text("6,1,10,-;not the kernel's log\n")
    elif kind == "a FIFO":
        os.mkfifo(path)
    else:
        path.mkdir()
    assert available(str(path)) == (False, _not_kmsg(path, kind))
    reader = KmsgReader(str(path))
    assert reader.status == (False, _not_kmsg(path, kind))
    assert reader.fds() == []
    assert reader.read() == []
    reader.close()


def test_kill_sources_report_a_regular_file_as_kmsg_inactive(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_bytes(b"")
    sources = KillSources(
        KillsConfig(kmsg_path=str(path), tracepoint_enabled=False, bcc_enabled=False)
    )
    try:
        status = sources.start()
        assert status["kmsg"] == (False, _not_kmsg(path, "a regular file"))
        assert sources.fds() == []
    finally:
        sources.close()


def fake_cgroup_v2(root: Path) -> Path:
    """A cgroup v2 tree of plain files with one memory cgroup: the daemon starts on it
    without touching the machine's own cgroups."""
    app = root / "app"
    app.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (app / "cgroup.controllers").write_text("memory\n")
    (app / "memory.current").write_text(f"{100 * MiB}\n")
    (app / "memory.max").write_text(f"{256 * MiB}\n")
    (app / "memory.stat").write_text(f"anon {80 * MiB}\ninactive_file {4 * MiB}\n")
    events = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
    (app / "memory.events").write_text(events)
    (app / "memory.events.local").write_text(events)
    (app / "cgroup.procs").write_text("")
    return app


def test_daemon_runs_on_with_kmsg_path_at_a_regular_file(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    app = fake_cgroup_v2(tmp_path / "cgroup")
    (tmp_path / "pressured.yaml").write_text(
        f"source:\n  cgroup:\n    path: {app.parent}\n  machine: false\n"
        f"kills:\n  kmsg:\n    path: {kmsg}\n  tracepoint:\n    enabled: false\n"
    )
    done = pressured(
        "run",
        "-c",
        "pressured.yaml",
        "--cgroup",
        str(app),
        "--no-metrics",
        "--run-for",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    reason = _not_kmsg(kmsg, "a regular file")
    assert f"kill source kmsg: inactive ({reason})" in done.stderr
    assert "pressured.daemon: stopping" in done.stderr


# --- metrics endpoint --------------------------------------------------------------------

HANDLERS = 4
TIMEOUT = 2.0


def _os_threads() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        match = re.search(r"^Threads:\s+(\d+)$", f.read(), re.M)
    assert match
    return int(match.group(1))


@pytest.fixture
def small_server() -> Iterator[MetricsServer]:
    """A real endpoint on loopback with a small handler cap and a short read timeout."""
    metrics = Metrics(node="n")
    metrics.set_watched(3)
    with start_http(
        metrics.registry, "127.0.0.1", 0, read_timeout=TIMEOUT, max_handlers=HANDLERS
    ) as srv:
        yield srv


def _scrape(srv: MetricsServer) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=10)


def _closed_by_server(conn: socket.socket) -> bool:
    """Whether the server closed ``conn`` within the test's patience (EOF or a reset)."""
    conn.settimeout(TIMEOUT + 8)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_take_no_thread_and_are_closed_at_the_timeout(
    small_server: MetricsServer,
) -> None:
    before = _os_threads()
    idle = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(200)]
    try:
        # /metrics answers meanwhile (its connection was accepted after all 200)
        r = _scrape(small_server)
        assert r.status_code == 200
        assert "pressured_watched_cgroups 3.0" in r.text
        assert _os_threads() <= before + HANDLERS + 2
        opened = time.monotonic()
        assert all(_closed_by_server(conn) for conn in idle)
        assert time.monotonic() - opened < TIMEOUT + 8
        assert _scrape(small_server).status_code == 200
    finally:
        for conn in idle:
            conn.close()


def test_requests_beyond_the_handler_cap_are_answered_503(small_server: MetricsServer) -> None:
    before = _os_threads()
    # each starts a request and never finishes it: a handler thread waits on each
    slow = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(HANDLERS)]
    try:
        for conn in slow:
            conn.sendall(b"GET /metrics HTTP/1.0\r\n")
        deadline = time.monotonic() + 10
        while _os_threads() < before + HANDLERS and time.monotonic() < deadline:
            time.sleep(0.01)
        r = _scrape(small_server)
        assert (r.status_code, r.text) == (503, "too many connections\n")
        assert _os_threads() <= before + HANDLERS + 2
        # the unfinished requests run out of time, and the handlers are free again
        assert all(_closed_by_server(conn) for conn in slow)
        assert _scrape(small_server).status_code == 200
    finally:
        for conn in slow:
            conn.close()


def test_a_request_trickled_byte_by_byte_gets_the_same_deadline(
    small_server: MetricsServer,
) -> None:
    def trickle(conn: socket.socket, data: bytes) -> None:
        for byte in data:
            conn.send(bytes([byte]))
            time.sleep(0.2)

    conn = socket.create_connection(("127.0.0.1", small_server.port))
    start = time.monotonic()
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            trickle(conn, b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"x" * 1000)
    finally:
        conn.close()
    # a read timeout per recv would have let it go on for 200 s
    assert time.monotonic() - start < TIMEOUT + 8


def test_idle_connections_beyond_the_waiting_cap_close_the_oldest() -> None:
    # a long read timeout: what closes them here is the cap, not the clock
    with start_http(
        Metrics(node="n").registry, "127.0.0.1", 0, read_timeout=60, max_waiting=8
    ) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
        try:
            assert _scrape(srv).status_code == 200  # and it evicted one more to get in
            for conn in idle[:12]:
                conn.settimeout(5)
                assert conn.recv(1) == b""
            for conn in idle[13:]:
                conn.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    conn.recv(1)  # still open, waiting for a request
        finally:
            for conn in idle:
                conn.close()


# --------------------------------------------------------------------------------------------
# a cgroup made of plain files


def test_a_cgroup_of_plain_files_is_refused_naming_the_file(tmp_path: Path) -> None:
    """epoll refuses regular files with EPERM; that used to surface as "[Errno 1] Operation
    not permitted (from epoll_ctl(ADD))", naming neither the cgroup nor the file."""
    from pressured.errors import CgroupError
    from pressured.kernel import cgroupfs
    from pressured.kernel.watch import Watcher, WatchOptions
    from tests.unit.test_cgroupfs import v2_tree

    cg = v2_tree(tmp_path)
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    w = Watcher(WatchOptions(psi=None))
    try:
        with pytest.raises(CgroupError, match=rf"{cg}/memory\.events: not a kernel file"):
            w.add_cgroup("fake", ref, [])
        assert "fake" not in w and w.open_fds() == 0
    finally:
        w.close()


# --------------------------------------------------------------------------------------------
# cgroups that come and go faster than they can be armed


def test_a_cgroup_that_vanished_while_being_armed_is_counted_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,600 cgroups created and removed under watch logged 401 WARNING lines: the race of a
    short-lived container with arming is expected; it is debug, and counted in a metric."""
    import logging
    import shutil

    from pressured.daemon.targets import Targets
    from pressured.engine import Engine, EngineSettings
    from pressured.kernel import cgroupfs
    from pressured.kernel.watch import Watcher, WatchOptions
    from pressured.metrics import Metrics
    from pressured.sources.base import TargetSpec
    from tests.unit.test_cgroupfs import v2_tree

    cg = v2_tree(tmp_path)
    ref = cgroupfs.resolve(str(cg), cgroupfs.detect_layout(str(tmp_path)))
    shutil.rmtree(cg)  # listed by the source, gone before it is armed
    watcher = Watcher(WatchOptions(psi=None))
    targets = Targets(Engine(EngineSettings()), watcher, proc_root="/proc", clock=lambda: 0.0)
    try:
        with caplog.at_level(logging.DEBUG, logger="pressured.daemon"):
            assert targets.add(TargetSpec(str(cg), ref)) is None
        assert targets.vanished_while_arming == 1
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "vanished while being armed" in caplog.text
    finally:
        watcher.close()
    metrics = Metrics(node=None, pid_labels=False)
    metrics.set_watched(0, targets.vanished_while_arming)
    metrics.set_watched(0, targets.vanished_while_arming)  # a total, not an increment
    assert metrics.registry.get_sample_value("pressured_targets_vanished_total") == 1.0
