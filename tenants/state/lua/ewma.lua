-- Fold one observation into a moving average. KEYS[1] the average; ARGV[1] value, ARGV[2] alpha,
-- ARGV[3] ttl_ms. The first observation starts it. Returns the new average as a string.
local value = tonumber(ARGV[1])
local alpha = tonumber(ARGV[2])
local old = redis.call('GET', KEYS[1])
local avg = value
if old then
  avg = alpha * value + (1 - alpha) * tonumber(old)
end
local text = string.format('%.6f', avg)
redis.call('SET', KEYS[1], text, 'PX', tonumber(ARGV[3]))
return text
