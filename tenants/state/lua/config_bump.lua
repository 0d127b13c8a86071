-- Move the shared config version. KEYS[1] = version key. A missing version starts from the
-- clock (milliseconds), so a flushed store never repeats a number a process already saw.
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
end
return redis.call('INCR', KEYS[1])
