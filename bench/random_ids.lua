-- wrk script: GET /products/{id} over uniformly random ids in [1, MAX_ID].
local max_id = tonumber(os.getenv("MAX_ID") or "100000")

function setup(thread)
  thread:set("seed", math.random(1, 2^30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  return wrk.format("GET", "/products/" .. math.random(1, max_id))
end
