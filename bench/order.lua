-- wrk script: POST one order per request, spread over the bench catalog and customers.
-- BENCH_SKUS and BENCH_CUSTOMERS say how many of each the driver created.
local skus = tonumber(os.getenv("BENCH_SKUS") or "50")
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "100")
local counter = 0

request = function()
  counter = counter + 1
  local sku = "BENCH-" .. (counter % skus)
  local customer = "bench-" .. (counter % customers)
  local body = string.format(
    '{"customer_id": "%s", "items": [{"sku": "%s", "quantity": 1}]}', customer, sku)
  return wrk.format("POST", "/api/v1/orders", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  -- One machine-readable line for the driver.
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
