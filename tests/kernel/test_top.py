"""`pressured top` in a real terminal: tmux runs it against a real daemon watching real
cgroups; keys go in with send-keys and the screen comes back with capture-pane.

tmux runs on a server of its own (-S, a socket in the test's directory), so nothing of a user's
tmux is touched, and the server is killed at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cgroups import Child, leaker_argv
from tests.support.daemon import running
from tests.support.wait import wait_for

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


class Terminal:
    """One tmux session on a private server, WIDTH x HEIGHT."""

    WIDTH, HEIGHT = 200, 50

    def __init__(self, tmux: str, socket: Path, name: str) -> None:
        self.tmux = tmux
        self.socket = str(socket)
        self.session = name

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tmux, "-S", self.socket, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def start(self, command: str) -> None:
        done = self._run(
            "new-session", "-d", "-s", self.session,
            "-x", str(self.WIDTH), "-y", str(self.HEIGHT), command,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def keys(self, *keys: str) -> None:
        done = self._run("send-keys", "-t", self.session, *keys)
        assert done.returncode == 0, done.stderr

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.session).stdout

    def table_rows(self) -> list[str]:
        return [line for line in self.screen().splitlines() if line.startswith("│")]

    def close(self) -> None:
        self._run("kill-server")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed: scripts/bootstrap --dev installs it")
    term = Terminal(tmux, tmp_path / "tmux.sock", f"pressured-top-{os.getpid()}")
    try:
        yield term
    finally:
        term.close()


def test_top_follows_the_daemon_and_answers_keys(
    make_cgroup: Callable[[int | None], Child], terminal: Terminal, tmp_path: Path
) -> None:
    leaky, calm = make_cgroup(128 * MiB), make_cgroup(256 * MiB)
    leaky_name, calm_name = os.path.basename(leaky.path), os.path.basename(calm.path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "thresholds: {warn_percent: 50, critical_percent: 95, metric: usage}\n"
        "actions: [{type: log}]\n"
    )
    exited = tmp_path / "exited"
    args = ["run", "-c", str(cfg), "--cgroup", leaky.path, "--cgroup", calm.path]
    with running([*args, "--metrics-port", "0"]) as daemon:
        port = daemon.wait_for_log(r"metrics on http://[^:]+:(\d+)/metrics").group(1)
        # COLUMNS/LINES (pytest sets them) would override the pane's size for rich
        top = shlex.join(
            ["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "pressured", "top",
             "--url", f"http://127.0.0.1:{port}"]
        )  # fmt: skip
        terminal.start(f"{top}; echo $? > {shlex.quote(str(exited))}")

        def rows_named(name: str) -> list[str]:
            return [row for row in terminal.table_rows() if name in row]

        wait_for(
            lambda: rows_named(leaky_name) and rows_named(calm_name),
            30,
            f"both targets on the screen; it shows:\n{terminal.screen()}",
        )
        assert "sort: headroom" in terminal.screen()
        # the least headroom first: the 128 MiB cgroup
        assert leaky_name in terminal.table_rows()[0]

        # a leak past warn (50% of 128 MiB) wakes the daemon; the view follows, with no timer
        leaky.spawn(leaker_argv("--rate-mib", "32", "--max-mib", "80", "--hold"))
        wait_for(
            lambda: any("warn" in row for row in rows_named(leaky_name)),
            30,
            "the leaking target shown at warn",
        )
        wait_for(
            lambda: any(
                "warn" in line and leaky_name in line
                for line in terminal.screen().split("last events:", 1)[-1].splitlines()
            ),
            10,
            "the warn event among the last events",
        )
        bar = rows_named(leaky_name)[0]
        assert "#" in bar, bar

        # / filters by name: only the calm target is left in the table
        terminal.keys("/")
        terminal.keys("-l", calm_name)
        terminal.keys("Enter")
        wait_for(lambda: f"filter: {calm_name}" in terminal.screen(), 10, "the filter shown")
        wait_for(lambda: not rows_named(leaky_name), 10, "the leaking target filtered out")
        assert rows_named(calm_name)
        terminal.keys("c")
        wait_for(lambda: rows_named(leaky_name), 10, "the filter cleared")

        # s: the next sort key
        terminal.keys("s")
        wait_for(lambda: "sort: percent" in terminal.screen(), 10, "sort by usage percent")
        assert leaky_name in terminal.table_rows()[0]
        terminal.keys("r")
        wait_for(lambda: "(reversed)" in terminal.screen(), 10, "reversed order")
        assert calm_name in terminal.table_rows()[0]

        terminal.keys("q")
        wait_for(exited.exists, 10, "top to quit on q")
        assert exited.read_text().strip() == "0"
