-- Loaded after a generated line `targets = {{host, port}, ...}` and before the scenario.
-- Every wrk thread holds one connection; setup spreads the threads over the targets
-- (wrk 4's thread.addr), so one wrk process loads every node and its latency histogram
-- covers every request: the percentiles need no merging.
local threads = {}

setup = function(thread)
  local n = #threads + 1
  local target = targets[(n - 1) % #targets + 1]
  thread.addr = wrk.lookup(target[1], target[2])[1]
  thread:set("thread_id", n)
  threads[n] = thread
end

-- Per-thread count of every status code, so non-2xx answers are reported, not just those >= 400.
statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- One JSON line for benchmarks/wrk.py.
done = function(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%d": %d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "statuses": {%s}, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p99.9": %d, "max": %d}}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
