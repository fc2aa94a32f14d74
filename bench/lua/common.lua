-- Appended to every case script by bench/wrkdrive.py: per-worker counts (when the
-- case sets count_workers) and one machine-readable summary line.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

if count_workers then
  counts = {}
  function response(status, headers, body)
    local w = body and string.match(body, "worker (%-?%d+)")
    if w then counts[w] = (counts[w] or 0) + 1 end
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if type(c) == "table" then
      for k, v in pairs(c) do merged[k] = (merged[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(merged) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"mean_us":%.1f,"p50_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"workers":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, table.concat(parts, ",")))
end
