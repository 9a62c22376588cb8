-- Mixed production-like load for wrk: heartbeats, reads by id, lists, session updates and
-- creates, task creation, machine heartbeats. Env: API_KEY, IDS_FILE (session ids, one per
-- line), MACHINE_ID (a registered machine). Each request is chosen at random with weights.
local key = os.getenv("API_KEY")
local ids = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
  for line in io.lines(os.getenv("IDS_FILE")) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  machine = os.getenv("MACHINE_ID") or "load-machine"
  headers = { ["X-API-Key"] = key, ["Content-Type"] = "application/json" }
end

local function id() return ids[math.random(#ids)] end

-- weight, builder
local mix = {
  { 55, function() return wrk.format("POST", "/api/sessions/" .. id() .. "/heartbeat", headers, "{}") end },
  { 20, function() return wrk.format("GET", "/api/sessions/" .. id(), headers) end },
  { 6,  function() return wrk.format("GET", "/api/sessions?status=active&limit=50", headers) end },
  { 5,  function() return wrk.format("PUT", "/api/sessions/" .. id(), headers,
          '{"metadata":{"step":' .. math.random(1000) .. '}}') end },
  { 4,  function() return wrk.format("POST", "/api/tasks", headers,
          '{"session_id":"' .. id() .. '","project_id":"load","task_name":"step"}') end },
  { 3,  function() return wrk.format("POST", "/api/sessions", headers,
          '{"project_id":"load","machine_id":"' .. machine .. '"}') end },
  { 3,  function() return wrk.format("GET", "/api/sessions/" .. id() .. "/health", headers) end },
  { 2,  function() return wrk.format("POST", "/api/machines/" .. machine .. "/heartbeat", headers, "{}") end },
  { 2,  function() return wrk.format("GET", "/api/machines/" .. machine, headers) end },
}
local total = 0
for _, m in ipairs(mix) do total = total + m[1] end

function request()
  local r = math.random(total)
  for _, m in ipairs(mix) do
    r = r - m[1]
    if r <= 0 then return m[2]() end
  end
  return mix[1][2]()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
