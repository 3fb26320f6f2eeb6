"""What a runtime capture adds to the event reaches Lua as a Go capture's does: a Lua action
configured after heapdump reads ``event.pprof_top`` (Node.js) and ``event.heap_top`` (JVM)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from pressured.actions.base import ActionContext
from pressured.actions.heapdump import HeapdumpAction
from pressured.actions.lua import LuaAction
from pressured.model import Identity
from pressured.storage.local import LocalStorage
from tests.pprof.conftest import pod_event
from tests.runtimes.conftest import LEAK_CLASS, LEAK_FUNCTION, free_port

SCRIPT = """
function on_event(event, ctx)
  local top = event.pprof_top and event.pprof_top[1]["function"] or event.heap_top[1].name
  assert(storage.write("seen/top", top))
end
"""


def _lua(storage: LocalStorage) -> LuaAction:
    ctx = ActionContext(config={"plugins": {"lua": {}}}, storage_factory=lambda: storage)
    return LuaAction({"type": "lua", "inline_script": SCRIPT}, ctx, where="actions[1]")


def test_lua_reads_node_and_jvm_captures(
    start_node: Callable[..., subprocess.Popen[str]],
    start_jvm: Callable[..., subprocess.Popen[str]],
    make_action: Callable[..., HeapdumpAction],
    storage: LocalStorage,
) -> None:
    port = free_port()
    node = start_node(f"--inspect-port={port}")
    java = start_jvm(100_000)
    heapdump = make_action({"inspector_port": port, "sample_seconds": 1, "full_dump": "never"})
    lua = _lua(storage)
    try:
        for pid, expected in ((node.pid, LEAK_FUNCTION), (java.pid, LEAK_CLASS)):
            event = pod_event(Identity(pod_name=f"p{pid}"), key=f"k{pid}", extra={"pids": [pid]})
            heapdump.run(event)
            lua.run(event)
            assert storage.read("seen/top").decode() == expected
    finally:
        lua.close()
