"""`pressured pprof diff` and pressured.pprof.diff against `go tool pprof -top -base`, on two
real heap profiles of the Go program (the same run, before and after more of its leak)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pressured.errors import PprofError
from pressured.pprof import format_top
from pressured.pprof.cli import pprof_app
from pressured.pprof.diff import diff, load_diff
from pressured.pprof.growth import heap_growth_top
from tests.pprof.conftest import (
    HEAP_TYPES,
    LEAK_FUNCTION,
    ProfileBuilder,
    ProfilePair,
    go_pprof_rows,
    go_pprof_text,
)

MIB = 1 << 20


def _diff(base: Path, new: Path, *args: object, **kw: object) -> object:
    b, n = load_diff(base.read_bytes(), str(base), new.read_bytes(), str(new))
    return diff(b, n, *args, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("sample_index", HEAP_TYPES)
@pytest.mark.parametrize(
    ("reverse", "sort_cum"), [(False, False), (True, True)], ids=["grown-flat", "shrunk-cum"]
)
def test_flat_and_cum_equal_go_tool_pprof_base(
    heap_profile_pair: ProfilePair,
    go_env: dict[str, str],
    sample_index: str,
    reverse: bool,
    sort_cum: bool,
) -> None:
    base, new = heap_profile_pair.base, heap_profile_pair.new
    if reverse:  # the "new" profile holds less: negative rows
        base, new = new, base
    extra = ("-cum",) if sort_cum else ()
    want = go_pprof_rows(new, go_env, sample_index, *extra, "-base", str(base))
    got = _diff(base, new, sample_index, n=0, sort_cum=sort_cum)
    assert len(want) > 10
    assert [(r.function, r.flat, r.cum) for r in got.rows] == [  # type: ignore[attr-defined]
        (w.name, w.flat, w.cum) for w in want
    ]
    if sample_index == "inuse_space":
        leak = next(w for w in want if w.name == LEAK_FUNCTION)
        assert (leak.flat < -8 * MIB) if reverse else (leak.flat > 8 * MIB)
        assert want[0].name == LEAK_FUNCTION or sort_cum


@pytest.mark.parametrize(
    ("sample_index", "reverse"),
    [("inuse_space", False), ("inuse_space", True), ("alloc_objects", False)],
)
def test_report_text_equals_go_tool_pprof_base(
    heap_profile_pair: ProfilePair, go_env: dict[str, str], sample_index: str, reverse: bool
) -> None:
    base, new = heap_profile_pair.base, heap_profile_pair.new
    if reverse:
        base, new = new, base
    want = go_pprof_text(
        new, go_env, "-top", "-nodecount=12", f"-sample_index={sample_index}", "-base", str(base)
    )
    got = _diff(base, new, sample_index, n=12, node_fraction=0.005)
    assert format_top(got) == want  # type: ignore[arg-type]


def test_merged_samples_and_labels_as_go_tool_pprof(tmp_path: Path, go_env: dict[str, str]) -> None:
    # Samples of the same stack and labels merge (and vanish when they cancel); the same stack
    # with another label does not. The total, and so every percentage, depends on it.
    def build(grow: int) -> ProfileBuilder:
        b = ProfileBuilder((("objects", "count"), ("space", "bytes")))
        exe = b.mapping("/app/server")
        main = b.location("main.main", mapping_id=exe, address=0x1000)
        keep = b.location("main.keep", mapping_id=exe, address=0x1010)
        tmp = b.location("main.scratch", "main.inlined", mapping_id=exe, address=0x1020)
        b.sample([keep, main], 1, 4096, labels={"bytes": 4096})
        b.sample([keep, main], 2, 512 * grow, labels={"bytes": 512})
        b.sample([tmp, main], 3, 300, labels={"bytes": 100, "kind": "scratch"})
        if grow > 1:
            b.sample([b.location("main.late", mapping_id=exe, address=0x1030), main], 1, 64)
        return b

    base, new = tmp_path / "base.pb.gz", tmp_path / "new.pb.gz"
    base.write_bytes(build(1).gz())
    new.write_bytes(build(5).gz())
    for sample_index in ("objects", "space"):
        want = go_pprof_text(
            new,
            go_env,
            "-top",
            "-nodefraction=0",
            f"-sample_index={sample_index}",
            "-base",
            str(base),
        )
        got = _diff(base, new, sample_index, n=0)
        assert format_top(got) == want  # type: ignore[arg-type]


def test_cli_diff_prints_go_tool_pprof_report(
    heap_profile_pair: ProfilePair, go_env: dict[str, str]
) -> None:
    base, new = heap_profile_pair.base, heap_profile_pair.new
    result = CliRunner().invoke(pprof_app, ["diff", str(base), str(new), "-n", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout == go_pprof_text(new, go_env, "-top", "-nodecount=8", "-base", str(base))


def test_cli_diff_json_cum(heap_profile_pair: ProfilePair) -> None:
    base, new = heap_profile_pair.base, heap_profile_pair.new
    result = CliRunner().invoke(
        pprof_app,
        [
            "diff",
            str(new),
            str(base),
            "--json",
            "--cum",
            "-n",
            "3",
            "--sample-index",
            "inuse_space",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sort"] == "cum"
    assert data["sample_type"] == "inuse_space"
    assert len(data["rows"]) == 3
    assert all(row["cum"] < 0 for row in data["rows"])  # the leak shrank, seen backwards
    assert LEAK_FUNCTION in [row["function"] for row in data["rows"]]


def _other_types(path: Path) -> None:
    b = ProfileBuilder((("samples", "count"), ("cpu", "nanoseconds")))
    b.sample([b.location("main.spin")], 1, 10_000_000)
    path.write_bytes(b.gz())


@pytest.mark.parametrize(
    ("which", "make", "message"),
    [
        (
            "base",
            lambda p, good: p.write_bytes(good.read_bytes()[:2000]),
            "bad gzip data: truncated",
        ),
        (
            "new",
            lambda p, good: p.write_bytes(good.read_bytes()[:2000]),
            "bad gzip data: truncated",
        ),
        (
            "new",
            lambda p, good: p.write_bytes(gzip.decompress(good.read_bytes())[:5000]),
            "not a pprof profile",
        ),
        ("base", lambda p, good: p.write_bytes(b"\x08\x96\x01 not pprof"), "not a pprof profile"),
        ("new", lambda p, good: _other_types(p), "different period types"),
    ],
)
def test_cli_diff_bad_input_names_the_file(
    heap_profile_pair: ProfilePair, tmp_path: Path, which: str, make: object, message: str
) -> None:
    bad = tmp_path / f"bad-{which}.pb.gz"
    make(bad, heap_profile_pair.new)  # type: ignore[operator]
    base = bad if which == "base" else heap_profile_pair.base
    new = bad if which == "new" else heap_profile_pair.new
    result = CliRunner().invoke(pprof_app, ["diff", str(base), str(new)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert str(bad) in result.stderr
    assert message in result.stderr


def test_different_sample_types_are_refused_naming_both() -> None:
    heap = ProfileBuilder((("inuse_objects", "count"), ("inuse_space", "bytes")))
    heap.sample([heap.location("main.f")], 1, 8)
    other = ProfileBuilder((("alloc_objects", "count"), ("alloc_space", "bytes")))
    other.sample([other.location("main.f")], 1, 8)
    base, new = load_diff(other.raw(), "alloc.pb", heap.raw(), "inuse.pb")
    with pytest.raises(
        PprofError,
        match=r"^alloc\.pb: cannot be the base of inuse\.pb: different sample types "
        r"\(\[alloc_objects/count, alloc_space/bytes\] and \[inuse_objects/count, "
        r"inuse_space/bytes\]\)$",
    ):
        diff(base, new)


def test_heap_growth_top_lists_growers_only(heap_profile_pair: ProfilePair) -> None:
    base, new = heap_profile_pair.base, heap_profile_pair.new
    grown = heap_growth_top(base.read_bytes(), str(base), new.read_bytes(), str(new), k=3)
    assert grown[0]["function"] == LEAK_FUNCTION
    assert grown[0]["flat"] > 8 * MIB
    assert grown[0]["sample_type"] == "inuse_space"
    assert all(row["flat"] > 0 for row in grown)
    # backwards nothing grew but what the runtime allocated in between
    assert LEAK_FUNCTION not in [
        row["function"]
        for row in heap_growth_top(new.read_bytes(), str(new), base.read_bytes(), str(base), k=3)
    ]


def test_newer_profiles_drop_frames_prune_the_base_too(
    tmp_path: Path, go_env: dict[str, str]
) -> None:
    # pprof prunes the merged profile with the first profile's drop_frames: the base's own
    # expressions do not count, the newer one's apply to the base's stacks as well.
    def build(drop: str, scale: int) -> ProfileBuilder:
        b = ProfileBuilder((("space", "bytes"),))
        if drop:
            b.msg.drop_frames = b.s(drop)
        main = b.location("main.main")
        user = b.location("app.alloc")
        b.sample(
            [b.location("runtime.mallocgc"), b.location("runtime.newobject"), user, main],
            100 * scale,
        )
        b.sample([b.location("app.grow"), user, main], 5 * scale)
        return b

    base, new = tmp_path / "base.pb.gz", tmp_path / "new.pb.gz"
    base.write_bytes(build(r"app\.grow", 1).gz())
    new.write_bytes(build(r"runtime\..*", 3).gz())
    want = go_pprof_text(new, go_env, "-top", "-nodefraction=0", "-base", str(base))
    got = _diff(base, new, n=0)
    assert format_top(got) == want  # type: ignore[arg-type]
    assert "runtime.mallocgc" not in want
    assert "app.grow" in want
