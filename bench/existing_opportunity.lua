-- wrk: update one of many existing opportunities per request (ids from ERP_BENCH_IDS, one per line).
local ids = {}
for line in io.lines(os.getenv("ERP_BENCH_IDS")) do ids[#ids + 1] = line end
local token = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")
local counter = 0
local threads = 0

-- Each thread its own random sequence: with one seed, both would send the same ids at the
-- same moment and measure nothing but version conflicts.
setup = function(thread)
  threads = threads + 1
  thread:set("seed", threads * 7919)
end

init = function(args)
  math.randomseed(os.time() + seed)  -- `seed` is the global that setup gave this thread
end

request = function()
  counter = counter + 1
  local id = ids[math.random(#ids)]
  return wrk.format("POST", "/api/v1/crm/opportunities/" .. id .. "/update",
    {["Content-Type"] = "application/json", ["Authorization"] = token},
    '{"title":"renamed ' .. counter .. '-' .. math.random(1000000000) .. '"}')
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"non2xx":%d,"socket_errors":%d,"mean_ms":%.3f,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
