"""Real runtimes for the heap capture tests: a leaking Java program and a leaking Node.js script.

LeakyJvm (fixtures/LeakyJvm.java, built once with the machine's javac) retains N objects of
LeakyJvm$LeakedRecord (144 bytes each) and waits; it runs as the unprivileged user ``nobody``
so that capture must take on the JVM's uid and gid. leaky.js retains small objects allocated
in ``leakRecords`` every 20 ms. Without javac/java or node (scripts/bootstrap --dev installs
them) these tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.heapdump import HeapdumpAction
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import go_env, leaky_bin  # noqa: F401 - fixtures for test_detect

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEAK_CLASS = "LeakyJvm$LeakedRecord"
RECORD_BYTES = 144  # 12-byte header, 4 padding, 16 longs (compressed class pointers)
LEAK_FUNCTION = "leakRecords"
NOBODY = 65534


@pytest.fixture(scope="session")
def jvm_classes() -> Iterator[Path]:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (Debian package openjdk-17-jdk-headless; scripts/bootstrap --dev)")
    # a directory the JVM's user (nobody) can read: pytest's own tmp is root's alone
    out = Path(tempfile.mkdtemp(prefix="pressured-jvm-"))
    out.chmod(0o755)
    subprocess.run(
        ["javac", "-d", str(out), str(FIXTURES / "LeakyJvm.java")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for path in out.iterdir():
        path.chmod(0o644)
    yield out
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def start_jvm(jvm_classes: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """start_jvm(records, *flags, uid=NOBODY): a LeakyJvm that has retained its records."""
    started: list[subprocess.Popen[str]] = []

    def start(records: int = 200_000, *flags: str, uid: int = NOBODY) -> subprocess.Popen[str]:
        ids: dict[str, Any] = {}
        if uid != os.geteuid():
            _need_root("to run the JVM as another user")
            ids = {"user": uid, "group": uid, "extra_groups": []}
        argv = ["java", "-Xmx256m", "-XX:+UseSerialGC", *flags, "-cp", str(jvm_classes)]
        proc = subprocess.Popen(
            [*argv, "LeakyJvm", str(records)],
            cwd=jvm_classes,  # not writable by nobody: the attach file goes to /tmp then
            stdin=subprocess.PIPE,  # a number written there: retain that many more
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            **ids,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("retained "), f"LeakyJvm did not start: {line!r}"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start_contained_jvm(jvm_classes: Path) -> Iterator[Callable[..., int]]:
    """start_contained_jvm(records): the host pid of a LeakyJvm run as nobody in a container
    shape: its own pid namespace (it is pid 1 there) and mount namespace with a /tmp of its
    own (a tmpfs), so its attach files are reachable only through /proc/PID/root."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("no unshare/setpriv (util-linux) for a contained JVM")
    _need_root("for namespaces of the JVM's own")
    started: list[tuple[subprocess.Popen[str], int]] = []

    def start(records: int = 200_000) -> int:
        # the classes are copied into the new /tmp (the JVM opens its class path by name);
        # its working directory /tmp/app is root's: the attach file goes to its /tmp
        script = (
            f"mount -t tmpfs -o mode=1777 tmpfs /mnt && cp -r {jvm_classes} /mnt/app"
            " && mount --move /mnt /tmp && cd /tmp/app && exec setpriv "
            f"--reuid={NOBODY} --regid={NOBODY} --clear-groups java -Xmx256m -XX:+UseSerialGC "
            f"-cp /tmp/app LeakyJvm {records}"
        )
        proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("retained "), f"contained LeakyJvm did not start: {line!r}"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        started.append((proc, int(children[0])))
        return int(children[0])

    yield start
    for proc, pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: the others go with it
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start_node() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """start_node(*node_flags, netns=False, pidns=False): leaky.js running, leaking; netns: in
    a network namespace of its own (lo up); pidns: and a pid namespace, where it is pid 1 (the
    returned process is then unshare, its parent: see ``child_pid``)."""
    if shutil.which("node") is None:
        pytest.skip("no Node.js (Debian package nodejs; scripts/bootstrap --dev)")
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str, netns: bool = False, pidns: bool = False) -> subprocess.Popen[str]:
        argv = ["node", *flags, str(FIXTURES / "leaky.js"), "512"]
        if netns or pidns:
            if shutil.which("unshare") is None or shutil.which("ip") is None:
                pytest.skip("no unshare/ip (util-linux, iproute2) for a network namespace")
            _need_root("for namespaces of the program's own")
            spaces = ["--net", "--pid", "--fork"] if pidns else ["--net"]
            script = 'ip link set lo up && exec "$@"'
            argv = ["unshare", *spaces, "sh", "-c", script, "sh", *argv]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready pid"), f"leaky.js did not start: {line!r}"
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(AssertionError, OSError):
            os.kill(child_pid(proc), signal.SIGKILL)  # pid 1 of its own namespace, if any
        proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def make_action(storage: LocalStorage) -> Iterator[Callable[..., HeapdumpAction]]:
    made: list[HeapdumpAction] = []

    def make(options: dict[str, Any], **ctx: Any) -> HeapdumpAction:
        action = HeapdumpAction(
            options, ActionContext(storage_factory=lambda: storage, **ctx), "actions[0]"
        )
        made.append(action)
        return action

    yield make
    for action in made:
        action.close()


def _need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root {why} (and to take on its user when capturing)")


def child_pid(proc: subprocess.Popen[str]) -> int:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
