-- Linearizable range reads (etcd's default, not serializable) of one key: "aG90" is base64 for "hot".
request = function()
  return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"}, '{"key": "aG90"}')
end
