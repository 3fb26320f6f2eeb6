-- Heap profile on critical memory pressure (the example script shipped with pressured).
--
-- On a critical memory_pressure event, fetch the Go heap profile of the pod and store it as
--   heaps/<namespace>/<pod>/<time>.pb.gz
-- The profile is read from http://<pod_ip or 127.0.0.1>:<port><path>; the pod's annotations
-- choose the port and the path, and can turn the dump off:
--   pressured.io/pprof-port      (default 6060)
--   pressured.io/pprof-path      (default /debug/pprof/heap)
--   pressured.io/pprof-enabled   ("false": no dump)
-- A pod's owner writes those annotations, so the URL is built from checked parts only: the
-- daemon hands the script their validated values in ctx.pprof (a refused value is absent, and
-- logged, so the default is used), and the script checks again what it puts in the URL: an IP
-- literal for the host, an integer 1..65535 for the port, a path that starts with "/" and has
-- no "//", "@", backslash, space or control character. Nothing else can name another host.
-- Use it with:  plugins: {lua: {script: <path of this file>}}  and  actions: [{type: lua}]
-- (pressured.actions.lua.bundled_script("heapdump.lua") gives the path). A failed fetch or
-- store is a Lua error, so the lua action reports it and counts it as failed.

local DEFAULT_PORT = 6060
local DEFAULT_PATH = "/debug/pprof/heap"

-- a storage key part: no '/', no leading dot, never empty
local function key_part(value, fallback)
  local s = tostring(value or fallback):gsub("[^%w%._-]", "_"):gsub("^%.+", "_")
  if s == "" then return fallback end
  return s
end

local function url_host(ip)
  if ip == nil then return "127.0.0.1" end
  if ip:match("^%d+%.%d+%.%d+%.%d+$") then return ip end
  if ip:find(":", 1, true) and ip:match("^[%x:.]+$") then return "[" .. ip .. "]" end -- IPv6
  error(string.format("pod_ip %q is not an IP address", ip))
end

local function url_port(port)
  if math.type(port) ~= "integer" or port < 1 or port > 65535 then
    error(string.format("pprof port %q is not a TCP port", tostring(port)))
  end
  return port
end

local function url_path(path)
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" or path:find("//", 1, true)
      or path:find("@", 1, true) or path:find("\\", 1, true) or path:find("[%s%c]") then
    error(string.format("pprof path %q is not a plain absolute path", tostring(path)))
  end
  return path
end

local function profile_url(event, pprof)
  return string.format("http://%s:%d%s", url_host(event.pod_ip),
    url_port(pprof.port or DEFAULT_PORT), url_path(pprof.path or DEFAULT_PATH))
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
  local pprof = ctx.pprof or {}
  if pprof.enabled == false then
    log.debug("heap dumps turned off by the pod's pressured.io/pprof-enabled annotation")
    return
  end
  local url, key = profile_url(event, pprof), profile_key(event)
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
