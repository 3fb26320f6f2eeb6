-- Heap profile on critical memory pressure (the example script shipped with pressured).
--
-- On a critical memory_pressure event, fetch the Go heap profile of the pod and store it as
--   heaps/<namespace>/<pod>/<time>.pb.gz
-- The profile is read from http://<pod_ip or 127.0.0.1>:<port><path>; the pod's annotations
-- choose the port and the path:
--   pressured.io/pprof-port   (default 6060)
--   pressured.io/pprof-path   (default /debug/pprof/heap)
-- Use it with:  plugins: {lua: {script: <path of this file>}}  and  actions: [{type: lua}]
-- (pressured.actions.lua.bundled_script("heapdump.lua") gives the path). A failed fetch or
-- store is a Lua error, so the lua action reports it and counts it as failed.

local DEFAULT_PORT = "6060"
local DEFAULT_PATH = "/debug/pprof/heap"

-- a storage key part: no '/', no leading dot, never empty
local function key_part(value, fallback)
  local s = tostring(value or fallback):gsub("[^%w%._-]", "_"):gsub("^%.+", "_")
  if s == "" then return fallback end
  return s
end

local function profile_url(event)
  local ann = event.annotations or {}
  local host = event.pod_ip or "127.0.0.1"
  if host:find(":", 1, true) then host = "[" .. host .. "]" end -- IPv6 literal
  local port = ann["pressured.io/pprof-port"] or DEFAULT_PORT
  local path = ann["pressured.io/pprof-path"] or DEFAULT_PATH
  if path:sub(1, 1) ~= "/" then path = "/" .. path end
  return string.format("http://%s:%s%s", host, port, path)
end

local function profile_key(event)
  -- 2026-11-21T05:22:14.123Z -> 20261121T052214.123Z: no ':' in object names
  local stamp = (event.time or "unknown"):gsub("[-:]", "")
  local pod = event.pod_name or (event.cgroup or "machine"):match("([^/]+)/*$") or "machine"
  return string.format("heaps/%s/%s/%s.pb.gz",
    key_part(event.namespace, "_"), key_part(pod, "_"), key_part(stamp, "unknown"))
end

function on_event(event, ctx)
  if event.event_type ~= "memory_pressure" or event.severity ~= "critical" then
    return
  end
  local url, key = profile_url(event), profile_key(event)
  if ctx.dry_run then
    log.info("dry run: would fetch " .. url .. " into " .. key)
    return
  end
  local res = http.fetch("GET", url, { headers = { Accept = "application/octet-stream" } })
  -- failures are Lua errors: the action reports them and actions_failed_total counts them
  if res.error then
    error("heap profile from " .. url .. ": " .. res.error)
  end
  if res.status ~= 200 then
    error("heap profile from " .. url .. ": HTTP " .. res.status)
  end
  local ok, err = storage.write(key, res.body)
  if not ok then
    error("storing the heap profile as " .. key .. ": " .. err)
  end
  log.info(string.format("heap profile of %s/%s stored as %s (%d bytes)",
    event.namespace or "-", event.pod_name or "-", key, #res.body))
end
