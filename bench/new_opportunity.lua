-- wrk: open a new opportunity per request (authenticated). ERP_BENCH_TOKEN holds the bearer token.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")
wrk.body = '{"customer_id":"cust-1","title":"Fleet tracking","owner":"wanjiru","amount":250000}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"non2xx":%d,"socket_errors":%d,"mean_ms":%.3f,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
