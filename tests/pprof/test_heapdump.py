"""The heapdump action against the real Go program, storing into a real LocalStorage."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pressured.actions.base import ActionContext
from pressured.actions.heapdump import HeapdumpAction, listening_ports
from pressured.errors import ActionError, ConfigError
from pressured.model import Identity
from pressured.pprof import load_profile, top
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import LEAK_FUNCTION, LeakyServer, pod_event
from tests.support.wait import wait_for

MIB = 1 << 20


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def _ctx(storage: LocalStorage, **kw: Any) -> ActionContext:
    return ActionContext(storage_factory=lambda: storage, **kw)


@pytest.fixture
def make_action() -> Iterator[Callable[..., HeapdumpAction]]:
    """HeapdumpAction(...), closed at teardown (its HTTP client holds pooled connections)."""
    made: list[HeapdumpAction] = []

    def make(
        options: dict[str, Any], ctx: ActionContext, where: str = "actions[0]"
    ) -> HeapdumpAction:
        action = HeapdumpAction(options, ctx, where)
        made.append(action)
        return action

    yield make
    for action in made:
        action.close()


def _pod(pod_ip: str | None = None) -> Identity:
    return Identity(namespace="shop", pod_name="web-1", container_name="app", pod_ip=pod_ip)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(root: Path) -> list[str]:
    """Every file under root, temporaries included: an abort must leave nothing behind."""
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


# --------------------------------------------------------------------------------------------


def test_dump_is_stored_with_event_json_and_top_functions(
    make_action: Callable[..., HeapdumpAction],
    leaky_server: LeakyServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    action = make_action({"port": leaky_server.port}, _ctx(storage), "actions[0]")
    event = pod_event(_pod(), extra={"pids": [leaky_server.pid]})
    with caplog.at_level(logging.INFO, logger="pressured.actions.heapdump"):
        action.run(event)

    keys = list(storage.list("heaps/"))
    assert len(keys) == 2, keys
    stem = rf"heaps/shop/web-1/\d{{8}}T\d{{6}}\.\d{{3}}Z-app-{leaky_server.pid}"
    assert re.fullmatch(stem + r"\.json", keys[0])
    assert re.fullmatch(stem + r"\.pb\.gz", keys[1])
    profile_key = keys[1]

    stored = load_profile(storage.read(profile_key), profile_key)
    assert top(stored).rows[0].function == LEAK_FUNCTION

    assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION
    assert len(event.extra["pprof_top"]) == 3
    assert event.extra["heapdump"]["key"] == profile_key
    assert event.extra["heapdump"]["url"] == leaky_server.url()
    assert event.extra["heapdump"]["bytes"] == len(storage.read(profile_key))

    beside = json.loads(storage.read(keys[0]))
    assert beside["pod_name"] == "web-1"
    assert beside["pprof_top"][0]["function"] == LEAK_FUNCTION
    assert beside["heapdump"]["key"] == profile_key

    line = next(r.getMessage() for r in caplog.records if "stored" in r.getMessage())
    assert profile_key in line
    assert LEAK_FUNCTION in line


def test_local_target_key_uses_cgroup_name(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action({"port": leaky_server.port, "analyze": False}, _ctx(storage))
    event = pod_event()
    action.run(event)
    keys = list(storage.list())
    assert [k for k in keys if k.endswith(".pb.gz")] == [event.extra["heapdump"]["key"]]
    assert re.fullmatch(
        r"heaps/local/cri-containerd-abc\.scope/\d{8}T\d{6}\.\d{3}Z-none-0\.pb\.gz",
        event.extra["heapdump"]["key"],
    )
    assert "pprof_top" not in event.extra  # analyze: false


def test_size_cap_aborts_and_stores_nothing(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action({"port": leaky_server.port, "max_bytes": 1024}, _ctx(storage))
    event = pod_event(_pod())
    with pytest.raises(ActionError, match=r"GET http://127\.0\.0\.1:\d+/debug/pprof/heap\?gc=1: "):
        action.run(event)
    assert _files(storage.root) == []
    assert "heapdump" not in event.extra


def test_cooldown_is_per_target(
    make_action: Callable[..., HeapdumpAction],
    leaky_server: LeakyServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    action = make_action({"port": leaky_server.port, "analyze": False}, _ctx(storage))
    action.run(pod_event(_pod()))
    assert len(list(storage.list())) == 2
    with caplog.at_level(logging.INFO, logger="pressured.actions.heapdump"):
        action.run(pod_event(_pod()))
    assert len(list(storage.list())) == 2
    assert any("cooldown_seconds 300" in r.getMessage() for r in caplog.records)
    other = Identity(namespace="shop", pod_name="web-2", container_name="app")
    action.run(pod_event(other, key="shop/web-2/app"))
    assert len(list(storage.list("heaps/shop/web-2/"))) == 2


@pytest.mark.parametrize("where", ["context", "event"])
def test_dry_run_does_no_http_and_stores_nothing(
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    port = _closed_port()  # any HTTP attempt would fail with "connection refused"
    ctx = _ctx(storage, dry_run=where == "context")
    action = make_action({"port": port, "goroutines": True}, ctx)
    with caplog.at_level(logging.INFO, logger="pressured.actions.heapdump"):
        action.run(pod_event(_pod(), dry_run=where == "event"))
    assert _files(storage.root) == []
    message = next(r.getMessage() for r in caplog.records if "dry run" in r.getMessage())
    assert f"http://127.0.0.1:{port}/debug/pprof/heap?gc=1" in message
    assert "heaps/shop/web-1/" in message


def test_unreachable_target_raises_with_the_url(
    make_action: Callable[..., HeapdumpAction], storage: LocalStorage
) -> None:
    port = _closed_port()
    action = make_action({"port": port, "timeout_ms": 2000}, _ctx(storage))
    with pytest.raises(ActionError, match=rf"GET http://127\.0\.0\.1:{port}/debug/pprof/heap"):
        action.run(pod_event(_pod()))
    assert _files(storage.root) == []


def test_http_error_raises_with_status(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action({"port": leaky_server.port, "path": "/nope"}, _ctx(storage))
    with pytest.raises(ActionError, match=rf":{leaky_server.port}/nope: HTTP 404"):
        action.run(pod_event(_pod()))
    assert _files(storage.root) == []


def test_reply_that_is_not_a_profile_is_stored_but_not_analysed(
    make_action: Callable[..., HeapdumpAction],
    leaky_server: LeakyServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    action = make_action({"port": leaky_server.port, "path": "/debug/pprof/cmdline"}, _ctx(storage))
    event = pod_event(_pod())
    with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
        action.run(event)
    assert "pprof_top" not in event.extra
    assert storage.exists(event.extra["heapdump"]["key"])
    assert any("not analysed" in r.getMessage() for r in caplog.records)


def test_goroutine_dump_is_stored_beside(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action(
        {"port": leaky_server.port, "goroutines": True, "analyze": False}, _ctx(storage)
    )
    event = pod_event(_pod())
    action.run(event)
    key = event.extra["heapdump"]["goroutines_key"]
    assert key == event.extra["heapdump"]["key"].removesuffix(".pb.gz") + ".goroutines.txt"
    text = storage.read(key).decode()
    assert "goroutine " in text
    assert "main.main()" in text


def test_severities_filter_events(
    make_action: Callable[..., HeapdumpAction], storage: LocalStorage
) -> None:
    action = make_action({"port": _closed_port()}, _ctx(storage))
    action.run(pod_event(_pod(), severity="warn"))  # default: critical only; no HTTP attempted
    assert _files(storage.root) == []
    warn_too = make_action({"port": _closed_port(), "severities": ["warn"]}, _ctx(storage))
    with pytest.raises(ActionError):
        warn_too.run(pod_event(_pod(), severity="warn"))


# --------------------------------------------------------------------------------------------
# annotations


def test_annotation_port_and_path_override_options(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action({"port": _closed_port(), "analyze": False}, _ctx(storage))
    event = pod_event(
        _pod(),
        annotations={
            "pressured.io/pprof-port": str(leaky_server.port),
            "pressured.io/pprof-path": "/debug/pprof/allocs",
        },
    )
    action.run(event)
    assert event.extra["heapdump"]["url"] == leaky_server.url("/debug/pprof/allocs")


def test_annotation_disables(
    make_action: Callable[..., HeapdumpAction], storage: LocalStorage
) -> None:
    action = make_action({"port": _closed_port()}, _ctx(storage))
    action.run(pod_event(_pod(), annotations={"pressured.io/pprof-enabled": "false"}))
    assert _files(storage.root) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pressured.io/pprof-port", "http"),
        ("pressured.io/pprof-port", "70000"),
        ("pressured.io/pprof-path", "debug/pprof/heap"),
        ("pressured.io/pprof-enabled", "maybe"),
    ],
)
def test_bad_annotation_warns_and_uses_the_option(
    make_action: Callable[..., HeapdumpAction],
    leaky_server: LeakyServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
) -> None:
    action = make_action({"port": leaky_server.port, "analyze": False}, _ctx(storage))
    event = pod_event(_pod(), annotations={name: value})
    with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
        action.run(event)
    assert event.extra["heapdump"]["url"] == leaky_server.url()
    assert any(name in r.getMessage() and repr(value) in r.getMessage() for r in caplog.records)


class Recorder:
    """A loopback HTTP server that records every request (path and Host header) and answers
    200 with a few bytes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, self.headers.get("Host", "")))
                self.send_response(200)
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"profile")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def _refusals(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and name in r.getMessage() and "refused" in r.getMessage()
    ]


@pytest.mark.parametrize(
    "value",
    [
        "6060@169.254.169.254:80",
        "{closed}@127.0.0.1:{recorder}",  # would reach the recorder if taken apart loosely
        "{recorder}/",
        "+{recorder}",  # int() takes these three
        "{recorder_underscored}",
        "{recorder_fullwidth}",
        "{recorder}.0",
    ],
)
def test_hostile_pprof_port_is_refused_and_nothing_is_fetched(
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    closed = _closed_port()
    port = recorder.port
    value = value.format(
        closed=closed,
        recorder=port,
        recorder_underscored=f"{port // 100}_{port % 100:02d}",
        recorder_fullwidth=str(port).translate({ord("0") + i: 0xFF10 + i for i in range(10)}),
    )
    action = make_action({"port": closed, "analyze": False, "timeout_ms": 2000}, _ctx(storage))
    event = pod_event(_pod(), annotations={"pressured.io/pprof-port": value})
    with (
        caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"),
        pytest.raises(ActionError, match=rf"GET http://127\.0\.0\.1:{closed}/debug/pprof/heap"),
    ):
        action.run(event)  # the option's port, where nothing listens
    assert recorder.requests == []
    assert _files(storage.root) == []
    [message] = _refusals(caplog, "pressured.io/pprof-port")
    assert repr(value) in message
    assert "not a port number" in message
    assert f"using port {closed}" in message
    assert event.extra["heapdump_refused"] == [message.removeprefix("heapdump: shop/web-1/app: ")]


@pytest.mark.parametrize(
    "value",
    ["//evil.example/", "//evil.example/debug/pprof/heap", "/@evil.example/", "/a\\b"],
)
def test_hostile_pprof_path_is_refused_and_only_the_option_is_fetched(
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    action = make_action({"port": recorder.port, "analyze": False}, _ctx(storage))
    event = pod_event(_pod(), annotations={"pressured.io/pprof-path": value})
    with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
        action.run(event)
    assert recorder.requests == [("/debug/pprof/heap?gc=1", f"127.0.0.1:{recorder.port}")]
    [message] = _refusals(caplog, "pressured.io/pprof-path")
    assert repr(value) in message
    assert "no '//', '@', backslash" in message
    assert "using path /debug/pprof/heap?gc=1" in message
    assert event.extra["heapdump_refused"] == [message.removeprefix("heapdump: shop/web-1/app: ")]
    stored = json.loads(storage.read(event.extra["heapdump"]["key"].replace(".pb.gz", ".json")))
    assert stored["heapdump_refused"] == event.extra["heapdump_refused"]


def test_a_huge_annotation_is_quoted_briefly(
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    action = make_action({"port": recorder.port, "analyze": False}, _ctx(storage))
    event = pod_event(_pod(), annotations={"pressured.io/pprof-port": "6" * (1 << 20)})
    with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
        action.run(event)
    [message] = _refusals(caplog, "pressured.io/pprof-port")
    assert len(message) < 500
    assert "characters)" in message
    assert event.extra["heapdump_refused"] == [message.removeprefix("heapdump: shop/web-1/app: ")]
    assert [path for path, _ in recorder.requests] == ["/debug/pprof/heap?gc=1"]


# --------------------------------------------------------------------------------------------
# where the target is


def test_node_mode_uses_the_pod_ip(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    action = make_action({"port": leaky_server.port, "analyze": False}, _ctx(storage, mode="node"))
    event = pod_event(_pod(pod_ip="127.0.0.1"))
    action.run(event)
    assert event.extra["heapdump"]["url"] == leaky_server.url()
    with pytest.raises(ActionError, match=r"no pod IP to reach in node mode \(pod shop/web-2\)"):
        action.run(pod_event(Identity(namespace="shop", pod_name="web-2"), key="shop/web-2/app"))


def test_discover_ports_finds_the_pprof_server(
    make_action: Callable[..., HeapdumpAction], leaky_server: LeakyServer, storage: LocalStorage
) -> None:
    closed = _closed_port()
    action = make_action({"port": closed, "discover_ports": True, "analyze": False}, _ctx(storage))
    event = pod_event(_pod(), extra={"pids": [leaky_server.pid]})
    action.run(event)
    assert event.extra["heapdump"]["url"] == leaky_server.url()


def test_listening_ports_of_a_real_process(leaky_server: LeakyServer) -> None:
    assert listening_ports("/proc", [leaky_server.pid]) == [leaky_server.port]


_TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


def _row(sl: int, local: str, remote: str, state: str, inode: int) -> str:
    # The layout of /proc/net/tcp (net/ipv4/tcp_ipv4.c get_tcp4_sock): inode is field 10.
    return (
        f"{sl:4d}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0"
        f"        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def _fake_proc(root: Path, pid: int, tcp: str, tcp6: str, inodes: list[int] | None) -> None:
    net = root / str(pid) / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(_TCP_HEADER + tcp)
    (net / "tcp6").write_text(_TCP_HEADER + tcp6)
    if inodes is not None:
        fd = root / str(pid) / "fd"
        fd.mkdir()
        for i, inode in enumerate(inodes):
            os.symlink(f"socket:[{inode}]", fd / str(i + 3))
        os.symlink("/dev/null", fd / "0")
        os.symlink("pipe:[777]", fd / "1")


_ANY6 = "0" * 32
_TCP = (
    _row(0, "00000000:17AC", "00000000:0000", "0A", 1001)  # 0.0.0.0:6060 LISTEN
    + _row(1, "0100007F:1F90", "00000000:0000", "0A", 1002)  # 127.0.0.1:8080, another process
    + _row(2, "0100007F:9C40", "0100007F:17AC", "01", 1003)  # ESTABLISHED to :6060
)
_TCP6 = _row(0, f"{_ANY6}:2382", f"{_ANY6}:0000", "0A", 1004)  # [::]:9090 LISTEN


def test_listening_ports_keeps_the_process_sockets(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 42, _TCP, _TCP6, inodes=[1001, 1003, 1004])
    assert listening_ports(str(tmp_path), [42]) == [6060, 9090]


def test_listening_ports_without_fd_access_takes_the_namespace(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 42, _TCP, "", inodes=None)
    assert listening_ports(str(tmp_path), [42, 43]) == [6060, 8080]  # 43 is gone: skipped


# --------------------------------------------------------------------------------------------
# validation at start


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 0}, r"actions\[2\]\.port: must be a TCP port 1\.\.65535 \(got 0\)"),
        ({"port": "6060"}, r"actions\[2\]\.port: expected int, got '6060'"),
        ({"path": "debug"}, r"actions\[2\]\.path: must start with '/'"),
        ({"severities": ["panic"]}, r"actions\[2\]\.severities\[0\]: must be one of"),
        ({"max_bytes": 0}, r"actions\[2\]\.max_bytes: must be positive"),
        ({"cooldown_seconds": -1}, r"actions\[2\]\.cooldown_seconds: must be >= 0"),
        ({"timeout_ms": 0}, r"actions\[2\]\.timeout_ms: must be positive"),
        ({"top_n": 0}, r"actions\[2\]\.top_n: must be at least 1"),
        ({"goroutines": "yes"}, r"actions\[2\]\.goroutines: expected bool"),
        ({"prot": 1}, r"actions\[2\]\.prot: unknown option for type 'heapdump'"),
    ],
)
def test_bad_options_fail_at_start(
    storage: LocalStorage, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        HeapdumpAction(options, _ctx(storage), "actions[2]")


# --------------------------------------------------------------------------------------------
# heap growth between two captures of one target


@pytest.fixture
def growing_server(leaky_bin: Path) -> Iterator[LeakyServer]:
    """The Go program leaking slowly (16 MiB/s up to 128 MiB): it grows between two captures."""
    proc = subprocess.Popen(
        [str(leaky_bin), "-port", "0", "-cap", "128", "-rate", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.match(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert match
        yield LeakyServer(proc, int(match.group(1)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _heap_inuse(server: LeakyServer) -> int:
    text = httpx.get(server.url("/debug/pprof/heap?debug=1"), timeout=5).text
    match = re.search(r"# HeapInuse = (\d+)", text)
    return int(match.group(1)) if match else 0


def _next_second() -> None:
    # Capture keys are stamped to the second: the second capture must not reuse the first's.
    start = time.strftime("%S", time.gmtime())
    wait_for(lambda: time.strftime("%S", time.gmtime()) != start, 5, "the next second")


def test_second_capture_carries_heap_growth(
    make_action: Callable[..., HeapdumpAction],
    growing_server: LeakyServer,
    storage: LocalStorage,
) -> None:
    action = make_action(
        {"port": growing_server.port, "severities": ["warn", "critical"]}, _ctx(storage)
    )
    warn = pod_event(_pod(), severity="warn")
    action.run(warn)
    assert "heap_growth_top" not in warn.extra  # nothing to compare with yet
    first_key = warn.extra["heapdump"]["key"]
    at_warn = _heap_inuse(growing_server)
    wait_for(lambda: _heap_inuse(growing_server) > at_warn + 8 * MIB, 30, "8 MiB more leak")
    _next_second()

    # critical after warn: captured although the cooldown (300 s) has not passed
    critical = pod_event(_pod(), severity="critical")
    action.run(critical)
    grown = critical.extra["heap_growth_top"]
    assert critical.extra["heap_growth_since"] == first_key
    assert grown[0]["function"] == LEAK_FUNCTION
    assert grown[0]["flat"] > 8 * MIB
    assert grown[0]["unit"] == "bytes"
    assert all(row["flat"] > 0 for row in grown)
    stored = json.loads(
        storage.read(critical.extra["heapdump"]["key"].removesuffix(".pb.gz") + ".json")
    )
    assert stored["heap_growth_top"][0]["function"] == LEAK_FUNCTION

    # another critical within the cooldown is not captured
    again = pod_event(_pod(), severity="critical")
    action.run(again)
    assert "heapdump" not in again.extra


def test_heap_growth_error_names_the_previous_capture(
    make_action: Callable[..., HeapdumpAction],
    leaky_server: LeakyServer,
    storage: LocalStorage,
) -> None:
    action = make_action({"port": leaky_server.port, "cooldown_seconds": 0}, _ctx(storage))
    first = pod_event(_pod())
    action.run(first)
    previous = first.extra["heapdump"]["key"]
    storage.remove(previous)  # gone (a retention policy, a person): the growth cannot be had
    _next_second()
    second = pod_event(_pod())
    action.run(second)
    assert second.extra["heapdump"]["key"] != previous
    assert second.extra["pprof_top"][0]["function"] == LEAK_FUNCTION  # the capture itself is fine
    assert "heap_growth_top" not in second.extra
    assert second.extra["heap_growth_error"].startswith(f"{previous}: ")
