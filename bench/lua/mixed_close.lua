-- Case 2: a new connection per request, expensive requests of mixed cost.
-- Costs are burnt CPU milliseconds in the demo worker; weights add to 100.
wrk.headers["Connection"] = "close"
local costs = { {1, 60}, {5, 30}, {20, 10} }
local paths = {}
for _, c in ipairs(costs) do
  for _ = 1, c[2] do paths[#paths + 1] = wrk.format("GET", "/work?cpu_ms=" .. c[1]) end
end
math.randomseed(1)
function request()
  return paths[math.random(#paths)]
end
