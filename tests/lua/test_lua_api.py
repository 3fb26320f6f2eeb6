"""Every function of the Lua API, called from real Lua against real HTTP and real storage."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from pressured import __version__
from pressured.actions.base import ActionContext
from pressured.actions.lua import TRACE, LuaScripts, ScriptFailure
from pressured.model import Event, rfc3339
from pressured.storage.local import LocalStorage
from tests.lua import EVENT_TIME, LoopbackServer, Route, oom_kill, pressure

MakeScripts = Callable[..., LuaScripts]


def run_ok(scripts: LuaScripts, event: Event | None = None) -> None:
    failures = scripts.run(event or pressure())
    assert failures == [], "\n".join(str(f) for f in failures)


def handler(body: str, *, url: str = "") -> str:
    """A script whose on_event runs ``body``; URL is visible to it as the global ``URL``."""
    return f"URL = {url!r}\nfunction on_event(event, ctx)\n{body}\nend\n"


def script_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pressured.lua"]


# -- log ---------------------------------------------------------------------------------------
def test_log_functions_reach_the_pressured_lua_logger(
    make_scripts: MakeScripts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(TRACE, logger="pressured.lua")
    scripts = make_scripts(
        handler("""
        log.trace("t") log.debug("d") log.info("i", 42, true) log.warn("w") log.error("e")
        print("p", 1)
        log.info({})
        """)
    )
    run_ok(scripts)
    logs = script_logs(caplog)
    assert logs[:6] == [
        (TRACE, "inline_script: t"),
        (logging.DEBUG, "inline_script: d"),
        (logging.INFO, "inline_script: i 42 true"),
        (logging.WARNING, "inline_script: w"),
        (logging.ERROR, "inline_script: e"),
        (logging.INFO, "inline_script: p\t1"),
    ]
    assert logs[6][1].startswith("inline_script: table: ")


# -- http.fetch --------------------------------------------------------------------------------
def test_fetch_url_form_sends_headers_and_returns_status_body_headers(
    make_scripts: MakeScripts, server: LoopbackServer
) -> None:
    server.routes["/data"] = Route(200, b"hello", {"Content-Type": "text/plain", "X-Id": "7"})
    scripts = make_scripts(
        handler(
            """
        local res = http.fetch(URL, {headers = {["X-Token"] = "abc", ["X-Num"] = 5}})
        assert(res.error == nil, res.error)
        assert(res.status == 200, res.status)
        assert(res.body == "hello", res.body)
        assert(res.headers["content-type"] == "text/plain")
        assert(res.headers["x-id"] == "7")
        local plain = http.fetch(URL)
        assert(plain.status == 200 and plain.body == "hello")
        """,
            url=server.url("/data"),
        )
    )
    run_ok(scripts)
    first, second = server.seen
    assert (first.method, first.path) == ("GET", "/data")
    assert first.headers["x-token"] == "abc"
    assert first.headers["x-num"] == "5"
    assert first.headers["user-agent"] == f"pressured/{__version__}"
    assert second.headers["user-agent"] == f"pressured/{__version__}"


def test_fetch_method_form_posts_the_body_with_headers(
    make_scripts: MakeScripts, server: LoopbackServer
) -> None:
    server.routes["/hook"] = Route(201, b"created")
    scripts = make_scripts(
        handler(
            """
        local opts = {body = "payload\\0x", headers = {["User-Agent"] = "mine"}}
        local res = http.fetch("POST", URL, opts)
        assert(res.status == 201 and res.body == "created", res.error)
        local via_opts = http.fetch(URL, {method = "put", body = "second"})
        assert(via_opts.status == 201)
        """,
            url=server.url("/hook"),
        )
    )
    run_ok(scripts)
    post, put = server.seen
    assert (post.method, post.body) == ("POST", b"payload\0x")
    assert post.headers["user-agent"] == "mine"
    assert (put.method, put.body) == ("PUT", b"second")


def test_fetch_body_is_binary_safe(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    blob = bytes(range(256)) * 64
    server.routes["/bin"] = Route(200, blob)
    scripts = make_scripts(
        handler(
            """
        local res = http.fetch(URL)
        assert(#res.body == 16384, #res.body)
        assert(res.body:byte(256) == 255 and res.body:byte(1) == 0)
        assert(storage.write("copy.bin", res.body))
        """,
            url=server.url("/bin"),
        )
    )
    run_ok(scripts)
    assert storage.read("copy.bin") == blob


def test_fetch_network_failures_are_returned_not_raised(
    make_scripts: MakeScripts, server: LoopbackServer
) -> None:
    server.routes["/slow"] = Route(200, b"late", wait=True)
    server.routes["/big"] = Route(200, b"x" * 5000)
    scripts = make_scripts(
        handler(
            """
        local refused = http.fetch("http://127.0.0.1:1/")
        assert(refused.status == nil)
        assert(refused.error:find("ConnectError", 1, true), refused.error)
        local slow = http.fetch(URL .. "slow", {timeout_ms = 100})
        assert(slow.error:find("Timeout", 1, true), slow.error)
        local big = http.fetch(URL .. "big", {max_bytes = 1000})
        assert(big.error:find("max_bytes=1000", 1, true), big.error)
        local missing = http.fetch(URL .. "nothing")
        assert(missing.status == 404 and missing.body == "not found")
        """,
            url=server.url("/"),
        )
    )
    run_ok(scripts)


def test_fetch_misuse_is_a_lua_error_naming_the_line(make_scripts: MakeScripts) -> None:
    scripts = make_scripts(handler('http.fetch("file:///etc/passwd")'))
    [failure] = scripts.run(pressure())
    assert failure.line == 3
    assert "only http:// and https:// URLs" in failure.message


# -- http.download / http.stream -----------------------------------------------------------------
def test_download_streams_into_storage(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    blob = b"\x1f\x8b" + bytes(range(256)) * 2048  # 512 KiB: several chunks
    server.routes["/heap"] = Route(200, blob)
    scripts = make_scripts(
        handler(
            """
        local res = http.download(URL .. "heap", "dumps/heap.pb.gz")
        assert(res.error == nil, res.error)
        assert(res.status == 200 and res.bytes == 524290, res.bytes)
        local miss = http.download(URL .. "nothing", "dumps/missing.pb.gz")
        assert(miss.status == 404 and miss.error:find("HTTP 404", 1, true), miss.error)
        local refused = http.download("http://127.0.0.1:1/", "dumps/refused")
        assert(refused.error ~= nil)
        """,
            url=server.url("/"),
        )
    )
    run_ok(scripts)
    assert storage.read("dumps/heap.pb.gz") == blob
    assert not storage.exists("dumps/missing.pb.gz")
    assert not storage.exists("dumps/refused")


def test_stream_calls_back_per_chunk_and_stops_on_false(
    make_scripts: MakeScripts, server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/s"] = Route(200, b"a" * 1000 + b"b" * 1000 + b"c" * 500, {"X-Kind": "k"})
    scripts = make_scripts(
        handler(
            """
        local seen, parts = {}, {}
        local res = http.stream(URL, function(chunk, info)
          seen[#seen + 1] = info.bytes_so_far
          parts[#parts + 1] = chunk
          assert(info.status == 200 and info.headers["x-kind"] == "k")
        end, {chunk_size = 1000})
        assert(res.status == 200 and res.bytes == 2500, res.error)
        assert(#seen == 3 and seen[1] == 1000 and seen[3] == 2500)
        local want = string.rep("a", 1000) .. string.rep("b", 1000) .. string.rep("c", 500)
        assert(table.concat(parts) == want)

        local calls = 0
        local stopped = http.stream(URL, function(chunk, info)
          calls = calls + 1
          return calls < 2
        end, {chunk_size = 1000})
        assert(calls == 2 and stopped.bytes == 2000, calls)
        """,
            url=server.url("/s"),
        )
    )
    run_ok(scripts)


def test_stream_callback_error_fails_the_handler_at_its_line(
    make_scripts: MakeScripts, server: LoopbackServer
) -> None:
    server.routes["/s"] = Route(200, b"data")
    scripts = make_scripts(
        handler(
            """
        http.stream(URL, function(chunk, info)
          error("callback refused " .. chunk)
        end)
        """,
            url=server.url("/s"),
        )
    )
    [failure] = scripts.run(pressure())
    assert failure.kind == "error"
    assert failure.message == "callback refused data"
    assert failure.line == 5  # the line of error(), not of http.stream


# -- storage ------------------------------------------------------------------------------------
def test_storage_functions(make_scripts: MakeScripts, storage: LocalStorage) -> None:
    storage.write("given/one", b"from python")
    scripts = make_scripts(
        handler("""
        assert(storage.read("given/one") == "from python")
        assert(storage.write("a/b.txt", "hello\\0world") == true)
        assert(storage.exists("a/b.txt") == true)
        assert(storage.read("a/b.txt") == "hello\\0world")
        assert(storage.rename("a/b.txt", "c/d.txt") == true)
        assert(storage.exists("a/b.txt") == false and storage.exists("c/d.txt") == true)
        assert(storage.write("gone", 12345) == true)
        assert(storage.read("gone") == "12345")
        assert(storage.remove("gone") == true)
        assert(storage.exists("gone") == false)
        """)
    )
    run_ok(scripts)
    assert storage.read("c/d.txt") == b"hello\0world"
    assert sorted(storage.list()) == ["c/d.txt", "given/one"]


def test_storage_failures_are_nil_and_a_message(
    make_scripts: MakeScripts, storage: LocalStorage
) -> None:
    scripts = make_scripts(
        handler("""
        local data, err = storage.read("no/such/key")
        assert(data == nil and err:find("no/such/key", 1, true), err)
        local ok, bad = storage.write("../escape", "x")
        assert(ok == nil and bad:find("invalid storage key", 1, true), bad)
        local h, herr = storage.open("/abs", "w")
        assert(h == nil and herr:find("invalid storage key", 1, true), herr)
        local r, rerr = storage.open("missing", "r")
        assert(r == nil and rerr:find("missing", 1, true), rerr)
        local e, eerr = storage.exists("")
        assert(e == nil and eerr ~= nil)
        """)
    )
    run_ok(scripts)
    assert list(storage.list()) == []


def test_storage_misuse_is_a_lua_error(make_scripts: MakeScripts) -> None:
    scripts = make_scripts(handler('storage.open("k", "a+")'))
    [failure] = scripts.run(pressure())
    assert 'mode must be "r" or "w"' in failure.message
    assert failure.line == 3


def test_storage_without_a_backend_is_a_lua_error(
    make_scripts: MakeScripts, make_ctx: Callable[..., ActionContext]
) -> None:
    scripts = make_scripts(handler('storage.write("k", "v")'), ctx=make_ctx(with_storage=False))
    [failure] = scripts.run(pressure())
    assert failure.message == "storage is not configured"


def test_storage_handles_read_and_write(make_scripts: MakeScripts, storage: LocalStorage) -> None:
    scripts = make_scripts(
        handler("""
        local w = assert(storage.open("h/file", "w"))
        assert(w:write("abc") == w)
        w:write("def"):write(7)
        assert(w:close() == true)
        assert(storage.read("h/file") == "abcdef7")

        local r = assert(storage.open("h/file", "r"))
        assert(r:read(2) == "ab")
        assert(r:read(3) == "cde")
        assert(r:read("a") == "f7")
        assert(r:read(1) == nil)
        assert(r:read("a") == "")
        r:close()
        local all = storage.open("h/file", "r")
        assert(all:read() == "abcdef7" and all:read("*a") == "")
        all:close()
        do
          local auto <close> = storage.open("h/closed", "w")
          auto:write("closed by scope")
        end
        assert(storage.read("h/closed") == "closed by scope")
        local wrong = storage.open("h/file", "r")
        local ok, err = pcall(function() return wrong.read(2) end)
        assert(not ok and err:find("h:read", 1, true), err)
        wrong:close()
        """)
    )
    run_ok(scripts)


def test_an_unclosed_write_handle_is_discarded(
    make_scripts: MakeScripts, storage: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    scripts = make_scripts(
        handler("""
        local w = storage.open("half/written", "w")
        w:write("partial")
        """)
    )
    run_ok(scripts)
    assert not storage.exists("half/written")
    assert list(storage.list()) == []
    assert any("left open; discarded" in m for _, m in script_logs(caplog))


# -- ctx ----------------------------------------------------------------------------------------
def test_ctx_time_iso_and_dry_run(make_scripts: MakeScripts) -> None:
    scripts = make_scripts(
        handler(
            """
        assert(ctx.dry_run == false)
        assert(ctx.script == "inline_script")
        local now = ctx.time_iso()
        assert(now:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), now)
        assert(ctx.time_iso(0) == "1970-01-01T00:00:00.000Z")
        assert(ctx.time_iso(EVENT_TIME) == event.time)
        """
        ).replace("EVENT_TIME", repr(EVENT_TIME))
    )
    run_ok(scripts)


def test_ctx_getenv_allows_pressured_names_and_env_allow_only(
    make_scripts: MakeScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESSURED_CLUSTER", "prod-eu")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("TEAM_CHANNEL", "#oncall")
    body = """
        assert(ctx.getenv("PRESSURED_CLUSTER") == "prod-eu")
        assert(ctx.getenv("PRESSURED_UNSET") == nil)
        assert(ctx.getenv("AWS_SECRET_ACCESS_KEY") == nil)
        assert(ctx.getenv("TEAM_CHANNEL") == EXPECT)
        """
    run_ok(make_scripts(handler(body.replace("EXPECT", "nil"))))
    run_ok(make_scripts(handler(body.replace("EXPECT", '"#oncall"')), env_allow=["TEAM_CHANNEL"]))


# -- config and event ---------------------------------------------------------------------------
def test_config_global_is_the_whole_config_read_only(
    make_scripts: MakeScripts, make_ctx: Callable[..., ActionContext]
) -> None:
    config: dict[str, Any] = {
        "thresholds": {"warn_percent": 70, "critical_percent": 85.5},
        "actions": [{"type": "log"}, {"type": "lua"}],
        "storage": {"type": "local", "s3": {"bucket": None}},
        "dry_run": False,
    }
    scripts = make_scripts(
        handler("""
        assert(config.thresholds.warn_percent == 70)
        assert(config.thresholds.critical_percent == 85.5)
        assert(#config.actions == 2 and config.actions[2].type == "lua")
        assert(config.storage.s3.bucket == nil)
        assert(config.dry_run == false)
        local n = 0
        for k, v in pairs(config.thresholds) do n = n + 1 end
        assert(n == 2)
        local types = {}
        for i, a in ipairs(config.actions) do types[i] = a.type end
        assert(table.concat(types, ",") == "log,lua")
        local ok, err = pcall(function() config.thresholds.warn_percent = 1 end)
        assert(not ok and err:find("config.thresholds is read-only", 1, true), err)
        ok, err = pcall(function() config.new = 1 end)
        assert(not ok and err:find("read-only", 1, true), err)
        """),
        ctx=make_ctx(config=config),
    )
    run_ok(scripts)


def test_event_is_the_event_contract_as_tables(make_scripts: MakeScripts) -> None:
    scripts = make_scripts(
        handler(
            """
        assert(event.event_type == "memory_pressure")
        assert(event.severity == "critical" and event.previous_severity == "warn")
        assert(event.time == TIME, event.time)
        assert(event.namespace == "shop" and event.pod_name == "web-7f9c")
        assert(event.pod_ip == "127.0.0.1" and event.container_name == "app")
        assert(event.limit_bytes == 1073741824 and math.type(event.limit_bytes) == "integer")
        assert(event.usage_percent == 85.94)
        assert(event.psi.some_avg10 == 3.5 and event.psi.full_avg10 == nil)
        assert(event.annotations["pressured.io/pprof-port"] == "6060")
        assert(event.annotations.team == "checkout")
        assert(event.dry_run == false)
        assert(event.pprof_top[1]["function"] == "main.leak")
        assert(event.pprof_top[1].inuse_bytes == 4096)
        assert(#event.pprof_top == 2)
        """.replace("TIME", repr(rfc3339(EVENT_TIME)))
        )
    )
    top = [{"function": "main.leak", "inuse_bytes": 4096}, {"function": "runtime.malg"}]
    run_ok(scripts, pressure(extra={"pprof_top": top}))


def test_oom_kill_event_fields(make_scripts: MakeScripts) -> None:
    scripts = make_scripts(
        handler("""
        assert(event.event_type == "oom_killed")
        assert(event.pid == 4242 and event.comm == "java")
        assert(#event.sources == 2 and event.sources[2] == "kmsg")
        assert(event.warned_seconds_before == 12.5)
        assert(event.severity == nil and next(event.annotations) == nil)
        """)
    )
    run_ok(scripts, oom_kill())


# -- require -----------------------------------------------------------------------------------
def test_require_loads_lua_files_beside_the_script(
    tmp_path: Any, make_ctx: Callable[..., ActionContext]
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.lua").write_text(
        "local M = {}\nfunction M.twice(x) return 2 * x end\nreturn M\n"
    )
    (tmp_path / "main.lua").write_text(
        'local util = require("lib.util")\n'
        'assert(require("lib.util") == util)\n'
        'local s = require("string")\n'
        "function on_event(event, ctx)\n"
        "  assert(util.twice(21) == 42 and s.rep('a', 2) == 'aa')\n"
        "end\n"
    )
    scripts = LuaScripts.from_config({"script": str(tmp_path / "main.lua")}, ctx=make_ctx())
    try:
        run_ok(scripts)
    finally:
        scripts.close()


# -- dry run ------------------------------------------------------------------------------------
def test_dry_run_skips_storage_writes_and_non_get_requests(
    make_scripts: MakeScripts,
    make_ctx: Callable[..., ActionContext],
    server: LoopbackServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pressured.lua")
    server.routes["/x"] = Route(200, b"read ok")
    storage.write("keep", b"kept")
    scripts = make_scripts(
        handler(
            """
        assert(ctx.dry_run == true)
        assert(storage.write("new", "data") == true)
        assert(storage.remove("keep") == true)
        assert(storage.rename("keep", "moved") == true)
        local w = storage.open("handle", "w") w:write("xyz") w:close()
        assert(http.fetch(URL).body == "read ok")
        local post = http.fetch("POST", URL, {body = "side effect"})
        assert(post.dry_run == true and post.error:find("not sent", 1, true), post.error)
        local d = http.download(URL, "downloaded")
        assert(d.dry_run == true)
        """,
            url=server.url("/x"),
        ),
        ctx=make_ctx(dry_run=True),
    )
    run_ok(scripts)
    assert sorted(storage.list()) == ["keep"]
    assert [s.method for s in server.seen] == ["GET"]
    messages = [m for _, m in script_logs(caplog)]
    assert any("dry run: would write 4 bytes to storage key 'new'" in m for m in messages)


def test_failure_str_names_script_and_line() -> None:
    failure = ScriptFailure("x.lua", "boom", line=3, file="x.lua")
    assert str(failure) == "x.lua:3: boom"
    assert str(ScriptFailure("x.lua", "boom")) == "x.lua: boom"
    assert (
        str(ScriptFailure("x.lua", "boom", line=2, file="lib/u.lua")) == "x.lua: lib/u.lua:2: boom"
    )
    assert re.match(r"^x\.lua", str(failure))
