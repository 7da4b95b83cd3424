-- wrk reporter for loadtests/bench.py: one JSON line with the counts and latency percentiles
-- (p99.9 included, which wrk's own --latency table does not print). Latencies are microseconds.
--
-- Paced mode: `wrk ... -s wrk_report.lua URL -- RATE` sends RATE requests/s in all (one wrk thread),
-- instead of as many as the server answers. One schedule for all connections: a connection that is
-- free takes the next slot (one every 1/RATE s) and waits for it in delay(); slots that no connection
-- was free to take are dropped, not made up in a burst. Unlike a fixed pause per connection
-- (connections / RATE between its requests), the rate then does not fall as latency grows, as long
-- as the connections suffice (connections > RATE × latency). wrk times a request from its send.
local rate = nil

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrk_report_timespec;
int clock_gettime(int clock_id, wrk_report_timespec *tp);
]]
local now_ts = ffi.new("wrk_report_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, now_ts) -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

init = function(args)
  rate = tonumber(args[1])
  if rate and rate > 0 then
    local interval, next_slot = 1000 / rate, nil
    -- wrk checks for a global delay() after init(): defined here, unpaced runs have none.
    delay = function()
      local now = now_ms()
      local slot = next_slot and math.max(next_slot, now) or now
      next_slot = slot + interval
      -- wrk's timers count whole milliseconds (it truncates): round to the nearest.
      return math.floor(slot - now + 0.5)
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
