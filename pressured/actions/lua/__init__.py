"""Lua scripts run on events, in a sandbox (lupa, Lua 5.4) in a worker process: the ``lua``
action.

A script defines ``on_event(event, ctx)``. Scripts come from exactly one of
``plugins.lua.script`` (a file), ``plugins.lua.scripts_dir`` (every ``*.lua`` in it, in name
order, each handler called) or ``plugins.lua.inline_script`` (text). Every script is compiled
and its top level run at start, so a syntax error is a ConfigError naming the file and line.

The scripts of one action run in one worker process (``python -m pressured.actions.lua.worker``)
with its own address-space and CPU limits and a trimmed environment; the daemon waits for each
call at most timeout_ms plus a grace, without holding the GIL, and kills the worker when the
answer does not come (a long C call the time hook cannot interrupt). A new worker, which loads
the scripts again, takes the next call. Storage calls and log records go to the daemon through
the pipe; HTTP runs in the worker.

What a script sees (nothing else; each script has its own interpreter and environment table):

    event           the event contract (``Event.to_json()``) as nested tables; ``annotations``
                    is a table, ``pprof_top`` is there when the heapdump action added it; JSON
                    nulls are absent (nil). A ``pressured.io/*`` annotation is there only when
                    its value passes the daemon's own check (pressured.k8s.annotations; the
                    port and path in their checked form); a refused one is absent and logged
    ctx.pprof       the pod's accepted pprof annotations as values: {enabled=boolean,
                    port=integer 1..65535, path="/..." (no "//", "@", backslash, space or
                    control character)}, each absent when not (validly) annotated
    ctx.dry_run     true when pressured runs dry (then storage writes are logged, not done, and
                    only GET/HEAD requests are sent)
    ctx.time_iso([t])  RFC 3339 UTC time of now (or of epoch seconds t)
    ctx.getenv(name)   only PRESSURED_* names and the names listed in ``plugins.lua.env_allow``;
                    any other name reads as nil, so cloud credentials in the daemon's environment
                    never reach a script unless named
    ctx.script      the script's name
    config          the whole effective configuration, read-only nested tables
    log.trace/debug/info/warn/error(...)   logger "pressured.lua"; print() logs at info
    http.fetch(url [, opts]) or http.fetch(method, url [, opts])
                    -> {status=, body=, headers={lower-case name = value}} or {error=[, status=]}
                    opts: method, headers, body, timeout_ms (the whole transfer), max_bytes,
                    follow_redirects. The given headers are always sent, plus
                    User-Agent: pressured/<version>
    http.download(url, key [, opts]) -> {status=, bytes=} or {error=[, status=]}: streams the
                    body into storage; a non-2xx answer stores nothing
    http.stream(url, callback(chunk, info) -> bool [, opts]) -> {status=, bytes=} or
                    {error=[, status=]}; info = {status=, headers=, bytes_so_far=}; returning
                    false stops the transfer
    storage.write(key, data) / read(key) / remove(key) / exists(key) / rename(src, dst)
    storage.open(key, "r"|"w") -> handle: h:read([n|"a"]), h:write(data), h:close()
                    h:read(n) returns nil at the end, h:read("a") the rest ("" at the end).
                    Storage failures (bad key, missing key, backend error) are returned Lua
                    style: nil, "message". A handle left open when on_event returns is closed;
                    an unclosed write is discarded, never committed half-done.
    safe globals    assert error ipairs next pairs pcall select tonumber tostring type xpcall
                    rawequal rawlen rawget rawset setmetatable getmetatable print _G _VERSION,
                    string (no dump), table, math, utf8, coroutine, os.time/clock/date/difftime,
                    collectgarbage("count"|"collect"|"step"), load (text chunks only, the
                    script's environment by default), require (Lua files beside the script)

Refused, each with a Lua error that names what is not available: io, debug, package, dofile,
loadfile, os.execute and every other os function, string.dump, binary chunks, C modules,
``python``, and ``__gc`` metamethods (a finalizer would run outside the script's time budget).

The limits (``timeout_ms``, ``memory_mb``) are described in budget.py, the worker's own in
worker.py. The modules:

    action        LuaAction, the ``lua`` entry of the ``pressured.actions.v1`` group
    scripts       LuaScripts (config, the worker's life, one call per handler), in the daemon
    process       the daemon's side of a worker: start, request, storage calls, kill
    protocol      the frames on the pipe between them
    worker        the worker process: its limits, its sandboxes, storage through the pipe
    sandbox       one Sandbox (interpreter) per script, in the worker
    budget        the time budget and memory cap of one interpreter
    convert       Python <-> Lua values
    host          what every host function shares (answers, failures, the owner interface)
    host_ctx      log.*, print, ctx.time_iso, ctx.getenv
    host_http     http.fetch, http.download, http.stream
    host_storage  storage.* and storage handles
    prelude.lua   the Lua side: hooks, wrappers, the script's environment
"""

from pressured.actions.lua.action import LuaAction
from pressured.actions.lua.budget import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, HOOK_INSTRUCTIONS
from pressured.actions.lua.host_ctx import TRACE
from pressured.actions.lua.sandbox import ScriptFailure, ScriptSource, bundled_script
from pressured.actions.lua.scripts import LuaScripts

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
