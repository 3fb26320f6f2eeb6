"""pressured.pprof and `pressured pprof top` against go tool pprof, on real Go heap profiles."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pressured.errors import PprofError
from pressured.pprof import (
    Profile,
    format_percent,
    format_top,
    format_value,
    load_profile,
    summarize_top,
    summary_text,
    top,
)
from pressured.pprof.cli import pprof_app
from tests.pprof.conftest import (
    CHURN_FUNCTION,
    HEAP_TYPES,
    LEAK_FUNCTION,
    OBJECTS_FUNCTION,
    LeakyServer,
    ProfileBuilder,
    go_pprof_rows,
    go_pprof_text,
)


def _load(path: Path) -> Profile:
    return load_profile(path.read_bytes(), str(path))


# --------------------------------------------------------------------------------------------
# the numbers of go tool pprof, on a real profile


@pytest.mark.parametrize("sample_index", HEAP_TYPES)
@pytest.mark.parametrize("sort_cum", [False, True], ids=["flat", "cum"])
def test_flat_and_cum_equal_go_tool_pprof(
    heap_profile: Path, go_env: dict[str, str], sample_index: str, sort_cum: bool
) -> None:
    extra = ("-cum",) if sort_cum else ()
    want = go_pprof_rows(heap_profile, go_env, sample_index, *extra)
    got = top(_load(heap_profile), sample_index, n=0, sort_cum=sort_cum)
    assert len(want) > 20  # a real profile: the runtime and net/http allocate too
    assert [(r.function, r.flat, r.cum) for r in got.rows] == [
        (w.name, w.flat, w.cum) for w in want
    ]


@pytest.mark.parametrize("sample_index", HEAP_TYPES)
def test_report_text_equals_go_tool_pprof(
    heap_profile: Path, go_env: dict[str, str], sample_index: str
) -> None:
    # Default node fraction, -nodecount, units chosen as pprof chooses, "(inline)" labels.
    want = go_pprof_text(
        heap_profile, go_env, "-top", "-nodecount=12", f"-sample_index={sample_index}"
    )
    got = format_top(top(_load(heap_profile), sample_index, n=12, node_fraction=0.005))
    assert got == want


def test_default_sample_type_of_a_go_heap_is_inuse_space(
    heap_profile: Path, go_env: dict[str, str]
) -> None:
    result = top(_load(heap_profile))
    assert result.sample_type == "inuse_space"
    assert result.unit == "bytes"
    assert format_top(top(_load(heap_profile), n=0)) == go_pprof_text(
        heap_profile, go_env, "-top", "-nodefraction=0"
    )


def test_the_leak_is_found_where_the_program_leaks(heap_profile: Path) -> None:
    profile = _load(heap_profile)
    inuse = top(profile, "inuse_space")
    assert inuse.rows[0].function == LEAK_FUNCTION
    assert inuse.rows[0].flat >= 16 * 1024 * 1024
    assert inuse.rows[0].flat_pct > 90
    assert top(profile, "inuse_objects").rows[0].function == OBJECTS_FUNCTION
    # churnBuffers drops what it allocates: large in alloc_space, small in inuse_space.
    alloc = {r.function: r.flat for r in top(profile, "alloc_space", n=0).rows}
    live = {r.function: r.flat for r in inuse.rows}
    assert alloc[CHURN_FUNCTION] > 10 * live.get(CHURN_FUNCTION, 0)


def test_raw_and_gzip_profiles_give_the_same_result(heap_profile: Path, tmp_path: Path) -> None:
    raw = tmp_path / "heap.pb"
    raw.write_bytes(gzip.decompress(heap_profile.read_bytes()))
    assert top(_load(raw), n=0).rows == top(_load(heap_profile), n=0).rows


def test_sample_index_by_number_and_legacy_name() -> None:
    b = ProfileBuilder((("objects", "count"), ("space", "bytes")))
    b.sample([b.location("main.f")], 3, 300)
    profile = load_profile(b.raw(), "legacy.pb")
    assert top(profile, "0").sample_type == "objects"
    assert top(profile, "inuse_space").sample_type == "space"  # pprof's legacy alias
    with pytest.raises(
        PprofError, match=r"legacy\.pb: sample index 2 is outside the range \[0..1\]"
    ):
        top(profile, "2")


# --------------------------------------------------------------------------------------------
# shapes Go's runtime rarely writes, checked against go tool pprof too


def _synthetic() -> ProfileBuilder:
    b = ProfileBuilder((("alloc_space", "bytes"), ("inuse_space", "bytes")))
    exe = b.mapping("/usr/bin/server")
    b.msg.default_sample_type = b.s("alloc_space")
    main = b.location("main.main", mapping_id=exe)
    handler = b.location("app.handle", mapping_id=exe)
    # decode inlined into parse inlined into handleInline: three frames in one location.
    inlined = b.location("app.decode", "app.parse", "app.handleInline", mapping_id=exe)
    recurse = b.location("app.walk", mapping_id=exe)
    anonymous = b.location("", mapping_id=exe)  # a function without a name
    bare = b.location(mapping_id=exe, address=0x4321)  # a location without lines
    runtime_alloc = b.location("runtime.mallocgc", mapping_id=exe)
    b.sample([inlined, handler, main], 4096, 1024)
    b.sample([recurse, recurse, recurse, handler, main], 2048, 2048)  # cum once per sample
    b.sample([anonymous, main], 512, 0)
    b.sample([bare, main], 256, 256)
    b.sample([runtime_alloc, recurse, main], 1000, 10)
    b.sample([handler, main], 0, 0)  # zero: counts nowhere
    b.sample([], 128, 128)  # no stack: in the total only
    b.sample([main], -100, -100)  # negative values (diff profiles) count by magnitude in total
    return b


def test_synthetic_profile_equals_go_tool_pprof(go_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "synthetic.pb.gz"
    path.write_bytes(_synthetic().gz())
    profile = load_profile(path.read_bytes(), str(path))
    result = top(profile, n=0)
    assert result.sample_type == "alloc_space"  # default_sample_type, not the last type
    assert format_top(result) == go_pprof_text(path, go_env, "-top", "-nodefraction=0")
    for index in ("alloc_space", "inuse_space"):
        got = top(profile, index, n=0)
        assert [(r.function, r.flat, r.cum) for r in got.rows] == [
            (w.name, w.flat, w.cum) for w in go_pprof_rows(path, go_env, index)
        ]
        got_cum = top(profile, index, n=0, sort_cum=True)
        assert format_top(got_cum) == go_pprof_text(
            path, go_env, "-top", "-cum", "-nodefraction=0", f"-sample_index={index}"
        )


def test_inline_and_recursion_semantics() -> None:
    result = top(load_profile(_synthetic().raw(), "synthetic"), "alloc_space", n=0)
    rows = {r.function: r for r in result.rows}
    assert result.total == 4096 + 2048 + 512 + 256 + 1000 + 128 + 100
    assert rows["app.decode"].flat == 4096  # the innermost inlined frame is the leaf
    assert rows["app.parse"].flat == 0
    assert rows["app.parse"].cum == 4096
    assert rows["app.parse"].inline == "inline"
    assert rows["app.walk"].cum == 2048 + 1000  # recursion counted once per sample
    assert rows["app.walk"].flat == 2048
    assert rows["[server]"].flat == 512 + 256  # nameless function and bare location
    assert rows["main.main"].cum == 4096 + 2048 + 512 + 256 + 1000 - 100


def test_drop_frames_and_keep_frames_equal_go_tool_pprof(
    go_env: dict[str, str], tmp_path: Path
) -> None:
    b = ProfileBuilder((("space", "bytes"),))
    b.msg.drop_frames = b.s(r"runtime\..*|malloc")
    b.msg.keep_frames = b.s(r"runtime\.keepme")
    main = b.location("main.main")
    user = b.location("app.alloc")
    b.sample([b.location("runtime.mallocgc"), b.location("runtime.newobject"), user, main], 100)
    b.sample([b.location("malloc(size_t)"), user, main], 10)  # simplified name: "malloc"
    b.sample([b.location("runtime.keepme"), user, main], 5)
    b.sample([b.location("runtime.helper", "app.inlinedCaller"), user, main], 7)
    b.sample([b.location("runtime.goexit"), b.location("runtime.main")], 3)  # no user frame
    path = tmp_path / "dropped.pb.gz"
    path.write_bytes(b.gz())
    result = top(load_profile(path.read_bytes(), str(path)), n=0)
    assert format_top(result) == go_pprof_text(path, go_env, "-top", "-nodefraction=0")
    rows = {r.function: r for r in result.rows}
    assert rows["app.alloc"].flat == 110
    assert rows["runtime.keepme"].flat == 5
    assert "runtime.mallocgc" not in rows


# --------------------------------------------------------------------------------------------
# malformed input: PprofError names the source and what failed


def test_garbage_is_not_a_profile(tmp_path: Path) -> None:
    with pytest.raises(PprofError, match=r"^junk\.bin: not a pprof profile"):
        load_profile(b"\xff\xfe this is not protobuf \x00\x01", "junk.bin")


def test_empty_input_is_not_a_profile() -> None:
    with pytest.raises(PprofError, match=r"^empty\.pb: not a pprof profile"):
        load_profile(b"", "empty.pb")


def test_truncated_gzip(heap_profile: Path) -> None:
    data = heap_profile.read_bytes()
    with pytest.raises(PprofError, match=r"^cut\.pb\.gz: bad gzip data: truncated"):
        load_profile(data[: len(data) // 2], "cut.pb.gz")


def test_corrupt_gzip(heap_profile: Path) -> None:
    data = bytearray(heap_profile.read_bytes())
    data[20:40] = b"\x00" * 20
    with pytest.raises(PprofError, match=r"^bad\.pb\.gz: bad gzip data"):
        load_profile(bytes(data), "bad.pb.gz")


def test_gzip_bomb_is_refused() -> None:
    with pytest.raises(PprofError, match=r"^bomb\.gz: profile inflates to more than 1000 bytes"):
        load_profile(gzip.compress(b"\x00" * 100_000), "bomb.gz", max_bytes=1000)


def test_string_index_out_of_range() -> None:
    b = ProfileBuilder()
    b.sample([b.location("main.f")], 1)
    b.msg.function[0].name = 999
    with pytest.raises(
        PprofError,
        match=r"^bad-index\.pb: string table index 999 out of range in function\[0\]\.name",
    ):
        load_profile(b.raw(), "bad-index.pb")


def test_unknown_sample_index_lists_the_available_ones(heap_profile: Path) -> None:
    with pytest.raises(PprofError) as info:
        top(_load(heap_profile), "inuse_bananas")
    assert str(info.value) == (
        f"{heap_profile}: unknown sample index 'inuse_bananas'; "
        "available: alloc_objects, alloc_space, inuse_objects, inuse_space"
    )


def test_value_count_mismatch_and_missing_location() -> None:
    b = ProfileBuilder((("a", "count"), ("b", "count")))
    b.sample([b.location("main.f")], 1)
    with pytest.raises(PprofError, match=r"sample\[0\] has 1 values for 2 sample types"):
        load_profile(b.raw(), "x")
    b = ProfileBuilder()
    b.sample([42], 1)
    with pytest.raises(PprofError, match=r"^y: samples name location ids that do not exist: 42"):
        load_profile(b.raw(), "y")


def test_line_naming_a_missing_function() -> None:
    b = ProfileBuilder()
    lid = b.location("main.f")
    b.msg.location[0].line[0].function_id = 7
    b.sample([lid], 1)
    with pytest.raises(PprofError, match=r"location\[0\]\.line\[0\] names function 7"):
        load_profile(b.raw(), "z")


# --------------------------------------------------------------------------------------------
# summaries and formatting helpers


def test_summarize_top_for_events(heap_profile: Path) -> None:
    summary = summarize_top(top(_load(heap_profile)), k=3)
    assert len(summary) == 3
    assert summary[0]["function"] == LEAK_FUNCTION
    assert summary[0]["unit"] == "bytes"
    assert summary[0]["sample_type"] == "inuse_space"
    assert 90 < summary[0]["flat_pct"] <= 100
    json.dumps(summary)  # plain data, ready for event JSON and Lua
    assert summary_text(summary).startswith(f"{LEAK_FUNCTION} ")


def test_units_and_percentages_as_pprof_writes_them() -> None:
    assert format_value(17301504, "bytes") == "16.50MB"
    assert format_value(1024, "bytes") == "1kB"
    assert format_value(0, "bytes") == "0"
    assert format_value(1500, "nanoseconds") == "1.50us"
    assert format_value(42, "count") == "42"
    assert format_value(-2048, "bytes") == "-2kB"
    assert format_percent(1, 3) == "33.33%"
    assert format_percent(1, 1000) == "  0.1%"
    assert format_percent(1, 170000) == "0.00059%"
    assert format_percent(5, 5) == "  100%"


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_top_json(heap_profile: Path) -> None:
    result = CliRunner().invoke(
        pprof_app, ["top", str(heap_profile), "-n", "2", "--sample-index", "alloc_space", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sample_type"] == "alloc_space"
    assert data["unit"] == "bytes"
    assert [r["function"] for r in data["rows"]] == [LEAK_FUNCTION, CHURN_FUNCTION]
    expected = top(_load(heap_profile), "alloc_space", n=2)
    assert data["total"] == expected.total
    assert [(r["flat"], r["cum"]) for r in data["rows"]] == [(r.flat, r.cum) for r in expected.rows]


def test_cli_top_text_equals_go_tool_pprof(heap_profile: Path, go_env: dict[str, str]) -> None:
    result = CliRunner().invoke(pprof_app, ["top", str(heap_profile), "--cum", "-n", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout == go_pprof_text(heap_profile, go_env, "-top", "-cum", "-nodecount=5")


def test_cli_top_from_url(leaky_server: LeakyServer) -> None:
    result = CliRunner().invoke(pprof_app, ["top", leaky_server.url(), "--json", "-n", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][0]["function"] == LEAK_FUNCTION


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["top", "/nonexistent/heap.pb.gz"], "/nonexistent/heap.pb.gz: cannot read"),
        (["top", "{profile}", "--sample-index", "nope"], "unknown sample index 'nope'"),
        (["top", "{garbage}"], "garbage.bin: not a pprof profile"),
    ],
)
def test_cli_bad_input_exits_1(
    heap_profile: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x08\x96\x01 definitely not pprof")
    args = [a.format(profile=heap_profile, garbage=garbage) for a in args]
    result = CliRunner().invoke(pprof_app, args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


def test_cli_http_error_exits_1(leaky_server: LeakyServer) -> None:
    url = leaky_server.url("/debug/pprof/nothing-here")
    result = CliRunner().invoke(pprof_app, ["top", url])
    assert result.exit_code == 1
    assert f"{url}: HTTP 404" in result.stderr
