-- Settlement: one atomic step when a request ends (see tenants/state/base.py).
--
-- KEYS[1]                usage stream
-- KEYS[1 + (i-1)*9 + j]  scope i's structures (same order as admit.lua)
-- ARGV: ticket, tokens used, cost (nano-USD), n scopes, event ('' = none), release (0|1),
--       allow_missing (0|1), then per scope: rpm, tpm, max concurrency, budget (-1 = untracked)
--
-- Returns {1, 0, i...}   spend counters of budgeted scopes i are missing: seed, then retry
--         {0, stored, before_1, after_1, ..., before_n, after_n}  (-1: counter not charged)

local ticket = ARGV[1]
local tokens = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local event = ARGV[5]
local release = ARGV[6] == '1'
local allow_missing = ARGV[7] == '1'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function lim(i, j) return tonumber(ARGV[7 + (i - 1) * 4 + j]) end
local function key(i, j) return KEYS[1 + (i - 1) * 9 + j] end

-- A request's window entries sit in the bucket admission noted in the tickets hash; while
-- that bucket is in the window they are corrected (or released) there, after it nothing is
-- left to correct. See admit.lua for the bucketed windows.
local function window_correct(h, bucket, amount)
  if amount == 0 or redis.call('HEXISTS', h, bucket) == 0 then return end
  if redis.call('HINCRBY', h, bucket, amount) < 0 then redis.call('HSET', h, bucket, 0) end
  if redis.call('HINCRBY', h, 'n', amount) < 0 then redis.call('HSET', h, 'n', 0) end
end

-- Durable holds (optional): KEYS[2 + 9n] open holds zset, KEYS[3 + 9n] their payloads,
-- KEYS[4 + 9n] holds ended by the sweeper (ticket -> ms); ARGV[8 + 4n] 'owner' | 'sweeper'.
-- A hold ends exactly once: the owner's settlement after the sweeper's (or the sweeper's
-- after the owner's) changes nothing and returns {3, 0}.
local holds = #KEYS >= 4 + 9 * n and ARGV[8 + 4 * n] or ''
if holds == 'owner' and redis.call('ZSCORE', KEYS[4 + 9 * n], ticket) then
  return {3, 0}
end
if holds == 'sweeper' and not redis.call('ZSCORE', KEYS[2 + 9 * n], ticket) then
  return {3, 0}
end

local function decr(k, amount)
  if amount ~= 0 and redis.call('INCRBY', k, -amount) < 0 then
    redis.call('SET', k, 0, 'KEEPTTL')
  end
end

-- A budgeted counter that vanished (restart, eviction, FLUSHDB) is rebuilt from the database
-- before the charge, or the charge would start a fresh counter from this one request.
if cost > 0 and not allow_missing then
  local missing = {}
  for i = 1, n do
    if lim(i, 4) >= 0 and redis.call('EXISTS', key(i, 6)) == 0 then
      missing[#missing + 1] = i
    end
  end
  if #missing > 0 then
    local out = {1, 0}
    for _, i in ipairs(missing) do out[#out + 1] = i end
    return out
  end
end

if holds ~= '' then
  redis.call('ZREM', KEYS[2 + 9 * n], ticket)
  redis.call('HDEL', KEYS[3 + 9 * n], ticket)
  if holds == 'sweeper' then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[4 + 9 * n], tonumber(t[1]) * 1000, ticket)
  end
end

local out = {0, 0}
for i = 1, n do
  if lim(i, 3) >= 0 then redis.call('ZREM', key(i, 5), ticket) end
  if lim(i, 4) >= 0 then
    local held = tonumber(redis.call('HGET', key(i, 7), ticket))
    if held then
      redis.call('HDEL', key(i, 7), ticket)
      redis.call('ZREM', key(i, 8), ticket)
      decr(key(i, 9), held)
    end
  end
  if lim(i, 1) >= 0 or lim(i, 2) >= 0 then
    local entry = redis.call('HGET', key(i, 3), ticket)
    if entry then
      redis.call('HDEL', key(i, 3), ticket)
      local bucket, ends, counted = string.match(entry, '^([^,]+),([^,]+),([^,]+)$')
      if bucket and tonumber(ends) > now then
        counted = tonumber(counted)
        if lim(i, 2) >= 0 then
          -- The estimate becomes the real count (or nothing, for a release).
          window_correct(key(i, 2), bucket, (release and 0 or tokens) - counted)
        end
        if release and lim(i, 1) >= 0 then window_correct(key(i, 1), bucket, -1) end
      end
    end
  end

  local before, after = -1, -1
  if cost > 0 then
    -- Any existing counter is kept exact (budgeted or not), so a budget added later starts
    -- from the truth; missing unbudgeted counters are seeded when a budget needs them.
    local current = redis.call('GET', key(i, 6))
    if current then
      before = tonumber(current)
      after = redis.call('INCRBY', key(i, 6), cost)
    end
  end
  out[#out + 1] = before
  out[#out + 1] = after
end

if event ~= '' then
  redis.call('XADD', KEYS[1], '*', 'e', event)
  out[2] = 1
end
return out
