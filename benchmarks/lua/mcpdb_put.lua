-- 1 KiB memory contexts written to rotating ids (k0 .. k9999); each thread starts
-- elsewhere in the rotation (7919 is prime, so the 32 starting points differ).
local body = '{"kind": "memory", "facts": ["' .. string.rep("x", 1024) .. '"]}'
local headers = {["Content-Type"] = "application/json"}
local counter = 0
request = function()
  counter = counter + 1
  local id = (thread_id * 7919 + counter) % 10000
  return wrk.format("PUT", "/v1/namespaces/bench/contexts/k" .. id, headers, body)
end
