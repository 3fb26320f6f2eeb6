"""Profiles written by an adversary: the pod's owner serves /debug/pprof/heap.

Each must give an answer (go tool pprof's, when it has one) or a PprofError, within a bound,
and never take the calling process down with it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pressured.errors import PprofError
from pressured.pprof import format_top, load_profile, top
from pressured.pprof.goregexp import compile_go
from tests.pprof.conftest import ProfileBuilder, go_pprof_text

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
