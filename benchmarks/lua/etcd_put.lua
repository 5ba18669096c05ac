-- 1 KiB values written to rotating keys through etcd's JSON gateway, which takes
-- base64. The key's base64 text is built directly: "k" and 7 digits are 8 base64
-- characters, a distinct 6-byte key per id. "eHh4" is base64 for "xxx", so the
-- value is 1,026 bytes. Ids rotate as in mcpdb_put.lua.
local value = string.rep("eHh4", 342)
local headers = {["Content-Type"] = "application/json"}
local counter = 0
request = function()
  counter = counter + 1
  local key = string.format("k%07d", (thread_id * 7919 + counter) % 10000)
  return wrk.format("POST", "/v3/kv/put", headers, '{"key": "' .. key .. '", "value": "' .. value .. '"}')
end
