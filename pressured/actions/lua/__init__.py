"""Lua scripts run on events, in a sandbox (lupa, Lua 5.4): the ``lua`` action and its parts.

action      LuaAction, the ``lua`` entry of the ``pressured.actions.v1`` group
sandbox     the scripts, their interpreters and limits
"""

from pressured.actions.lua.action import LuaAction
from pressured.actions.lua.budget import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, HOOK_INSTRUCTIONS
from pressured.actions.lua.host_ctx import TRACE
from pressured.actions.lua.sandbox import (
    LuaScripts,
    ScriptFailure,
    ScriptSource,
    bundled_script,
)

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_MS",
    "HOOK_INSTRUCTIONS",
    "TRACE",
    "LuaAction",
    "LuaScripts",
    "ScriptFailure",
    "ScriptSource",
    "bundled_script",
]
