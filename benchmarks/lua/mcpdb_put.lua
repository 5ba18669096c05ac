-- 1 KiB memory contexts written to rotating ids.
local counter = 0
local thread_offset = math.random(1, 1000000)
local body = '{"kind": "memory", "facts": ["' .. string.rep("x", 1000) .. '"]}'
request = function()
  counter = counter + 1
  local id = "k" .. ((thread_offset + counter) % 10000)
  return wrk.format("PUT", "/v1/namespaces/bench/contexts/" .. id, {["Content-Type"] = "application/json"}, body)
end
