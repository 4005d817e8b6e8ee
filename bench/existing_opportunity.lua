-- wrk: update one of many existing opportunities per request (ids from ERP_BENCH_IDS, one per line).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
local ids = common.ids()
local token = "Bearer " .. os.getenv("ERP_BENCH_TOKEN")
local counter = 0

setup, init, done = common.setup, common.init, common.done

request = function()
  counter = counter + 1
  local id = ids[math.random(#ids)]
  return wrk.format("POST", "/api/v1/crm/opportunities/" .. id .. "/update",
    {["Content-Type"] = "application/json", ["Authorization"] = token},
    '{"title":"renamed ' .. counter .. '-' .. math.random(1000000000) .. '"}')
end
