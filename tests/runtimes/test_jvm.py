"""The heapdump action on a real HotSpot JVM (OpenJDK), run as another user than the daemon."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pressured.actions.heapdump import HeapdumpAction
from pressured.errors import ActionError, PprofError
from pressured.model import Identity, PressureEvent
from pressured.runtimes import hotspot, jvm
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import pod_event
from tests.runtimes.conftest import LEAK_CLASS, NOBODY, RECORD_BYTES

MiB = 1024 * 1024
RECORDS = 200_000


def _event(pid: int, *, limit: int = 1024 * MiB, usage: int = 100 * MiB) -> PressureEvent:
    event = pod_event(
        Identity(namespace="shop", pod_name="web-1", container_name="app"),
        extra={"pids": [pid]},
    )
    return dataclasses.replace(event, limit_bytes=limit, usage_bytes=usage)


def _leftovers(pid: int) -> list[str]:
    """Attach trigger files and heap dumps pressured may have left in the JVM's tree."""
    root = f"/proc/{pid}/root/tmp"
    return glob.glob(f"{root}/.attach_pid*") + glob.glob(f"{root}/pressured-*.hprof")


def test_jvm_as_another_user_histogram_on_top_and_full_dump(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = start_jvm(RECORDS)
    assert os.stat(f"/proc/{proc.pid}").st_uid == NOBODY != os.geteuid()
    action = make_action({"full_dump": "auto"})  # runtime: auto
    event = _event(proc.pid)
    with caplog.at_level(logging.INFO, logger="pressured.actions.heapdump"):
        action.run(event)

    top = event.extra["heap_top"]
    assert len(top) == 3
    assert top[0] == {
        "name": LEAK_CLASS,
        "bytes": RECORDS * RECORD_BYTES,
        "instances": RECORDS,
    }
    info = event.extra["heapdump"]
    assert info["runtime"] == "jvm" and info["pid"] == proc.pid
    histo = storage.read(info["key"]).decode()
    assert LEAK_CLASS in histo.splitlines()[2]  # the first row of the table
    assert histo.rstrip().splitlines()[-1].startswith("Total")
    # headroom 924 MiB > ~30 MiB of heap: the full dump was taken, streamed, removed inside
    assert "full_dump_skipped" not in event.extra
    hprof = storage.read(info["full_dump_key"])
    assert hprof.startswith(b"JAVA PROFILE 1.0.")
    assert len(hprof) == info["full_dump_bytes"] > RECORDS * RECORD_BYTES
    assert _leftovers(proc.pid) == []
    beside = json.loads(storage.read(info["key"].removesuffix(".histo.txt") + ".json"))
    assert beside["heap_top"][0]["name"] == LEAK_CLASS
    line = next(r.getMessage() for r in caplog.records if "stored" in r.getMessage())
    assert info["key"] in line and LEAK_CLASS in line
    assert proc.poll() is None  # the JVM goes on


def test_second_capture_names_the_classes_that_grew(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    proc = start_jvm(RECORDS)
    action = make_action({"full_dump": "never", "cooldown_seconds": 0})
    first = _event(proc.pid)
    action.run(first)
    assert "heap_growth_top" not in first.extra  # nothing to compare with yet
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("50000\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == f"retained {RECORDS + 50_000}"
    second = dataclasses.replace(_event(proc.pid), time=first.time + 2)
    action.run(second)
    grown = second.extra["heap_growth_top"]
    assert grown[0] == {
        "name": LEAK_CLASS,
        "bytes_grown": 50_000 * RECORD_BYTES,
        "instances_grown": 50_000,
        "bytes": (RECORDS + 50_000) * RECORD_BYTES,
    }
    assert second.extra["heap_growth_since"] == first.extra["heapdump"]["key"]


def test_jvm_in_its_own_pid_and_mount_namespace(
    start_contained_jvm: Callable[..., int],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    pid = start_contained_jvm(RECORDS)
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"^NSpid:\s+{pid}\s+1$", status, re.M), "the JVM should be pid 1 inside"
    assert os.stat(f"/proc/{pid}/root/tmp").st_dev != os.stat("/tmp").st_dev
    action = make_action({"runtime": "jvm", "full_dump": "always"})
    event = _event(pid)
    action.run(event)
    assert event.extra["heap_top"][0]["name"] == LEAK_CLASS
    assert storage.read(event.extra["heapdump"]["full_dump_key"]).startswith(b"JAVA PROFILE")
    # the socket is the JVM's namespace pid's, in its own /tmp; nothing left behind there
    assert Path(f"/proc/{pid}/root/tmp/.java_pid1").exists()
    assert not Path("/tmp/.java_pid1").exists()
    assert _leftovers(pid) == []


def test_full_dump_auto_skipped_without_headroom(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(RECORDS)
    action = make_action({"runtime": "jvm"})  # full_dump defaults to auto
    # 20 MiB of headroom for a heap of about 30 MiB: a dump could be what kills the pod
    event = _event(proc.pid, limit=120 * MiB, usage=100 * MiB)
    action.run(event)
    skipped = event.extra["full_dump_skipped"]
    assert "headroom 20.0 MiB" in skipped and "does not exceed the heap in use" in skipped
    assert event.extra["heap_top"][0]["name"] == LEAK_CLASS
    assert not [k for k in storage.list() if k.endswith(".hprof")]
    assert _leftovers(proc.pid) == []


def test_full_dump_never(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(10_000, uid=os.geteuid())  # the daemon's own user: no change needed
    action = make_action({"runtime": "jvm", "full_dump": "never"})
    event = _event(proc.pid)
    action.run(event)
    assert event.extra["full_dump_skipped"] == "full_dump is never"
    assert event.extra["heap_top"][0]["instances"] == 10_000
    assert not [k for k in storage.list() if k.endswith(".hprof")]


@pytest.mark.hostile
def test_not_a_jvm_is_refused_and_not_signalled(
    make_action: Callable[..., HeapdumpAction], storage: LocalStorage
) -> None:
    # SIGQUIT would end `sleep` (core dump): it must never be sent to what is not a JVM
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        action = make_action({"runtime": "jvm"})
        event = _event(sleeper.pid)
        with pytest.raises(ActionError, match=rf"none of pids \[{sleeper.pid}\] is a JVM"):
            action.run(event)
        assert "nothing signalled" in event.extra["heapdump_error"]
        assert sleeper.poll() is None
        assert list(storage.list()) == []
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.hostile
def test_jvm_that_does_not_answer_times_out_clearly(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(1000, "-XX:+DisableAttachMechanism")
    action = make_action({"runtime": "auto", "timeout_ms": 1500})
    event = _event(proc.pid)
    with pytest.raises(ActionError, match="DisableAttachMechanism") as raised:
        action.run(event)
    message = event.extra["heapdump_error"]
    assert message == str(raised.value)
    assert f"jvm pid {proc.pid}" in message and "within 1.5 s" in message
    assert proc.poll() is None  # SIGQUIT made it print its threads, nothing more
    assert _leftovers(proc.pid) == []
    assert list(storage.list()) == []


# ----------------------------------------------------------------- a truncated histogram


@pytest.fixture
def real_histogram(start_jvm: Callable[..., subprocess.Popen[str]], tmp_path: Path) -> str:
    proc = start_jvm(5000)
    storage = LocalStorage(tmp_path / "h")
    options = jvm.CaptureOptions(timeout_s=10, max_bytes=16 * MiB, full_dump="never")
    cap = jvm.capture(jvm.Target(proc.pid), storage, "h/x", options)
    return storage.read(cap.key).decode()


def test_parse_histogram_of_a_real_jvm_and_cut_ones(real_histogram: str) -> None:
    histogram = jvm.parse_histogram(real_histogram, "h")
    assert histogram.rows[0].name == LEAK_CLASS and histogram.rows[0].instances == 5000
    assert histogram.total_bytes == sum(r.bytes for r in histogram.rows)
    lines = real_histogram.splitlines()
    cut = "\n".join(lines[: len(lines) // 2])
    with pytest.raises(PprofError, match=r"^h: truncated class histogram: no Total line after"):
        jvm.parse_histogram(cut, "h")
    with pytest.raises(PprofError, match="not a class histogram"):
        jvm.parse_histogram("Unknown diagnostic command\n", "h")
    garbled = real_histogram.replace("   3:", "   7:", 1)
    with pytest.raises(PprofError, match="malformed row 3"):
        jvm.parse_histogram(garbled, "h")


class _FakeAttachListener:
    """Named fake: a UNIX socket at the JVM's attach path that answers like HotSpot would, but
    with a histogram cut short (what a JVM dying mid-reply sends). A real JVM's reply cannot
    be cut on demand; everything else in the path (detection, helper, identity) is real."""

    def __init__(self, path: str, reply: bytes, *, stall: bool = False) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        os.chmod(path, 0o666)
        self.server.listen(1)
        self.path = path
        self.reply = reply
        self.request = b""
        self.released = threading.Event()
        self.stall = stall
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while not self.request.endswith(b"\0\0\0"):
                self.request += conn.recv(4096)
            conn.sendall(self.reply)
            if self.stall:  # a JVM hung mid-reply: the connection stays open, silent
                self.released.wait(60)

    def close(self) -> None:
        self.released.set()
        self.server.close()
        self.thread.join(5)
        os.unlink(self.path)


@pytest.fixture
def fake_listener_for() -> Iterator[Callable[..., _FakeAttachListener]]:
    made: list[_FakeAttachListener] = []

    def make(pid: int, reply: bytes, stall: bool = False) -> _FakeAttachListener:
        listener = _FakeAttachListener(hotspot.socket_path("/proc", pid, pid), reply, stall=stall)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.mark.hostile
def test_jvm_that_stalls_mid_reply_times_out_clearly(
    start_jvm: Callable[..., subprocess.Popen[str]],
    real_histogram: str,
    fake_listener_for: Callable[..., _FakeAttachListener],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(1000, uid=os.geteuid())
    fake_listener_for(proc.pid, b"0\n" + real_histogram[:200].encode(), stall=True)
    action = make_action({"runtime": "jvm", "full_dump": "never", "timeout_ms": 1000})
    event = _event(proc.pid)
    with pytest.raises(ActionError) as raised:
        action.run(event)
    message = event.extra["heapdump_error"]
    assert message == str(raised.value)
    assert f"jvm pid {proc.pid}" in message
    assert "did not finish 'GC.class_histogram' within 1 s" in message
    assert list(storage.list()) == []
    assert proc.poll() is None


@pytest.mark.hostile
def test_truncated_histogram_is_stored_and_reported(
    start_jvm: Callable[..., subprocess.Popen[str]],
    real_histogram: str,
    fake_listener_for: Callable[..., _FakeAttachListener],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = start_jvm(1000, uid=os.geteuid())
    cut = real_histogram[: len(real_histogram) // 2].encode()
    listener = fake_listener_for(proc.pid, b"0\n" + cut)
    action = make_action({"runtime": "jvm", "full_dump": "always"})
    event = _event(proc.pid)
    with caplog.at_level(logging.WARNING, logger="pressured.actions.heapdump"):
        action.run(event)  # stored, not analysed: no exception
    assert listener.request == b"1\0jcmd\0GC.class_histogram\0\0\0"
    error = event.extra["heap_top_error"]
    assert "truncated class histogram" in error and f"JVM pid {proc.pid}" in error
    assert "heap_top" not in event.extra
    assert "histogram was not usable" in event.extra["full_dump_skipped"]
    assert storage.read(event.extra["heapdump"]["key"]) == cut
    assert any("truncated class histogram" in r.getMessage() for r in caplog.records)


@pytest.mark.hostile
def test_attach_error_reply_is_reported(
    start_jvm: Callable[..., subprocess.Popen[str]],
    fake_listener_for: Callable[..., _FakeAttachListener],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(1000, uid=os.geteuid())
    fake_listener_for(proc.pid, b"-1\njava.lang.IllegalArgumentException: Unknown command\n")
    action = make_action({"runtime": "jvm"})
    event = _event(proc.pid)
    with pytest.raises(ActionError, match=r"the JVM answered error -1: .*Unknown command"):
        action.run(event)
    assert "GC.class_histogram" in event.extra["heapdump_error"]
    assert list(storage.list()) == []  # nothing half-written


@pytest.mark.hostile
def test_stale_attach_socket_of_an_earlier_jvm_is_replaced(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
) -> None:
    # a restarted container's pid 1 finds its predecessor's socket on a /tmp volume
    proc = start_jvm(RECORDS)
    path = hotspot.socket_path("/proc", proc.pid, proc.pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # closed without unlinking: nobody listens there
    os.chown(path, NOBODY, NOBODY)
    stale = os.stat(path).st_ino
    action = make_action({"runtime": "jvm", "full_dump": "never"})
    event = _event(proc.pid)
    action.run(event)
    assert event.extra["heap_top"][0]["name"] == LEAK_CLASS
    assert os.stat(path).st_ino != stale


@pytest.mark.hostile
def test_histogram_past_max_bytes_is_aborted(
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(1000)
    action = make_action({"runtime": "jvm", "max_bytes": 2048})  # a histogram is ~20 KB
    event = _event(proc.pid)
    with pytest.raises(ActionError, match="more than max_bytes 2048; aborted"):
        action.run(event)
    assert "GC.class_histogram" in event.extra["heapdump_error"]
    assert list(storage.list()) == []
    assert proc.poll() is None


@pytest.mark.hostile
def test_attach_socket_closed_without_a_reply(
    start_jvm: Callable[..., subprocess.Popen[str]],
    fake_listener_for: Callable[..., _FakeAttachListener],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    proc = start_jvm(1000, uid=os.geteuid())
    fake_listener_for(proc.pid, b"")
    action = make_action({"runtime": "jvm"})
    event = _event(proc.pid)
    with pytest.raises(ActionError, match="closed the attach socket without a reply"):
        action.run(event)
    assert list(storage.list()) == []


# ------------------------------------------------------ what a hostile container may plant


class _HostSocket:
    """A listening socket on this host's /tmp that records whether anyone connected."""

    def __init__(self, path: str) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.server.setblocking(False)
        self.path = path

    def connected(self) -> bool:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.server.close()
        os.unlink(self.path)


@pytest.mark.hostile
def test_symlinked_socket_in_the_container_resolves_inside_it(
    start_contained_jvm: Callable[..., int],
    make_action: Callable[..., HeapdumpAction],
    tmp_path: Path,
) -> None:
    # the container points its .java_pid1 at an absolute path that, resolved from the host
    # (through /proc/PID/root), is a socket of the host's: pressured must never reach it
    pid = start_contained_jvm(RECORDS)
    host = _HostSocket(f"/tmp/pressured-host-{os.getpid()}-{pid}.sock")
    try:
        planted = f"/proc/{pid}/root/tmp/.java_pid1"
        os.symlink(host.path, planted)
        os.lchown(planted, NOBODY, NOBODY)  # the JVM's, so its listener may replace it
        action = make_action({"runtime": "jvm", "full_dump": "never"})
        event = _event(pid)
        action.run(event)
        assert event.extra["heap_top"][0]["name"] == LEAK_CLASS
        assert not host.connected()
        assert not os.path.islink(planted)  # the JVM's own socket took its place
    finally:
        host.close()


def test_helper_that_may_not_enter_uses_proc_root_as_the_jvm_user(
    start_contained_jvm: Callable[..., int],
) -> None:
    # a daemon without root runs the helper as the JVM's own user: no setns, /proc/PID/root
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} that the user nobody may run")
    pid = start_contained_jvm(1000)
    source = Path(hotspot.__file__).read_text()
    helper = [python, "-I", "-S", "-c", source, "--as", str(NOBODY), str(NOBODY)]
    done = subprocess.run(
        [*helper, "--jvm", "/proc", str(pid), "1", "jcmd", "10", "GC.class_histogram"],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    code, _, body = done.stdout.decode().partition("\n")
    assert code == "0"
    assert jvm.parse_histogram(body, "h").rows[0].name == LEAK_CLASS
