-- Linearizable range reads (etcd's default) of one key.
request = function()
  return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"}, '{"key": "aG90"}')
end
