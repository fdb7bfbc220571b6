-- wrk script for bench/chaos.sh and bench/soak.sh: GET /products/{id} over
-- uniformly random ids in [FIRST_ID, LAST_ID], counting responses by status.
--
-- Env: FIRST_ID (1), LAST_ID (1000): the id range read;
--      DELAY_MS (0): pause of each connection between its requests (a rate
--      limit: at most CONNECTIONS * 1000 / DELAY_MS requests a second).
-- At the end it prints one line that the scripts parse (statuses, and the
-- answers' X-Cache values):
--   CHAOS requests=N p50_us=.. p99_us=.. max_us=.. connect=.. read=.. write=.. timeout=.. status=200:N,503:N x_cache=HIT-L1:N,STALE:N
local first_id = tonumber(os.getenv("FIRST_ID") or "1")
local last_id = tonumber(os.getenv("LAST_ID") or "1000")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local threads = {}

function setup(thread)
  thread:set("seed", math.random(1, 2^30))
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(seed or os.time())
  counts = {}
  sources = {}
end

function request()
  return wrk.format("GET", "/products/" .. math.random(first_id, last_id))
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  local source = headers["x-cache"] or headers["X-Cache"] or "none"
  sources[source] = (sources[source] or 0) + 1
end

-- "k:v,k:v" of a table, sorted.
local function joined(t)
  local items = {}
  for k, v in pairs(t) do
    table.insert(items, k .. ":" .. v)
  end
  table.sort(items)
  return table.concat(items, ",")
end

function done(summary, latency, requests)
  local statuses, x_cache = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do
      statuses[status] = (statuses[status] or 0) + n
    end
    for source, n in pairs(thread:get("sources") or {}) do
      x_cache[source] = (x_cache[source] or 0) + n
    end
  end
  local e = summary.errors
  io.write(string.format(
    "CHAOS requests=%d p50_us=%d p99_us=%d max_us=%d connect=%d read=%d write=%d timeout=%d status=%s x_cache=%s\n",
    summary.requests, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, joined(statuses), joined(x_cache)))
end
