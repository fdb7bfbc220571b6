-- wrk script: GET /products/{id} with ids drawn from Zipf(s = 1.0) over
-- [1, MAX_ID]: id k is requested with probability proportional to 1/k.
local max_id = tonumber(os.getenv("MAX_ID") or "100000")
local cdf = {}

function setup(thread)
  thread:set("seed", math.random(1, 2^30))
end

function init(args)
  math.randomseed(seed or os.time())
  local total = 0
  for k = 1, max_id do
    total = total + 1 / k
    cdf[k] = total
  end
  for k = 1, max_id do
    cdf[k] = cdf[k] / total
  end
end

-- Smallest k with cdf[k] >= u (binary search).
local function draw()
  local u = math.random()
  local lo, hi = 1, max_id
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  return wrk.format("GET", "/products/" .. draw())
end
