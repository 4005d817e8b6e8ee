-- wrk: read one of many existing opportunities, with its stage history, per request
-- (ids from ERP_BENCH_IDS, one per line).
local ids = {}
for line in io.lines(os.getenv("ERP_BENCH_IDS")) do ids[#ids + 1] = line end
local token = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("seed", threads * 7919)
end

init = function(args)
  math.randomseed(os.time() + seed)
end

request = function()
  return wrk.format("GET", "/api/v1/crm/opportunities/" .. ids[math.random(#ids)], {["Authorization"] = token})
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"non2xx":%d,"socket_errors":%d,"mean_ms":%.3f,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
