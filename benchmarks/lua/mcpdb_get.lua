-- Linearizable reads (mcpdb's default consistency) of one context.
request = function()
  return wrk.format("GET", "/v1/namespaces/bench/contexts/hot")
end
