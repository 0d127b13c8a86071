-- Admission: one atomic step per request (see tenants/state/base.py).
--
-- KEYS[1]                config version
-- KEYS[1 + (i-1)*9 + j]  scope i's structures, j = 1 request window, 2 token window (bucketed
--                        hashes, see below), 3 tickets hash (ticket -> "bucket,ends_ms,tokens"),
--                        4 unused (kept so the layout stays put), 5 slots zset, 6 spend
--                        counter, 7 reservations hash, 8 reservation expiry zset,
--                        9 reservation total
-- ARGV: ticket, tokens, reserve (nano-USD), hold_ms, window_ms, n scopes, then per scope:
--       rpm, tpm, max concurrency, budget (nano-USD); -1 = not enforced, not tracked.
--
-- Returns {1, version, i...}      spend counters of scopes i are missing: seed, then retry
--         {2, version, kind, scope, retry_after_ms, rate info...}   refused (nothing taken)
--         {0, version, rate info...}                                 admitted
-- rate info = requests limit, remaining, reset_ms, tokens limit, remaining, reset_ms
-- (limit -1: no such limit). All money and counts are integers below 2^53.
--
-- Rate windows are bucketed, so an admission's work is bounded whatever a window holds: a
-- window is one hash with a field per bucket of window/BUCKETS ms (the count admitted in it),
-- 'n' (the sum of the live buckets), 'c' (no bucket older than this is left) and 'w' (the
-- newest bucket written). An entry counts from its admission until its bucket's end plus a
-- whole window: never less than the window (no overshoot), at most one bucket more. A window
-- never holds more than BUCKETS + 2 buckets; a walk or a trim touches at most those.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket = ARGV[1]
local tokens = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local n = tonumber(ARGV[6])

local function lim(i, j) return tonumber(ARGV[6 + (i - 1) * 4 + j]) end
local function key(i, j) return KEYS[1 + (i - 1) * 9 + j] end

local function num(k) return tonumber(redis.call('GET', k)) or 0 end

local function decr(k, amount)
  if amount ~= 0 and redis.call('INCRBY', k, -amount) < 0 then
    redis.call('SET', k, 0, 'KEEPTTL')
  end
end

local version = redis.call('GET', KEYS[1])
if not version then
  -- A fresh (or flushed) store starts from the clock, never from a number a process may
  -- already have seen.
  version = string.format('%.0f', now)
  redis.call('SET', KEYS[1], version)
end

-- Budgeted scopes need their period's spend counter; a missing one is rebuilt from the
-- database by the caller before anything is admitted against it.
local missing = {}
for i = 1, n do
  if lim(i, 4) >= 0 and redis.call('EXISTS', key(i, 6)) == 0 then
    missing[#missing + 1] = i
  end
end
if #missing > 0 then
  local out = {1, version}
  for _, i in ipairs(missing) do out[#out + 1] = i end
  return out
end

local BUCKETS = 60  -- = tenants.state.base.WINDOW_BUCKETS (the in-process store's)
local width = math.max(1, math.ceil(window / BUCKETS))
local cur = math.floor(now / width)
-- The oldest live bucket: b is live while (b + 1) * width + window > now.
local lo = math.floor((now - window) / width)
local function bk(b) return string.format('%.0f', b) end

-- Forget the buckets that left the window (at most once per bucket width and window).
local function window_trim(h)
  local c = tonumber(redis.call('HGET', h, 'c'))
  if c == nil or c >= lo then return end
  local flat = redis.call('HGETALL', h)
  local gone, freed = {}, 0
  for k = 1, #flat, 2 do
    local b = tonumber(flat[k])
    if b and b < lo then
      gone[#gone + 1] = flat[k]
      freed = freed + tonumber(flat[k + 1])
    end
  end
  if #gone > 0 then redis.call('HDEL', h, unpack(gone)) end
  if freed ~= 0 and redis.call('HINCRBY', h, 'n', -freed) < 0 then redis.call('HSET', h, 'n', 0) end
  redis.call('HSET', h, 'c', bk(lo))
end

local function window_used(h) return tonumber(redis.call('HGET', h, 'n')) or 0 end

-- Milliseconds until `need` units have left the window (oldest buckets first).
local function window_retry(h, need)
  local fields = {}
  for b = lo, cur do fields[#fields + 1] = bk(b) end
  local counts = redis.call('HMGET', h, unpack(fields))
  local freed = 0
  for k = 1, #counts do
    freed = freed + (tonumber(counts[k]) or 0)
    if freed >= need then return (lo + k) * width + window - now end
  end
  return window
end

-- Milliseconds until the window is empty.
local function window_reset(h)
  local w = tonumber(redis.call('HGET', h, 'w'))
  if w == nil or w < lo then return 0 end
  return math.max(0, (w + 1) * width + window - now)
end

local function window_add(h, amount)
  redis.call('HINCRBY', h, bk(cur), amount)
  redis.call('HINCRBY', h, 'n', amount)
  redis.call('HSETNX', h, 'c', bk(lo))
  redis.call('HSET', h, 'w', bk(cur))
  redis.call('PEXPIRE', h, window + width + 1000)
end

-- Forget what dead processes still hold.
local function expire_weighted(z, h, total, upto)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', upto)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do
      freed = freed + (tonumber(redis.call('HGET', h, m)) or 0)
      redis.call('HDEL', h, m)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', upto)
    decr(total, freed)
  end
end

for i = 1, n do
  if lim(i, 1) >= 0 then window_trim(key(i, 1)) end
  if lim(i, 2) >= 0 then window_trim(key(i, 2)) end
  if lim(i, 3) >= 0 then redis.call('ZREMRANGEBYSCORE', key(i, 5), '-inf', now) end
  if lim(i, 4) >= 0 then expire_weighted(key(i, 8), key(i, 7), key(i, 9), now) end
end

local function rate_info(kind)
  local best_limit, best_rem, best_reset = -1, -1, 0
  for i = 1, n do
    local l = lim(i, kind)
    if l >= 0 then
      local used = window_used(key(i, kind))
      local reset = window_reset(key(i, kind))
      local rem = math.max(0, l - used)
      if best_limit < 0 or rem < best_rem then
        best_limit, best_rem, best_reset = l, rem, reset
      end
    end
  end
  return best_limit, best_rem, best_reset
end

local function refuse(kind, scope, retry)
  local rl, rr, rs = rate_info(1)
  local tl, tr, ts = rate_info(2)
  return {2, version, kind, scope, math.max(1, retry), rl, rr, rs, tl, tr, ts}
end

-- Budget first: a refusal that retrying cannot fix should not be reported as a rate limit.
for i = 1, n do
  local budget = lim(i, 4)
  if budget >= 0 and num(key(i, 6)) + num(key(i, 9)) + reserve > budget then
    return refuse(1, i, 0)
  end
end

-- What the checks read, kept for the headers of an admitted request (no second read).
local rpm_used, tpm_used = {}, {}

for i = 1, n do
  local rpm = lim(i, 1)
  if rpm >= 0 then
    local count = window_used(key(i, 1))
    rpm_used[i] = count
    if count + 1 > rpm then
      local retry = window
      -- When the (count - rpm + 1)-th oldest entry leaves the window one request fits.
      if rpm > 0 then retry = window_retry(key(i, 1), count + 1 - rpm) end
      return refuse(2, i, retry)
    end
  end
end

for i = 1, n do
  local tpm = lim(i, 2)
  if tpm >= 0 then
    if tokens > tpm then return refuse(5, i, window) end
    local total = window_used(key(i, 2))
    tpm_used[i] = total
    if total + tokens > tpm then
      return refuse(3, i, window_retry(key(i, 2), total + tokens - tpm))
    end
  end
end

for i = 1, n do
  local conc = lim(i, 3)
  if conc >= 0 and redis.call('ZCARD', key(i, 5)) + 1 > conc then
    -- When a slot frees is unknown; one second is a polite first pause.
    return refuse(4, i, 1000)
  end
end

-- Everything fits: take it all.
for i = 1, n do
  if lim(i, 1) >= 0 then window_add(key(i, 1), 1) end
  if lim(i, 2) >= 0 then window_add(key(i, 2), tokens) end
  if lim(i, 1) >= 0 or lim(i, 2) >= 0 then
    -- Where settlement finds this request's entries (it corrects or releases them).
    redis.call('HSET', key(i, 3), ticket, bk(cur) .. ',' .. bk((cur + 1) * width + window) .. ',' .. bk(tokens))
    redis.call('PEXPIRE', key(i, 3), hold + window + width + 1000)
  end
  if lim(i, 3) >= 0 then
    redis.call('ZADD', key(i, 5), now + hold, ticket)
    redis.call('PEXPIRE', key(i, 5), hold + 1000)
  end
  if lim(i, 4) >= 0 then
    redis.call('HSET', key(i, 7), ticket, reserve)
    redis.call('ZADD', key(i, 8), now + hold, ticket)
    redis.call('INCRBY', key(i, 9), reserve)
    for j = 7, 9 do redis.call('PEXPIRE', key(i, j), hold + 1000) end
  end
end

-- Durable hold (optional): KEYS[2 + 9n] open holds zset (ticket -> deadline ms), KEYS[3 + 9n]
-- their payloads (ticket -> what the sweeper needs to end the hold and write its event),
-- ARGV[7 + 4n] the payload. See tenants/state/base.py (holds).
if #KEYS >= 3 + 9 * n and ARGV[7 + 4 * n] then
  redis.call('ZADD', KEYS[2 + 9 * n], now + hold, ticket)
  redis.call('HSET', KEYS[3 + 9 * n], ticket, ARGV[7 + 4 * n])
end

-- This request is now the newest entry of every window it counts in: each window resets
-- when the current bucket leaves it, and the counts are the checks' plus this request.
local function admitted_info(kind)
  local best_limit, best_rem = -1, -1
  for i = 1, n do
    local l = lim(i, kind)
    if l >= 0 then
      local used
      if kind == 1 then used = rpm_used[i] + 1 else used = tpm_used[i] + tokens end
      local rem = math.max(0, l - used)
      if best_limit < 0 or rem < best_rem then best_limit, best_rem = l, rem end
    end
  end
  return best_limit, best_rem, (best_limit >= 0) and ((cur + 1) * width + window - now) or 0
end

local rl, rr, rs = admitted_info(1)
local tl, tr, ts = admitted_info(2)
return {0, version, rl, rr, rs, tl, tr, ts}
