-- The sandbox prelude of pressured: loaded by sandbox.py, once per interpreter.
local py, TIMEOUT_MSG, HOOK_COUNT = ...

local debug_sethook, debug_getinfo = debug.sethook, debug.getinfo
local raw_load, raw_pcall, raw_xpcall = load, pcall, xpcall
local raw_setmetatable, raw_getmetatable, raw_rawget = setmetatable, getmetatable, rawget
local raw_collect = collectgarbage
local pack, unpack, concat = table.pack, table.unpack, table.concat
local co_create, co_resume, co_close = coroutine.create, coroutine.resume, coroutine.close
local tostring, type, error, select, pairs, next = tostring, type, error, select, pairs, next
local expired, settle = py.expired, py.settle
local PRELUDE_SOURCE = debug_getinfo(1, "S").source

local timed_out = false
local function hook()
  if expired() then
    timed_out = true
    error(TIMEOUT_MSG, 0)
  end
end
debug_sethook(hook, "", HOOK_COUNT)

-- After pcall, xpcall or coroutine.resume: re-raise the timeout the script tried to catch. The
-- deadline is also checked on every caught error, because near the C-stack limit the hook
-- itself cannot be called (Lua raises "C stack overflow" in its place), so a script recursing
-- through pcall would otherwise never see it fire.
local function stopped(ok, ...)
  if timed_out then error(TIMEOUT_MSG, 0) end
  if not ok and expired() then
    timed_out = true
    error(TIMEOUT_MSG, 0)
  end
  return ok, ...
end

local function refuse(what)
  return "pressured: " .. what .. " is not available in the Lua sandbox"
end

-- reading one of the ``refused`` names of ``t`` is an error that says so; other names are nil
local function guarded(t, label, refused, allowed)
  return raw_setmetatable(t, {
    __index = function(_, k)
      if refused[k] then error(refuse(label .. "." .. tostring(k)) .. (allowed or ""), 2) end
      return nil
    end,
    __metatable = false,
  })
end

local function copy(t, skip)
  local out = {}
  for k, v in pairs(t) do
    if k ~= skip then out[k] = v end
  end
  return out
end

-- wrap a host function: it answers (true, values...) or (false, message[, timed_out]); an
-- error names the line ``level`` frames up (2: whoever called the wrapper)
local function host(fn, level)
  level = level or 2
  return function(...)
    local r = pack(fn(...))
    settle()
    if r[1] then return unpack(r, 2, r.n) end
    if r[3] then
      timed_out = true
      error(r[2], 0)
    end
    error(r[2], level)
  end
end

local env = {}
local loaded = {}

-- string: no dump, and the string metatable points at the safe copy so ("").dump is refused
local safe_string = guarded(copy(string, "dump"), "string", { dump = true })
local string_mt = raw_getmetatable("")
string_mt.__index = safe_string
string_mt.__metatable = false

local safe_os = guarded(
  { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }, "os",
  { execute = true, exit = true, getenv = true, remove = true, rename = true, tmpname = true,
    setlocale = true },
  " (only os.time, os.clock, os.date and os.difftime are)")

local function hooked(f)
  local co = co_create(f)
  debug_sethook(co, hook, "", HOOK_COUNT)
  return co
end

local function wrapped_result(co, ok, ...)
  stopped(ok)
  if ok then return ... end
  co_close(co)
  error((...), 0)
end

local safe_coroutine = copy(coroutine)
safe_coroutine.create = hooked
safe_coroutine.resume = function(co, ...) return stopped(co_resume(co, ...)) end
safe_coroutine.wrap = function(f)
  local co = hooked(f)
  return function(...) return wrapped_result(co, co_resume(co, ...)) end
end

local function safe_load(chunk, chunkname, mode, fenv)
  if mode ~= nil and mode ~= "t" then
    error("pressured: load() takes text chunks only (mode \"t\"); binary chunks are refused", 2)
  end
  if fenv == nil then fenv = env end
  return raw_load(chunk, chunkname, "t", fenv)
end

local function safe_setmetatable(t, mt)
  if type(mt) == "table" and raw_rawget(mt, "__gc") ~= nil then
    error("pressured: __gc metamethods are not allowed in the Lua sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end

local function safe_collectgarbage(opt, arg)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return raw_collect(opt, arg)
  end
  error(refuse("collectgarbage(\"" .. tostring(opt) .. "\")"), 2)
end

local builtin_modules = {
  string = safe_string, table = nil, math = nil, utf8 = nil,
  coroutine = safe_coroutine, os = safe_os,
}
local find_module = host(py.find_module, 3)
local function safe_require(name)
  if type(name) ~= "string" then
    error("pressured: require() takes a module name (got " .. type(name) .. ")", 2)
  end
  local lib = builtin_modules[name]
  if lib ~= nil then return lib end
  if loaded[name] ~= nil then return loaded[name] end
  local text, path = find_module(name)  -- not a tail call: errors name the script's line
  local fn, err = raw_load(text, "@" .. path, "t", env)
  if not fn then error(err, 0) end
  local result = fn(name, path)
  if result == nil then result = true end
  loaded[name] = result
  return result
end

local function text_of(sep, ...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  return concat(parts, sep)
end

local py_log = py.log
local log = {}
for _, level in ipairs({ "trace", "debug", "info", "warn", "error" }) do
  log[level] = function(...) py_log(level, text_of(" ", ...)) end
end
log.warning = log.warn
local function safe_print(...) py_log("info", text_of("\t", ...)) end

local http = {
  fetch = host(py.fetch),
  download = host(py.download),
  stream = function(url, callback, opts)
    if type(callback) ~= "function" then
      error("http.stream: the second argument must be a function (got " .. type(callback) .. ")", 2)
    end
    local pending
    local function trampoline(chunk, info)
      local r = pack(raw_pcall(callback, chunk, info))
      if not r[1] then
        pending = { r[2] }
        return false
      end
      return r[2] ~= false
    end
    local r = pack(py.stream(url, trampoline, opts))
    settle()
    if timed_out then error(TIMEOUT_MSG, 0) end
    if pending then error(pending[1], 0) end
    if r[1] then return unpack(r, 2, r.n) end
    if r[3] then
      timed_out = true
      error(r[2], 0)
    end
    error(r[2], 2)
  end,
}

local handle_ids = raw_setmetatable({}, { __mode = "k" })
local h_read, h_write = host(py.h_read, 3), host(py.h_write, 3)
local h_close = host(py.h_close, 3)
local function handle_id(h, what)
  local id = type(h) == "table" and handle_ids[h]
  if not id then
    error("storage handle: call h:" .. what .. "(...), not h." .. what .. "(...)", 3)
  end
  return id
end
local handle_methods = {
  read = function(h, n)
    local data, err = h_read(handle_id(h, "read"), n)
    return data, err
  end,
  write = function(h, data)
    local ok, err = h_write(handle_id(h, "write"), data)
    if ok == nil then return nil, err end
    return h
  end,
  close = function(h)
    local ok = h_close(handle_id(h, "close"))
    return ok
  end,
}
local handle_mt = {
  __index = handle_methods,
  __close = function(h) h_close(handle_ids[h]) end,
  __metatable = false,
}
local open_handle = host(py.open, 3)
local storage = {
  write = host(py.write),
  read = host(py.read),
  remove = host(py.remove),
  exists = host(py.exists),
  rename = host(py.rename),
  open = function(key, mode)
    local id, err = open_handle(key, mode)
    if id == nil then return nil, err end
    local h = raw_setmetatable({}, handle_mt)
    handle_ids[h] = id
    return h
  end,
}

local function readonly(t, path)
  for k, v in pairs(t) do
    if type(v) == "table" then t[k] = readonly(v, path .. "." .. tostring(k)) end
  end
  return raw_setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("pressured: " .. path .. " is read-only (tried to set " .. tostring(k) .. ")", 2)
    end,
    __len = function() return #t end,
    __pairs = function() return next, t, nil end,
    __metatable = false,
  })
end

local FORBIDDEN = {
  io = true, debug = true, package = true, dofile = true, loadfile = true, python = true,
  loadstring = true, module = true, setfenv = true, getfenv = true, newproxy = true,
}
for k, v in pairs({
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = function(f, ...) return stopped(raw_pcall(f, ...)) end,
  xpcall = function(f, h, ...)
    -- Lua runs a message handler for an error raised in a hook with hooks off; after the
    -- timeout the script's handler is skipped, or a looping handler could never be stopped.
    local function guarded_handler(e)
      if timed_out then return e end
      return h(e)
    end
    return stopped(raw_xpcall(f, guarded_handler, ...))
  end,
  select = select, tonumber = tonumber, tostring = tostring, type = type,
  rawequal = rawequal, rawlen = rawlen, rawget = rawget, rawset = rawset,
  setmetatable = safe_setmetatable, getmetatable = raw_getmetatable,
  load = safe_load, require = safe_require, print = safe_print,
  collectgarbage = safe_collectgarbage,
  string = safe_string, table = copy(table), math = copy(math), utf8 = copy(utf8),
  coroutine = safe_coroutine, os = safe_os,
  log = log, http = http, storage = storage,
  _VERSION = _VERSION,
}) do env[k] = v end
builtin_modules.table, builtin_modules.math = env.table, env.math
builtin_modules.utf8 = env.utf8
env._G = env
raw_setmetatable(env, {
  __index = function(_, k)
    if FORBIDDEN[k] then error(refuse("'" .. tostring(k) .. "'"), 2) end
    return nil
  end,
  __metatable = false,
})

-- nothing privileged stays reachable through the globals of this interpreter
for _, k in ipairs({ "io", "debug", "package", "dofile", "loadfile", "load", "require",
                     "python", "collectgarbage", "os" }) do
  _G[k] = nil
end

local ours = raw_setmetatable({}, { __mode = "k" })
local function msgh(e)
  local line, src
  local level = 2
  while true do
    local info = debug_getinfo(level, "Sl")
    if not info then break end
    if info.what ~= "C" and info.source ~= PRELUDE_SOURCE and info.currentline > 0 then
      line, src = info.currentline, info.source
      break
    end
    level = level + 1
  end
  local msg
  if type(e) == "string" then
    msg = e
  else
    local ok, s = raw_pcall(tostring, e)
    msg = ok and type(s) == "string" and s or ("(a " .. type(e) .. " error value)")
  end
  local out = { msg = msg, line = line, src = src }
  ours[out] = true
  return out
end

local function outcome(ok, e)
  if ok then return true end
  if type(e) == "table" and ours[e] then
    return false, e.msg, e.line, e.src, timed_out
  end
  return false, tostring(e), nil, nil, timed_out
end

local api = {}
function api.load(text, chunkname)
  settle()
  timed_out = false
  local fn, err = raw_load(text, chunkname, "t", env)
  if not fn then return false, err end
  local ok, e = raw_xpcall(fn, msgh)
  if not ok then return outcome(ok, e) end
  if type(raw_rawget(env, "on_event")) ~= "function" then
    return false, "does not define a function on_event(event, ctx)"
  end
  return true
end
function api.set_config(t)
  settle()
  env.config = readonly(t, "config")
end
function api.run(event, ctx)
  settle()
  timed_out = false
  local handler = raw_rawget(env, "on_event")
  if type(handler) ~= "function" then
    return false, "on_event is no longer a function (got " .. type(handler) .. ")"
  end
  ctx.time_iso = host(py.time_iso)
  ctx.getenv = host(py.getenv)
  return outcome(raw_xpcall(handler, msgh, event, ctx))
end
return api
