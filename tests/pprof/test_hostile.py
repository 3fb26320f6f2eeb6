"""Profiles written by an adversary: the pod's owner serves /debug/pprof/heap.

Each must give an answer (go tool pprof's, when it has one) or a PprofError, within a bound,
and never take the calling process down with it.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import logging
import resource
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pressured.actions.base import ActionContext
from pressured.actions.heapdump import HeapdumpAction
from pressured.errors import ConfigError, PprofError
from pressured.model import Identity
from pressured.pprof import format_top, load_profile, summarize_top, top
from pressured.pprof.cli import pprof_app
from pressured.pprof.goregexp import compile_go
from pressured.pprof.worker import (
    _BOOT,
    DAEMON_LIMITS,
    Limits,
    ProfileLimitError,
    _package_root,
    _reply,
    run_top,
    worker_env,
)
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import ProfileBuilder, go_pprof_text, pod_event

pytestmark = pytest.mark.hostile

MIB = 1 << 20

EVIL_PATTERN = "(a|aa)+$x|(a|a)*b"
"""Exponential for a backtracking engine on a run of a's that does not end the way it wants."""
EVIL_NAME = "a" * 34 + "x"


def hostile_profile() -> bytes:
    """The profile that froze the daemon: one function, drop_frames a catastrophic pattern."""
    b = ProfileBuilder((("inuse_space", "bytes"),))
    exe = b.mapping("/app/server")
    b.msg.drop_frames = b.s(EVIL_PATTERN)
    b.sample([b.location(EVIL_NAME, mapping_id=exe), b.location("main.main", mapping_id=exe)], 64)
    return b.raw()


def string_table_bomb(entries: int = 50_000_000) -> bytes:
    """A few hundred kB of gzip claiming ``entries`` strings: gigabytes once decoded."""
    head = b"\x0a\x02\x08\x01"  # sample_type {type: 1}
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\x32\x00" * MIB  # string_table: "" (field 6, length 0), a million times
    out = [z.compress(head)]
    for _ in range(entries // MIB):
        out.append(z.compress(block))
    return b"".join([*out, z.flush()])


def gzip_of_zeros(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * MIB
    return b"".join([*(z.compress(block) for _ in range(size // MIB)), z.flush()])


def slow_profile(samples: int = 300_000) -> bytes:
    """Valid and honest, just long: 19 million frames, over 2 s of CPU for decode and top()
    (measured 2.3 s, 330 MiB: under the 512 MiB of the limits below)."""
    b = ProfileBuilder()
    locs = [b.location(f"pkg.f{i}") for i in range(64)]
    b.sample(locs, 1)
    pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
    more = pb2.Profile()
    more.sample.add(location_id=locs, value=[1])
    # concatenated messages merge: each copy adds one sample
    return b.raw() + bytes(more.SerializeToString()) * (samples - 1)


def _framed(drop: str, keep: str = "") -> ProfileBuilder:
    b = ProfileBuilder((("space", "bytes"),))
    b.msg.drop_frames = b.s(drop)
    if keep:
        b.msg.keep_frames = b.s(keep)
    main = b.location("main.main")
    user = b.location("app.alloc")
    b.sample([b.location("runtime.mallocgc"), b.location("runtime.newobject"), user, main], 100)
    b.sample([b.location("mainly.helper"), user, main], 10)
    b.sample([b.location("app.grow"), user, main], 5)
    return b


# --------------------------------------------------------------------------------------------
# drop_frames / keep_frames: Go's syntax, RE2's linear time


def test_hostile_profile_is_small() -> None:
    assert len(hostile_profile()) < 200


def test_hostile_drop_frames_decodes_in_linear_time() -> None:
    # In a child with a hard timeout: should this regress, the test fails instead of hanging.
    code = (
        "import sys, time\n"
        "from tests.pprof.test_hostile import hostile_profile\n"
        "from pressured.pprof import load_profile, top\n"
        "t = time.monotonic()\n"
        "rows = top(load_profile(hostile_profile(), 'hostile')).rows\n"
        "print(time.monotonic() - t, rows[0].function)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    assert float(out[0]) < 1.0
    assert out[1] == EVIL_NAME


@pytest.mark.parametrize(
    ("drop", "keep"),
    [
        (EVIL_PATTERN, ""),
        (r"runtime\..*", ""),
        (r"runtime\..*", r"runtime\.newobject"),
        # Go compiles "^(" + pattern + ")$": a pattern can close that group and leave its
        # alternatives unanchored ("^(main)" or "(runtime)$"), and the answer must stay Go's.
        (r"main)|(runtime", ""),
        (r"(?i)APP\.GROW", ""),
        (r"\Qapp.grow\E", ""),
        # rejected by Go's regexp: ignored, nothing dropped
        (r"(a)\1", ""),
        (r"runtime\..*", r"(?=x)"),
        (r"a{1001}", ""),
        (r"\C", ""),
    ],
)
def test_frame_filters_equal_go_tool_pprof(
    go_env: dict[str, str], tmp_path: Path, drop: str, keep: str
) -> None:
    path = tmp_path / "framed.pb"
    path.write_bytes(_framed(drop, keep).raw())
    got = format_top(top(load_profile(path.read_bytes(), str(path)), n=0))
    assert got == go_pprof_text(path, go_env, "-top", "-nodefraction=0")


def test_rejected_drop_frames_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    profile = load_profile(_framed(r"runtime\.(x)\1" + "z" * 100).raw(), "bad.pb")
    rows = {r.function for r in top(profile, n=0).rows}
    assert "runtime.mallocgc" in rows  # nothing was dropped
    (warning,) = profile.warnings
    assert warning.startswith("bad.pb: profile field drop_frames is not a valid regular expression")
    assert "invalid escape sequence" in warning
    assert "'runtime\\\\.(x)\\\\1zzzz" in warning  # a prefix of the pattern, quoted...
    assert "... (114 chars)" in warning  # ...and cut
    assert "ignored" in warning
    assert any(r.getMessage() == warning for r in caplog.records)


def test_rejected_keep_frames_names_its_field() -> None:
    profile = load_profile(_framed(r"runtime\..*", "(?<!x)y").raw(), "k.pb")
    (warning,) = profile.warnings
    assert "profile field keep_frames" in warning
    assert "runtime.mallocgc" in {r.function for r in top(profile, n=0).rows}


def test_rejection_messages_stay_short_and_printable() -> None:
    pattern = "\x00)" + "a" * 100_000 + "\x01"
    with pytest.raises(PprofError) as info:
        compile_go(pattern, "drop_frames", "src", whole=True)
    message = str(info.value)
    assert len(message) < 300
    assert message.isprintable()
    assert "(100003 chars)" in message


def test_compile_go_raises_pprof_error() -> None:
    with pytest.raises(PprofError, match=r"^src: profile field drop_frames .*\(invalid escape"):
        compile_go(r"\1", "drop_frames", "src")
    assert compile_go(r"^(a|b)$", "drop_frames", "src").matches("a")
    assert not compile_go(r"^(a|b)$", "drop_frames", "src").matches("a\n")  # $ is \z, as Go's


def test_evil_pattern_against_long_names_is_fast() -> None:
    rx = compile_go(EVIL_PATTERN, "drop_frames", "src", whole=True)
    start = time.monotonic()
    for n in range(1, 2000, 7):
        assert not rx.matches("a" * n + "x")
    assert time.monotonic() - start < 2.0


# --------------------------------------------------------------------------------------------
# the worker: bounded in time and memory, answers as plain data


def test_worker_answers_as_go_tool_pprof(go_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "hostile.pb"
    path.write_bytes(hostile_profile())
    start = time.monotonic()
    report = run_top(path.read_bytes(), str(path), n=0, summary_k=1)
    assert time.monotonic() - start < 5
    assert report.text == go_pprof_text(path, go_env, "-top", "-nodefraction=0")
    assert report.data["rows"][0]["function"] == EVIL_NAME
    assert report.data["total"] == 64
    assert report.summary == [
        {
            "function": EVIL_NAME,
            "flat": 64,
            "flat_pct": 100.0,
            "cum": 64,
            "cum_pct": 100.0,
            "unit": "bytes",
            "sample_type": "inuse_space",
        }
    ]
    assert report.warnings == ()


def test_worker_reports_bad_input_as_pprof_error() -> None:
    with pytest.raises(PprofError, match=r"^junk\.bin: not a pprof profile") as info:
        run_top(b"\xff\xfe not protobuf", "junk.bin")
    assert not isinstance(info.value, ProfileLimitError)
    with pytest.raises(PprofError, match=r"^p\.pb: unknown sample index 'nope'"):
        run_top(hostile_profile(), "p.pb", sample_index="nope")


def test_worker_passes_warnings_back() -> None:
    report = run_top(_framed(r"(a)\1").raw(), "w.pb")
    (warning,) = report.warnings
    assert "profile field drop_frames" in warning
    assert report.data["warnings"] == [warning]


@pytest.mark.parametrize(
    "make",
    [string_table_bomb, lambda: gzip_of_zeros(600 * MIB)],
    ids=["string-table", "gzip-of-zeros"],
)
def test_worker_past_its_memory_limit_is_stopped(make: Any) -> None:
    bomb = make()
    assert len(bomb) < 1 * MIB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the daemon's memory limit; time enough that a busy machine does not make it a time-out
    limits = Limits(seconds=60, memory_mib=DAEMON_LIMITS.memory_mib)
    with pytest.raises(
        ProfileLimitError,
        match=r"^bomb\.gz: profile analysis exceeded 60 s / 512 MiB: killed \(out of memory\)$",
    ):
        run_top(bomb, "bomb.gz", limits=limits)
    # the caller is unharmed: its peak memory did not move, and it goes on analysing
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024
    assert run_top(hostile_profile(), "after.pb").data["total"] == 64


def test_worker_inflates_a_gzip_profile_in_little_memory() -> None:
    # A small gzip profile must not need the whole inflate cap (1 GiB) up front.
    b = ProfileBuilder()
    b.sample([b.location("main.f")], 1)
    report = run_top(b.gz(), "small.pb.gz", limits=Limits(seconds=5, memory_mib=128))
    assert report.data["rows"][0]["function"] == "main.f"


def test_worker_past_its_deadline_is_killed() -> None:
    slow = slow_profile()
    start = time.monotonic()
    with pytest.raises(
        ProfileLimitError,
        match=r"^slow\.pb: profile analysis exceeded 0\.5 s / 512 MiB: killed "
        r"\(still running after 0\.5 s\)$",
    ):
        run_top(slow, "slow.pb", limits=Limits(seconds=0.5, memory_mib=512))
    assert time.monotonic() - start < 5


def _worker_cmd(seconds: str) -> list[str]:
    """The worker as run_top starts it, for a test that needs the process itself."""
    request = '{"source": "slow.pb"}'
    boot = [sys.executable, "-P", "-c", _BOOT, _package_root()]
    return [*boot, "--max-seconds", seconds, "--max-memory-mib", "512", request]


def test_orphaned_worker_stops_at_its_cpu_limit() -> None:
    # Should the caller be gone, nobody kills the child at the deadline: RLIMIT_CPU does.
    start = time.monotonic()
    proc = subprocess.run(
        _worker_cmd("1"),
        input=slow_profile(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGXCPU
    assert proc.stdout == b""
    assert time.monotonic() - start < 30
    with pytest.raises(ProfileLimitError, match=r"killed \(out of CPU time: 1 s\)"):
        _reply(proc.returncode, proc.stdout, proc.stderr, "slow.pb", Limits(1, 512))


def test_worker_is_first_in_line_for_the_oom_killer() -> None:
    proc = subprocess.Popen(
        _worker_cmd("5"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(slow_profile())  # read whole before the analysis starts
        proc.stdin.close()
        adj = Path(f"/proc/{proc.pid}/oom_score_adj").read_text().strip()
    finally:
        proc.kill()
        proc.wait()
    assert adj == "1000"


def test_worker_environment_holds_no_credentials() -> None:
    env = worker_env(
        {
            "PATH": "/usr/bin",
            "TZ": "Europe/Paris",
            "LC_ALL": "C.UTF-8",
            "PYTHONPATH": "/src",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "PRESSURED_WEBHOOK_TOKEN": "secret",
            "HOME": "/root",
        }
    )
    assert env == {
        "PATH": "/usr/bin",
        "TZ": "Europe/Paris",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src",
    }


@pytest.mark.parametrize(
    ("rc", "out", "err", "message"),
    [
        (-signal.SIGKILL, b"", b"", r"^s: profile analysis failed: worker killed by SIGKILL \("),
        (-signal.SIGSEGV, b"", b"", r"worker killed by SIGSEGV \(5 s / 512 MiB\)"),
        (1, b"", b"Traceback...\nImportError: boom", r"exited with status 1: ImportError: boom$"),
        (0, b"{not json", b"", r"unreadable worker reply"),
        (0, b'{"ok": true}', b"", r"unreadable worker reply"),
        (0, b'{"ok": false, "error": "s: not a pprof profile"}', b"", r"^s: not a pprof profile$"),
    ],
)
def test_every_worker_ending_is_a_pprof_error(
    rc: int, out: bytes, err: bytes, message: str
) -> None:
    with pytest.raises(PprofError, match=message):
        _reply(rc, out, err, "s", DAEMON_LIMITS)


def test_limits_are_validated_and_printed() -> None:
    assert str(Limits(5.0, 512)) == "5 s / 512 MiB"
    assert str(Limits(0.25, 64)) == "0.25 s / 64 MiB"
    assert Limits(0.25, 64).cpu_seconds == 1
    with pytest.raises(ValueError, match="seconds"):
        Limits(0, 512)
    with pytest.raises(ValueError, match="memory_mib"):
        Limits(1, 0)


# --------------------------------------------------------------------------------------------
# pressured pprof top: every input through the worker


def test_cli_top_on_the_hostile_file_equals_go_tool_pprof(
    go_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "hostile.pb"
    path.write_bytes(hostile_profile())
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pressured", "pprof", "top", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert time.monotonic() - start < 10
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == go_pprof_text(path, go_env, "-top")


def test_cli_top_warns_about_an_ignored_drop_frames(go_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bad-drop.pb"
    path.write_bytes(_framed(r"runtime\..*(?=x)").raw())
    result = CliRunner().invoke(pprof_app, ["top", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == go_pprof_text(path, go_env, "-top")
    assert result.stderr.startswith(
        f"warning: {path}: profile field drop_frames is not a valid regular expression"
    )


@pytest.mark.parametrize(
    ("make", "args", "why"),
    [
        (slow_profile, ["--max-seconds", "0.5"], "0.5 s / 2048 MiB: killed (still running"),
        (string_table_bomb, ["--max-memory", "256"], "60 s / 256 MiB: killed (out of memory)"),
    ],
    ids=["time", "memory"],
)
def test_cli_top_stops_at_its_limits(tmp_path: Path, make: Any, args: list[str], why: str) -> None:
    path = tmp_path / "big.pb"
    path.write_bytes(make())
    start = time.monotonic()
    result = CliRunner().invoke(pprof_app, ["top", str(path), *args])
    assert time.monotonic() - start < 30
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}: profile analysis exceeded {why}")
    assert "a larger --max-seconds or --max-memory" in result.stderr


# --------------------------------------------------------------------------------------------
# the heapdump action: the profile comes from the pod


class _Served:
    """A loopback HTTP server answering every GET with ``body`` (the pod's pprof endpoint)."""

    def __init__(self) -> None:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.body = b""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def pod_pprof() -> Iterator[_Served]:
    served = _Served()
    yield served
    served.close()


def _heapdump(port: int, storage: LocalStorage, **options: Any) -> HeapdumpAction:
    ctx = ActionContext(storage_factory=lambda: storage)
    return HeapdumpAction({"port": port, **options}, ctx, "actions[0]")


def test_heapdump_of_the_hostile_profile(pod_pprof: _Served, tmp_path: Path) -> None:
    pod_pprof.body = hostile_profile()
    storage = LocalStorage(tmp_path / "store")
    action = _heapdump(pod_pprof.port, storage)
    event = pod_event(Identity(namespace="shop", pod_name="web-1", container_name="app"))
    start = time.monotonic()
    try:
        action.run(event)
    finally:
        action.close()
    assert time.monotonic() - start < 10
    assert event.extra["pprof_top"][0]["function"] == EVIL_NAME
    assert "pprof_error" not in event.extra
    assert storage.read(event.extra["heapdump"]["key"]) == pod_pprof.body


@pytest.mark.parametrize(
    ("make", "options", "why"),
    [
        (string_table_bomb, {"analyze_timeout_ms": 60000}, "60 s / 512 MiB: killed (out of mem"),
        (slow_profile, {"analyze_timeout_ms": 500}, "0.5 s / 512 MiB: killed (still running"),
    ],
    ids=["memory", "time"],
)
def test_heapdump_reports_a_killed_analysis_and_goes_on(
    pod_pprof: _Served,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make: Any,
    options: dict[str, Any],
    why: str,
) -> None:
    pod_pprof.body = make()
    storage = LocalStorage(tmp_path / "store")
    action = _heapdump(pod_pprof.port, storage, **options)
    event = pod_event(Identity(namespace="shop", pod_name="web-1", container_name="app"))
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
            action.run(event)
    finally:
        action.close()
    assert time.monotonic() - start < 30
    key = event.extra["heapdump"]["key"]
    assert event.extra["pprof_error"].startswith(f"{key}: profile analysis exceeded {why}")
    assert "pprof_top" not in event.extra
    assert storage.read(key) == pod_pprof.body  # the dump is kept: it is evidence
    beside = json.loads(storage.read(key.removesuffix(".pb.gz") + ".json"))
    assert beside["pprof_error"] == event.extra["pprof_error"]
    assert any(
        "not analysed" in r.getMessage() and event.extra["pprof_error"] in r.getMessage()
        for r in caplog.records
    )


def test_heapdump_analysis_leaves_the_daemon_responsive(pod_pprof: _Served, tmp_path: Path) -> None:
    # The analysis burns its CPU in another process; the action thread only waits on pipes,
    # without the GIL, so the daemon's other threads (its epoll loop, its signal handling) keep
    # running while a profile is analysed.
    pod_pprof.body = slow_profile()
    storage = LocalStorage(tmp_path / "store")
    action = _heapdump(pod_pprof.port, storage, analyze_timeout_ms=1000)
    event = pod_event(Identity(namespace="shop", pod_name="web-1", container_name="app"))
    worker = threading.Thread(target=action.run, args=(event,))
    try:
        worker.start()
        assert worker.ident is not None
        clock = time.pthread_getcpuclockid(worker.ident)
        thread_cpu = longest = 0.0
        last = time.monotonic()
        while worker.is_alive():
            with contextlib.suppress(OSError):  # the thread may end between the two calls
                thread_cpu = time.clock_gettime(clock)
            time.sleep(0.005)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
        worker.join()
    finally:
        action.close()
    assert "still running after 1 s" in event.extra["pprof_error"]
    assert thread_cpu < 0.5  # of the 1 s the analysis ran
    assert longest < 1.0  # a busy machine's scheduling, not a GIL held for the analysis


def test_heapdump_passes_warnings_into_the_event(pod_pprof: _Served, tmp_path: Path) -> None:
    pod_pprof.body = _framed(r"(a)\1").raw()
    storage = LocalStorage(tmp_path / "store")
    action = _heapdump(pod_pprof.port, storage)
    event = pod_event(Identity(namespace="shop", pod_name="web-1", container_name="app"))
    try:
        action.run(event)
    finally:
        action.close()
    (warning,) = event.extra["pprof_warnings"]
    assert "profile field drop_frames" in warning
    assert event.extra["pprof_top"][0]["function"] == "runtime.mallocgc"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"analyze_timeout_ms": 0}, r"actions\[0\]\.analyze_timeout_ms: must be positive"),
        ({"analyze_max_mib": 16}, r"actions\[0\]\.analyze_max_mib: must be at least 64"),
    ],
)
def test_heapdump_analysis_limits_are_validated(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _heapdump(6060, LocalStorage(tmp_path), **options)


# --------------------------------------------------------------------------------------------
# fuzzing the decoder: a Profile or a PprofError, never anything else


def _seed() -> bytes:
    """A valid profile using every field the decoder reads."""
    b = ProfileBuilder((("alloc_space", "bytes"), ("inuse_space", "bytes")))
    exe = b.mapping("/usr/bin/server")
    b.msg.mapping[0].build_id = b.s("abc123")
    b.msg.default_sample_type = b.s("alloc_space")
    b.msg.drop_frames = b.s(r"runtime\..*")
    b.msg.keep_frames = b.s(r"runtime\.keep")
    b.msg.comment.append(b.s("a comment"))
    b.msg.period_type.type = b.s("space")
    b.msg.period_type.unit = b.s("bytes")
    b.msg.period = 524288
    b.msg.time_nanos = 1_700_000_000_000_000_000
    b.msg.duration_nanos = 10_000_000_000
    main = b.location("main.main", mapping_id=exe)
    inlined = b.location("app.decode", "app.parse", mapping_id=exe)
    b.sample([b.location("runtime.mallocgc"), inlined, main], 4096, 1024)
    b.sample([b.location(mapping_id=exe, address=0x42), main], 256, 256)
    b.sample([b.location("", mapping_id=exe), main], -10, 5)
    return b.raw()


SEED = _seed()


def _must_analyse_or_refuse(data: bytes) -> None:
    try:
        profile = load_profile(data, "fuzz")
    except PprofError as exc:
        refusal = str(exc)
    else:
        refusal = ""
    if refusal:
        assert refusal.startswith("fuzz: ")  # it names the input
        return
    for sort_cum in (False, True):
        result = top(profile, None, n=0, sort_cum=sort_cum, node_fraction=0.005)
        format_top(result)
        json.dumps(result.to_json())
        summarize_top(result)


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, what in edits:
        at = where % (len(out) + 1)
        if kind == 0:  # overwrite
            out[at : at + len(what)] = what
        elif kind == 1:  # insert
            out[at:at] = what
        elif kind == 2:  # delete
            del out[at : at + len(what) + 1]
        else:  # truncate
            del out[at:]
    return bytes(out)


_EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), gzip_magic=st.booleans())
def test_fuzz_random_bytes(data: bytes, gzip_magic: bool) -> None:
    _must_analyse_or_refuse(b"\x1f\x8b" + data if gzip_magic else data)


@settings(max_examples=200, deadline=None)
@given(edits=_EDITS, compress=st.sampled_from(["raw", "gzip", "gzip-then-edit"]))
def test_fuzz_mutated_profiles(edits: list[tuple[int, int, bytes]], compress: str) -> None:
    if compress == "raw":
        data = _mutate(SEED, edits)
    elif compress == "gzip":
        data = gzip.compress(_mutate(SEED, edits))
    else:
        data = _mutate(gzip.compress(SEED), edits)
    _must_analyse_or_refuse(data)


_INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
_ID = st.integers(1, 6)  # ids that exist, mostly: the bad ones are the other tests' business
_INDEX = st.integers(0, 6)  # in the string table, likewise


@settings(max_examples=200, deadline=None)
@given(
    strings=st.lists(st.binary(max_size=12), min_size=6, max_size=8),
    empty_first=st.sampled_from([True, True, True, False]),
    n_types=st.integers(1, 3),
    type_index=st.integers(0, 4),
    functions=st.lists(st.tuples(_ID, _INDEX, _INT64), max_size=6, unique_by=lambda f: f[0]),
    locations=st.lists(
        st.tuples(_ID, st.integers(0, 1), st.lists(_ID, max_size=4)),
        max_size=6,
        unique_by=lambda loc: loc[0],
    ),
    samples=st.lists(st.tuples(st.lists(_ID, max_size=6), st.lists(_INT64, max_size=3))),
    header=st.tuples(_INDEX, _INDEX, _INDEX, _INT64, _INT64, _INT64),
)
def test_fuzz_structured_profiles(
    strings: list[bytes],
    empty_first: bool,
    n_types: int,
    type_index: int,
    functions: list[tuple[int, int, int]],
    locations: list[tuple[int, int, list[int]]],
    samples: list[tuple[list[int], list[int]]],
    header: tuple[int, int, int, int, int, int],
) -> None:
    # Well-formed protobuf with arbitrary meaning: ids, indexes and values anywhere in range.
    pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")
    msg = pb2.Profile()
    msg.string_table.extend([b"", *strings] if empty_first else strings)
    for i in range(n_types):
        msg.sample_type.add(type=type_index + i, unit=type_index)
    for fid, name, start_line in functions:
        msg.function.add(id=fid, name=name, start_line=start_line)
    msg.mapping.add(id=1, filename=header[0])
    for lid, mapping_id, function_ids in locations:
        loc = msg.location.add(id=lid, mapping_id=mapping_id)
        for fid in function_ids:
            loc.line.add(function_id=fid)
    for location_ids, values in samples:
        msg.sample.add(location_id=location_ids, value=values)
    msg.drop_frames, msg.keep_frames, msg.default_sample_type = header[:3]
    msg.time_nanos, msg.duration_nanos, msg.period = header[3:]
    _must_analyse_or_refuse(bytes(msg.SerializeToString()))
