"""The ``lua`` action: configuration checked at start, every handler run, failures counted, and
the bundled heapdump script end to end (real HTTP on loopback, real LocalStorage)."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.lua import LuaAction, bundled_script
from pressured.errors import ActionError, ConfigError
from pressured.model import Identity, rfc3339
from pressured.storage.local import LocalStorage
from tests.lua import EVENT_TIME, LoopbackServer, Route, oom_kill, pressure

MakeAction = Callable[..., LuaAction]

OK_SCRIPT = """
function on_event(event, ctx)
  assert(storage.write("ran/" .. ctx.script:match("[^/]+$"), "1"))
end
"""


@pytest.fixture
def make_action(make_ctx: Callable[..., ActionContext]) -> Iterator[MakeAction]:
    made: list[LuaAction] = []

    def make(
        options: dict[str, Any] | None = None,
        plugins_lua: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> LuaAction:
        config = {"plugins": {"lua": plugins_lua or {}}}
        action = LuaAction(
            {"type": "lua", **(options or {})},
            make_ctx(config=config, dry_run=dry_run),
            where="actions[1]",
        )
        made.append(action)
        return action

    yield make
    for action in made:
        action.close()


# -- configuration ------------------------------------------------------------------------------
def test_options_from_the_action_entry(make_action: MakeAction, storage: LocalStorage) -> None:
    action = make_action({"inline_script": OK_SCRIPT, "timeout_ms": 1000})
    assert action.scripts.timeout_ms == 1000
    action.run(pressure())
    assert storage.read("ran/inline_script") == b"1"


def test_options_fall_back_to_plugins_lua(
    make_action: MakeAction, storage: LocalStorage, tmp_path: Path
) -> None:
    script = tmp_path / "one.lua"
    script.write_text(OK_SCRIPT)
    action = make_action(plugins_lua={"script": str(script), "memory_mb": 8})
    assert action.scripts.memory_mb == 8
    action.run(pressure())
    assert storage.read("ran/one.lua") == b"1"


def test_no_script_anywhere_is_a_config_error(make_action: MakeAction) -> None:
    with pytest.raises(ConfigError, match=r"^actions\[1\]: type 'lua' needs a script"):
        make_action()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"timeout_ms": 10}, r"plugins\.lua: set exactly one of .* \(got none\)"),
        (
            {"script": "/x.lua", "inline_script": "x = 1"},
            r"plugins\.lua: set exactly one of .* \(got script, inline_script\)",
        ),
        ({"script": "/no/such/file.lua"}, r"plugins\.lua\.script: no such file \(got '/no/such"),
        ({"scripts_dir": "/no/such/dir"}, r"plugins\.lua\.scripts_dir: no such directory"),
        ({"inline_script": "  "}, r"plugins\.lua\.inline_script: expected Lua source text"),
        (
            {"inline_script": "x=1", "timeout_ms": 0},
            r"plugins\.lua\.timeout_ms: expected a positive",
        ),
        ({"inline_script": "x=1", "timeout_ms": True}, r"plugins\.lua\.timeout_ms: expected"),
        (
            {"inline_script": "x=1", "memory_mb": "64"},
            r"plugins\.lua\.memory_mb: expected a positive",
        ),
        (
            {"inline_script": "x=1", "env_allow": "HOME"},
            r"plugins\.lua\.env_allow: expected a list",
        ),
        (
            {"inline_script": "x=1", "timeout_ms": 60_001},
            r"plugins\.lua\.timeout_ms: expected a positive integer up to 60000 \(got 60001\)",
        ),
        (
            {"inline_script": "x=1", "memory_mb": 4097},
            r"plugins\.lua\.memory_mb: expected a positive integer up to 4096 \(got 4097\)",
        ),
        (
            {"inline_script": "x=1", "memory_mb": 10**400},
            r"plugins\.lua\.memory_mb: expected a positive integer up to 4096 \(got 1000",
        ),
        (
            {"inline_script": "x=1", "timeout": 5},
            r"plugins\.lua\.timeout: unknown option \(did you mean 'timeout_ms'\?\)",
        ),
        (
            {"inline_script": "function on_event(e, c)\n  local x = = 1\nend"},
            r"plugins\.lua\.inline_script: inline_script:2: unexpected symbol near '='",
        ),
        (
            {"inline_script": "local x = 1"},
            r"plugins\.lua\.inline_script: inline_script: does not define a function on_event",
        ),
        (
            {"inline_script": "x = nil\nx.y = 1\nfunction on_event() end"},
            r"plugins\.lua\.inline_script: inline_script:2: attempt to index a nil value",
        ),
    ],
)
def test_bad_plugins_lua_is_a_config_error_naming_the_key(
    make_action: MakeAction, section: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        make_action(plugins_lua=section)


def test_the_limits_may_be_set_to_their_bounds(make_action: MakeAction) -> None:
    action = make_action({"inline_script": OK_SCRIPT, "timeout_ms": 60_000, "memory_mb": 4096})
    assert (action.scripts.timeout_ms, action.scripts.memory_mb) == (60_000, 4096)


def test_every_problem_of_the_section_is_reported_at_once(make_action: MakeAction) -> None:
    with pytest.raises(ConfigError) as info:
        make_action(plugins_lua={"timeout": 5, "memory_mb": 0, "env_allow": "HOME"})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "plugins.lua.timeout",
        "plugins.lua",
        "plugins.lua.memory_mb",
        "plugins.lua.env_allow",
    ]


def test_syntax_error_in_a_file_names_file_and_line(
    make_action: MakeAction, tmp_path: Path
) -> None:
    (tmp_path / "a.lua").write_text(OK_SCRIPT)
    broken = tmp_path / "b.lua"
    broken.write_text("function on_event(event, ctx)\n  if then\nend\n")
    with pytest.raises(ConfigError) as err:
        make_action({"scripts_dir": str(tmp_path)})
    assert str(err.value).startswith(f"actions[1].scripts_dir: {broken}:2: unexpected symbol")


def test_empty_scripts_dir_is_a_config_error(make_action: MakeAction, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scripts_dir: no \*\.lua files"):
        make_action({"scripts_dir": str(tmp_path)})


# -- running ------------------------------------------------------------------------------------
def test_every_handler_runs_and_a_failure_is_counted_after_all_ran(
    make_action: MakeAction,
    storage: LocalStorage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "a.lua").write_text(OK_SCRIPT)
    (tmp_path / "b.lua").write_text(
        "function on_event(event, ctx)\n  local t = nil\n  return t.field\nend\n"
    )
    (tmp_path / "c.lua").write_text(OK_SCRIPT)
    (tmp_path / "lib").mkdir()  # not a handler: only *.lua at the top are
    action = make_action({"scripts_dir": str(tmp_path)})
    assert action.scripts.names == [str(tmp_path / n) for n in ("a.lua", "b.lua", "c.lua")]

    with pytest.raises(ActionError) as err:
        action.run(pressure())
    assert str(err.value) == (
        f"lua: 1 of 3 handler(s) failed: {tmp_path / 'b.lua'}:3: "
        "attempt to index a nil value (local 't')"
    )
    assert storage.read("ran/a.lua") == b"1"
    assert storage.read("ran/c.lua") == b"1"
    errors = [r for r in caplog.records if r.name == "pressured.lua" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"{tmp_path / 'b.lua'}:3: attempt to index a nil value (local 't')"
    ]

    # the daemon goes on: the next event runs every handler again
    storage.remove("ran/a.lua")
    with pytest.raises(ActionError):
        action.run(pressure())
    assert storage.read("ran/a.lua") == b"1"


def test_runaway_handler_is_reported_and_the_next_event_runs(
    make_action: MakeAction, storage: LocalStorage
) -> None:
    action = make_action(
        {
            "inline_script": (
                "n = 0\nfunction on_event(event, ctx)\n"
                "  if event.severity == 'critical' then while true do end end\n"
                "  n = n + 1\n  assert(storage.write('n', tostring(n)))\nend\n"
            ),
            "timeout_ms": 100,
        }
    )
    with pytest.raises(
        ActionError,
        match=r"inline_script:3: pressured: script inline_script exceeded timeout_ms=100",
    ):
        action.run(pressure("critical"))
    action.run(pressure("warn"))
    action.run(pressure("recovered"))
    assert storage.read("n") == b"2"


# -- the bundled heapdump script ------------------------------------------------------------------
PROFILE = gzip.compress(b"heap profile: 1: 4096 [1: 4096] @ heap/1048576\n" * 50)


def heap_key(namespace: str = "shop", pod: str = "web-7f9c") -> str:
    stamp = rfc3339(EVENT_TIME).replace("-", "").replace(":", "")
    return f"heaps/{namespace}/{pod}/{stamp}.pb.gz"


@pytest.fixture
def heapdump(make_action: MakeAction) -> Callable[..., LuaAction]:
    def make(dry_run: bool = False) -> LuaAction:
        return make_action(
            plugins_lua={"script": str(bundled_script("heapdump.lua"))}, dry_run=dry_run
        )

    return make


def test_heapdump_stores_the_profile_on_critical(
    heapdump: Callable[..., LuaAction], server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/debug/pprof/heap"] = Route(
        200, PROFILE, {"Content-Type": "application/octet-stream"}
    )
    action = heapdump()
    annotations = {"pressured.io/pprof-port": str(server.port)}
    action.run(pressure("critical", annotations=annotations))
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/debug/pprof/heap")]
    assert storage.read(heap_key()) == PROFILE
    assert heap_key() == "heaps/shop/web-7f9c/20270115T080000.500Z.pb.gz"


def test_heapdump_follows_the_path_annotation_and_defaults_to_loopback(
    heapdump: Callable[..., LuaAction], server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/custom/heap?gc=1"] = Route(200, PROFILE)
    action = heapdump()
    event = pressure(
        "critical",
        identity=Identity(namespace="ns", pod_name="api-1"),  # no pod_ip: 127.0.0.1
        annotations={
            "pressured.io/pprof-port": str(server.port),
            "pressured.io/pprof-path": "/custom/heap?gc=1",
        },
    )
    action.run(event)
    assert storage.read(heap_key("ns", "api-1")) == PROFILE


def test_heapdump_ignores_other_events(
    heapdump: Callable[..., LuaAction], server: LoopbackServer, storage: LocalStorage
) -> None:
    action = heapdump()
    annotations = {"pressured.io/pprof-port": str(server.port)}
    action.run(pressure("warn", annotations=annotations))
    action.run(pressure("recovered", annotations=annotations))
    action.run(oom_kill(annotations=annotations))
    assert server.seen == []
    assert list(storage.list()) == []


def test_heapdump_failures_are_action_errors(
    heapdump: Callable[..., LuaAction], server: LoopbackServer, storage: LocalStorage
) -> None:
    server.routes["/debug/pprof/heap"] = Route(500, b"oops")
    action = heapdump()
    with pytest.raises(
        ActionError,
        match=r"heapdump\.lua:\d+: heap profile from http://127\.0\.0\.1:\d+/debug/pprof/heap: "
        r"HTTP 500",
    ):
        action.run(pressure("critical", annotations={"pressured.io/pprof-port": str(server.port)}))
    with pytest.raises(ActionError, match=r"ConnectError"):
        action.run(pressure("critical", annotations={"pressured.io/pprof-port": "1"}))
    assert list(storage.list()) == []


def test_heapdump_dry_run_fetches_and_stores_nothing(
    heapdump: Callable[..., LuaAction],
    server: LoopbackServer,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pressured.lua")
    server.routes["/debug/pprof/heap"] = Route(200, PROFILE)
    action = heapdump(dry_run=True)
    action.run(pressure("critical", annotations={"pressured.io/pprof-port": str(server.port)}))
    assert server.seen == []
    assert list(storage.list()) == []
    assert any(
        f"dry run: would fetch http://127.0.0.1:{server.port}/debug/pprof/heap into {heap_key()}"
        in r.getMessage()
        for r in caplog.records
    )
