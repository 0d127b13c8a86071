-- Calls in flight per deployment. KEYS: zsets ticket -> expires at (ms).
-- ARGV[1] "add" | "remove" (KEYS[1], ARGV[2] ticket, ARGV[3] hold_ms) or "count" (every KEY).
-- Returns the live count (add, remove) or the list of live counts (count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'count' then
  local out = {}
  for i, key in ipairs(KEYS) do
    out[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
  end
  return out
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'add' then
  local hold = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + hold, ARGV[2])
  if redis.call('PTTL', KEYS[1]) < hold then
    redis.call('PEXPIRE', KEYS[1], hold)
  end
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
