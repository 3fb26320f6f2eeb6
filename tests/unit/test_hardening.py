"""Nothing blinds the watcher: hostile or careless input must not crash, stall or bloat it.

Each case here is something a user or a tenant could do (a hook that never stops writing, a
config built to explode, a path to the wrong kind of file, connections left open) and checks
that the daemon stays up, stays small and says clearly what was wrong. Everything is real:
real commands, real files, real sockets, real `pressured` processes.

Sections:
  exec action        output and time of a command are bounded
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.exec import OUTPUT_CAP, ExecAction, run_command
from pressured.errors import ActionError
from tests.unit.actions.conftest import pressure

MiB = 1 << 20


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
