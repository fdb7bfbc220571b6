-- wrk script: PATCH /products/{id} (a new price) over uniformly random ids
-- in [1, MAX_ID], authenticated with TOKEN.
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
local token = os.getenv("TOKEN") or "bench"

function setup(thread)
  thread:set("seed", math.random(1, 2^30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local body = string.format('{"price": %d.%02d}', math.random(1, 999), math.random(0, 99))
  return wrk.format("PATCH", "/products/" .. math.random(1, max_id), {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
