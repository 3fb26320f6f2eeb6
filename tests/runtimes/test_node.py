"""The heapdump action on a real Node.js process: the inspector, a sampling heap profile as
profile.proto, in this network namespace and in a namespace of the process's own."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pressured.actions.heapdump import HeapdumpAction
from pressured.cli import app
from pressured.errors import ActionError, PprofError
from pressured.kernel.procfs import listening_ports, namespace_pids
from pressured.model import Identity, PressureEvent
from pressured.pprof import load_profile, top
from pressured.runtimes.node import to_pprof
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import pod_event
from tests.runtimes.conftest import LEAK_FUNCTION, child_pid, free_port

_IDENT = Identity(namespace="shop", pod_name="web-1", container_name="app")


def _event(pid: int) -> PressureEvent:
    return pod_event(_IDENT, extra={"pids": [pid]})


def _inspector_open(pid: int, port: int) -> bool:
    # /proc/PID/net/tcp is the table of the process's own network namespace
    return port in listening_ports("/proc", [pid])


def test_node_leak_on_top_and_inspector_closed_after(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = start_node(f"--inspect-port={port}")  # where SIGUSR1 opens it
    assert not _inspector_open(proc.pid, port)
    action = make_action({"inspector_port": port, "sample_seconds": 1})  # runtime: auto
    event = _event(proc.pid)
    action.run(event)

    assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION, event.extra["pprof_top"]
    assert event.extra["pprof_top"][0]["sample_type"] == "space"
    info = event.extra["heapdump"]
    assert info["runtime"] == "node" and info["pid"] == proc.pid
    data = storage.read(info["key"])
    assert info["key"].endswith(".pb.gz") and data[:2] == b"\x1f\x8b"
    assert top(load_profile(data, info["key"])).rows[0].function == LEAK_FUNCTION
    # the CLI reads it as it reads a Go heap profile
    path = tmp_path / "node.pb.gz"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["pprof", "top", str(path), "-n", "3"])
    assert result.exit_code == 0, result.output
    assert LEAK_FUNCTION in result.output.splitlines()[-3]
    beside = json.loads(storage.read(info["key"].removesuffix(".pb.gz") + ".json"))
    assert beside["pprof_top"][0]["function"] == LEAK_FUNCTION
    # pressured opened the inspector, so it closed it; the program goes on
    assert not _inspector_open(proc.pid, port)
    assert proc.poll() is None


def test_repeated_captures_open_and_close_the_inspector_each_time(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    # closing the inspector from inside pressured's own session crashed Node.js 20 now and
    # then (SIGSEGV): it is closed from a timer once the session is gone
    port = free_port()
    proc = start_node(f"--inspect-port={port}")
    action = make_action({"inspector_port": port, "sample_seconds": 0.5, "cooldown_seconds": 0})
    for _ in range(4):
        event = _event(proc.pid)
        action.run(event)
        assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION
        assert not _inspector_open(proc.pid, port)
        assert proc.poll() is None


def test_warn_then_critical_both_captured_each_with_its_window_growth(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    # the default cooldown (300 s) holds back a repeat, not a critical after a warn; on Node.js
    # a capture's growth is its own sampling window (what it added and still holds)
    port = free_port()
    proc = start_node(f"--inspect-port={port}")
    action = make_action(
        {"inspector_port": port, "sample_seconds": 0.5, "severities": ["warn", "critical"]}
    )
    warn = pod_event(_IDENT, severity="warn", extra={"pids": [proc.pid]})
    action.run(warn)
    critical = pod_event(_IDENT, severity="critical", extra={"pids": [proc.pid]})
    action.run(critical)
    for event in (warn, critical):
        grown = event.extra["heap_growth_top"]
        assert grown[0]["function"] == LEAK_FUNCTION, grown
        assert all(row["flat"] > 0 for row in grown)
        assert event.extra["heap_growth_window_seconds"] == 0.5
    assert critical.extra["heapdump"]["key"] != warn.extra["heapdump"]["key"]
    again = pod_event(_IDENT, severity="critical", extra={"pids": [proc.pid]})
    action.run(again)  # within the cooldown, and no escalation: not captured
    assert "heapdump" not in again.extra


def test_node_in_its_own_network_namespace_through_the_helper(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    # 9229 on the process's own loopback, unreachable from here: as in node mode
    proc = start_node(netns=True)
    action = make_action({"runtime": "node", "sample_seconds": 1})
    event = _event(proc.pid)
    action.run(event)
    assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION
    assert storage.exists(event.extra["heapdump"]["key"])
    assert not _inspector_open(proc.pid, 9229)
    assert proc.poll() is None


def test_node_as_pid_1_of_its_own_namespaces(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    pid = child_pid(start_node(pidns=True))
    assert namespace_pids(pid) == [str(pid), "1"]  # the inspector's process.pid is 1
    action = make_action({"runtime": "auto", "sample_seconds": 1})
    event = _event(pid)
    action.run(event)
    assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION
    assert not _inspector_open(pid, 9229)


def test_inspector_already_open_is_left_open(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    port = free_port()
    proc = start_node(f"--inspect=127.0.0.1:{port}")
    action = make_action({"runtime": "node", "inspector_port": port, "sample_seconds": 1})
    event = _event(proc.pid)
    action.run(event)
    assert event.extra["pprof_top"][0]["function"] == LEAK_FUNCTION
    assert _inspector_open(proc.pid, port)  # the program's own: not pressured's to close


@pytest.mark.hostile
def test_closed_inspector_is_a_clear_error(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    opens_on, asked = free_port(), free_port()
    proc = start_node(f"--inspect-port={opens_on}")  # nothing will ever listen on `asked`
    action = make_action(
        {"runtime": "node", "inspector_port": asked, "timeout_ms": 1000, "sample_seconds": 1}
    )
    event = _event(proc.pid)
    with pytest.raises(ActionError, match=rf"127\.0\.0\.1:{asked}: not open 1 s after SIGUSR1"):
        action.run(event)
    assert f"node pid {proc.pid}" in event.extra["heapdump_error"]
    assert proc.poll() is None
    assert list(storage.list()) == []


@pytest.mark.hostile
def test_inspector_of_another_process_is_refused(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    port = free_port()
    start_node(f"--inspect=127.0.0.1:{port}")
    other = start_node()
    action = make_action({"runtime": "node", "inspector_port": port, "sample_seconds": 1})
    event = _event(other.pid)
    with pytest.raises(ActionError, match=rf"belongs to pid \d+, not {other.pid}"):
        action.run(event)


@pytest.mark.hostile
def test_not_a_node_process_is_refused_and_not_signalled(
    make_action: Callable[..., HeapdumpAction],
) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])  # SIGUSR1 would end it
    try:
        action = make_action({"runtime": "node", "inspector_port": free_port()})
        event = _event(sleeper.pid)
        with pytest.raises(ActionError, match=r"is a Node\.js process.*nothing signalled"):
            action.run(event)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------ the conversion, on bad input


def _frame(name: str, url: str = "file:///app.js", line: int = 3) -> dict[str, object]:
    return {"functionName": name, "scriptId": "1", "url": url, "lineNumber": line}


def test_to_pprof_keeps_stacks_sizes_and_names() -> None:
    leaf = {"callFrame": _frame(""), "selfSize": 300, "id": 3, "children": []}
    mid = {"callFrame": _frame("handler"), "selfSize": 100, "id": 2, "children": [leaf]}
    head = {"callFrame": _frame("(root)", "", -1), "selfSize": 0, "id": 1, "children": [mid]}
    samples = [{"size": 300, "nodeId": 3, "ordinal": 1}, {"size": 100, "nodeId": 2, "ordinal": 2}]
    raw = to_pprof({"head": head, "samples": samples}, "t", 32768)
    rows = {r.function: r for r in top(load_profile(gzip.compress(raw), "t")).rows}
    assert rows["(anonymous)"].flat == 300 and rows["(anonymous)"].cum == 300
    assert rows["handler"].flat == 100 and rows["handler"].cum == 400
    assert "(root)" not in rows


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({}, "has no head node"),
        ({"head": {"selfSize": 1}}, "a node without a callFrame"),
        ({"head": {"callFrame": _frame("f"), "selfSize": -5}}, "malformed node"),
        ({"head": {"callFrame": _frame("f"), "selfSize": "9"}}, "malformed node"),
        ({"head": {"callFrame": _frame("f"), "children": [7]}}, "malformed child node"),
    ],
)
def test_to_pprof_refuses_what_is_not_a_sampling_profile(
    profile: dict[str, object], message: str
) -> None:
    with pytest.raises(PprofError, match=rf"^Node\.js pid 9: .*{message}"):
        to_pprof(profile, "Node.js pid 9", 32768)


@pytest.mark.hostile
def test_to_pprof_bounds_the_stack_depth() -> None:
    node: dict[str, object] = {"callFrame": _frame("leaf"), "selfSize": 8, "children": []}
    for i in range(5000):
        node = {"callFrame": _frame(f"f{i}"), "selfSize": 0, "children": [node]}
    with pytest.raises(PprofError, match="deeper than 4096 frames"):
        to_pprof({"head": node}, "t", 32768)


# ------------------------------------------------- an inspector port answering nonsense


class _FakeInspector(BaseHTTPRequestHandler):
    """Named fake: an HTTP server on the inspector port answering /json/list with what a
    real inspector never sends (a hostile or broken program can hold that port)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", r"/json/list: not JSON"),
        (
            b'[{"webSocketDebuggerUrl": "ws://198.51.100.7:9229/x"}]',
            r"names no webSocketDebuggerUrl on that port: \[\{'webSocketDebuggerUrl'",
        ),
        (b'{"a": 1}', r"names no webSocketDebuggerUrl on that port"),
    ],
)
def test_inspector_list_that_is_not_one_is_refused(
    start_node: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    body: bytes,
    message: str,
) -> None:
    proc = start_node()
    handler = type("Handler", (_FakeInspector,), {"body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        action = make_action({"runtime": "node", "inspector_port": port, "timeout_ms": 2000})
        event = _event(proc.pid)
        with pytest.raises(ActionError, match=message):
            action.run(event)
        assert f"127.0.0.1:{port}" in event.extra["heapdump_error"]
        assert list(storage.list()) == []
        assert proc.poll() is None
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
