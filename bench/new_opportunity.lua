-- wrk: open a new opportunity per request (authenticated). ERP_BENCH_TOKEN holds the bearer token.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")
wrk.body = '{"customer_id":"cust-1","title":"Fleet tracking","owner":"wanjiru","amount":250000}'

done = common.done
