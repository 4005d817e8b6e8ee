-- wrk: read one of many existing opportunities, with its stage history, per request
-- (ids from ERP_BENCH_IDS, one per line).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
local ids = common.ids()
local token = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")

setup, init, done = common.setup, common.init, common.done

request = function()
  return wrk.format("GET", "/api/v1/crm/opportunities/" .. ids[math.random(#ids)], {["Authorization"] = token})
end
