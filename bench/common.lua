-- What the wrk scripts share: the ids to pick from, a random sequence per thread, and the
-- one-line JSON summary bench/run.py reads.
local common = {}

-- The ids in ERP_BENCH_IDS, one per line.
function common.ids()
  local ids = {}
  for line in io.lines(os.getenv("ERP_BENCH_IDS")) do ids[#ids + 1] = line end
  return ids
end

-- Each thread its own random sequence: with one seed, both would send the same ids at the
-- same moment (for updates: measuring nothing but version conflicts).
local threads = 0
function common.setup(thread)
  threads = threads + 1
  thread:set("seed", threads * 7919)
end

function common.init(args)
  math.randomseed(os.time() + seed)  -- `seed`: the global that setup gave this thread
end

function common.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"non2xx":%d,"socket_errors":%d,"mean_ms":%.3f,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end

return common
