"""The sandbox: escapes refused with a clear error, runaway and greedy scripts stopped, and the
host (this process, the next handler, the next event) unharmed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.lua import LuaScripts
from pressured.errors import ConfigError
from pressured.model import PressureEvent
from pressured.storage.local import LocalStorage
from tests.lua import PROBED, LoopbackServer, Route, pressure

MakeScripts = Callable[..., LuaScripts]

PROBE_LINE = 5


def probe_event() -> PressureEvent:
    return pressure(annotations={"probe": "1"})


def assert_still_works(scripts: LuaScripts, storage: LocalStorage, expected_calls: int) -> None:
    assert scripts.run(pressure()) == []
    assert storage.read("calls") == str(expected_calls).encode()


ESCAPES: dict[str, tuple[str, str] | tuple[str, str, int]] = {
    "os.execute": ('os.execute("touch /tmp/pressured-escaped")', "os.execute is not available"),
    "os.getenv": ('return os.getenv("HOME")', "os.getenv is not available"),
    "os.remove": ('os.remove("/tmp/x")', "os.remove is not available"),
    "io.open": ('io.open("/etc/passwd")', "'io' is not available"),
    "io via _G": ('_G.io.open("/etc/passwd")', "'io' is not available"),
    "loadfile": ('loadfile("/etc/passwd")', "'loadfile' is not available"),
    "dofile": ('dofile("/etc/passwd")', "'dofile' is not available"),
    "debug.getinfo": ("debug.getinfo(1)", "'debug' is not available"),
    "debug.sethook": ("debug.sethook()", "'debug' is not available"),
    "package.loadlib": ('package.loadlib("libc.so.6", "system")', "'package' is not available"),
    "require C module": ('require("socket")', "C modules are not available"),
    "require io": ('require("io")', "C modules are not available"),
    "string.dump": ("string.dump(on_event)", "string.dump is not available"),
    "dump via method": ('("x").dump(on_event)', "string.dump is not available"),
    "load binary mode": ('load("\\27Lua", "x", "b")', "binary chunks are refused"),
    "load bytecode": (
        'local f, e = load("\\27LuaT\\0") error(e, 0)',
        "attempt to load a binary chunk",
    ),
    "load sees sandbox": ('load("return io.open")()', "'io' is not available", 1),
    "python global": ("return python.eval", "'python' is not available"),
    "python via _G": ("return _G.python", "'python' is not available"),
    "attribute of host fn": ("return log.info.__class__", "attempt to index a function value"),
    "__gc finalizer": ("setmetatable({}, {__gc = function() end})", "__gc metamethods"),
    "collectgarbage stop": ('collectgarbage("stop")', 'collectgarbage("stop") is not available'),
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_is_refused_with_a_clear_error_and_the_host_goes_on(
    name: str, make_scripts: MakeScripts, storage: LocalStorage
) -> None:
    probe, expected, *in_chunk = ESCAPES[name]
    scripts = make_scripts(PROBED.format(probe="    " + probe))
    [failure] = scripts.run(probe_event())
    assert failure.kind == "error"
    assert expected in failure.message
    if in_chunk:  # raised inside a chunk the probe loaded: its own name and line
        assert (failure.file, failure.line) == ('[string "return io.open"]', in_chunk[0])
    else:
        assert (failure.file, failure.line) == ("inline_script", PROBE_LINE)
    assert not Path("/tmp/pressured-escaped").exists()
    assert_still_works(scripts, storage, 1)


def test_no_python_object_is_reachable_from_the_environment(make_scripts: MakeScripts) -> None:
    # Walk every table reachable from the script's globals (and the string metatable) and
    # check that nothing is userdata: lupa represents every Python object as userdata.
    scripts = make_scripts("""
    function on_event(event, ctx)
      local seen, found = {}, {}
      local function walk(v, path)
        local t = type(v)
        if t == "userdata" then found[#found + 1] = path end
        if t ~= "table" or seen[v] then return end
        seen[v] = true
        for k, x in pairs(v) do walk(x, path .. "." .. tostring(k)) end
        local mt = getmetatable(v)
        if type(mt) == "table" then walk(mt, path .. ".<mt>") end
      end
      walk(_G, "_G")
      walk(event, "event")
      walk(ctx, "ctx")
      walk(getmetatable(""), "<string mt>")
      assert(#found == 0, table.concat(found, ", "))
      assert(getmetatable("") == false and getmetatable(config) == false)
      assert(rawget(_G, "debug") == nil and rawget(_G, "io") == nil)
      local n = 0
      for k in pairs(_G) do n = n + 1 end
      assert(n > 20)
    end
    """)
    assert scripts.run(pressure()) == []


def test_allowed_functions_behave_as_in_plain_lua(make_scripts: MakeScripts) -> None:
    scripts = make_scripts("""
    function on_event(event, ctx)
      local f, err = load("return 1 +")
      assert(f == nil and err:find("unexpected symbol", 1, true), err)
      local g = load("return 40 + 2")
      assert(g() == 42)
      local env = {}
      load("x = 1", "chunk", "t", env)()
      assert(env.x == 1 and rawget(_G, "x") == nil)
      -- only the refused names raise; other missing names are nil, as in plain Lua
      assert(string.nope == nil and os.nope == nil and undefined_global == nil)
      assert(os.difftime(10, 4) == 6 and type(os.time()) == "number")
    end
    """)
    assert scripts.run(pressure()) == []


# -- time ---------------------------------------------------------------------------------------
RUNAWAYS = {
    "while true": "while true do end",
    "pcall swallowing": "while true do pcall(function() while true do end end) end",
    "xpcall swallowing": "while true do xpcall(function() while true do end end, print) end",
    "coroutine.wrap": "coroutine.wrap(function() while true do end end)()",
    "coroutine.resume loop": (
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end"
    ),
    "error handler loop": "xpcall(error, function() while true do end end)",
    # near the C-stack limit Lua cannot call the hook: the deadline is checked on caught errors
    "recursion via pcall": "local function f() pcall(f) f() end f()",
    "recursion via coroutines": "local function f() pcall(coroutine.wrap(f)) f() end f()",
}


@pytest.mark.parametrize("name", list(RUNAWAYS))
def test_runaway_script_is_stopped_by_timeout(
    name: str, make_scripts: MakeScripts, storage: LocalStorage
) -> None:
    scripts = make_scripts(PROBED.format(probe="    " + RUNAWAYS[name]), timeout_ms=150)
    [failure] = scripts.run(probe_event())
    assert failure.kind == "timeout", failure
    assert failure.message == "pressured: script inline_script exceeded timeout_ms=150"
    assert failure.line == PROBE_LINE
    assert_still_works(scripts, storage, 1)
    [again] = scripts.run(probe_event())
    assert again.kind == "timeout"
    assert_still_works(scripts, storage, 2)


def test_runaway_top_level_is_a_config_error(make_ctx: Callable[..., ActionContext]) -> None:
    with pytest.raises(ConfigError) as err:
        LuaScripts.from_config(
            {"inline_script": "while true do end", "timeout_ms": 100}, ctx=make_ctx()
        )
    assert "plugins.lua.inline_script: inline_script:1:" in str(err.value)
    assert "exceeded timeout_ms=100" in str(err.value)


def test_http_waits_count_against_the_timeout(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/never"] = Route(200, b"late", wait=True)
    scripts = make_scripts(
        PROBED.format(
            probe=f"""
    local res = http.fetch("{server.url("/never")}")
    while true do end"""
        ),
        timeout_ms=200,
    )
    [failure] = scripts.run(probe_event())
    assert failure.kind == "timeout"
    # run() came back while the server still held its answer: the request's own timeout was
    # what was left of timeout_ms, not an unbounded wait
    assert len(server.seen) == 1
    assert server.answered == 0
    assert_still_works(scripts, storage, 1)


def test_stream_callback_runaway_is_stopped(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/s"] = Route(200, b"x" * 10)
    scripts = make_scripts(
        PROBED.format(
            probe=f"""
    http.stream("{server.url("/s")}", function() while true do end end)"""
        ),
        timeout_ms=150,
    )
    [failure] = scripts.run(probe_event())
    assert failure.kind == "timeout"
    assert_still_works(scripts, storage, 1)


# -- memory -------------------------------------------------------------------------------------
def test_memory_bomb_is_stopped_and_the_next_event_runs(
    make_scripts: MakeScripts, storage: LocalStorage
) -> None:
    bomb = 'local t = {} while true do t[#t+1] = string.rep("x", 1e6) end'
    scripts = make_scripts(PROBED.format(probe="    " + bomb), memory_mb=16)
    [failure] = scripts.run(probe_event())
    assert failure.kind == "memory"
    assert failure.message == "not enough memory (memory_mb=16)"
    assert_still_works(scripts, storage, 1)


def test_memory_kept_in_a_global_fails_that_script_not_the_host(
    make_scripts: MakeScripts, storage: LocalStorage
) -> None:
    # 10 MB more per probe, kept: the first fits under 16 MB, the second does not
    hog = 'hog = hog or {} for i = 1, 100 do hog[#hog + 1] = string.rep("x", 1e5) end'
    scripts = make_scripts(PROBED.format(probe="    " + hog), memory_mb=16)
    assert scripts.run(probe_event()) == []
    [failure] = scripts.run(probe_event())
    assert failure.kind == "memory"
    assert_still_works(scripts, storage, 2)


def test_host_data_too_big_for_the_cap_is_refused_not_pushed(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    # lupa aborts the process when a push from Python exceeds the allocator limit; the host
    # sizes data first and answers with an error instead.
    big = b"y" * (20 * 1024 * 1024)
    storage.write("big", big)
    server.routes["/big"] = Route(200, big)
    scripts = make_scripts(
        PROBED.format(
            probe=f"""
    local data, err = storage.read("big")
    assert(data == nil and err:find("does not fit in memory_mb=16", 1, true), err)
    local h = storage.open("big", "r")
    local all, herr = h:read("a")
    assert(all == nil and herr:find("does not fit", 1, true), herr)
    assert(#h:read(1000) == 1000)
    h:close()
    local res = http.fetch("{server.url("/big")}")
    assert(res.error:find("does not fit in memory_mb=16", 1, true), res.error)
    local dl = http.download("{server.url("/big")}", "copy")
    assert(dl.bytes == {len(big)}, dl.error)"""
        ),
        memory_mb=16,
    )
    assert scripts.run(probe_event()) == []
    assert storage.read("copy") == big
    assert_still_works(scripts, storage, 2)


def test_each_script_has_its_own_interpreter(
    tmp_path: Path, make_ctx: Callable[..., ActionContext], storage: LocalStorage
) -> None:
    (tmp_path / "a.lua").write_text(
        "shared = 'a'\nstring.upper = nil\n"
        "function on_event(e, c) assert(storage.write('a', shared)) end\n"
    )
    (tmp_path / "b.lua").write_text(
        "function on_event(e, c)\n"
        "  assert(shared == nil)\n"
        "  assert(storage.write('b', ('b'):upper()))\n"
        "end\n"
    )
    scripts = LuaScripts.from_config({"scripts_dir": str(tmp_path)}, ctx=make_ctx())
    try:
        assert scripts.run(pressure()) == []
    finally:
        scripts.close()
    assert (storage.read("a"), storage.read("b")) == (b"a", b"B")
