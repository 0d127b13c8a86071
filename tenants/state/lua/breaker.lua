-- One deployment's circuit breaker (see StateStore.breaker_record / breaker_acquire / breaker_status;
-- tenants/state/memory.py implements the same steps and the contract suite holds both to them).
-- KEYS: the breaker hashes (one for record/acquire, several for status).
-- ARGV[1] op: "record" | "acquire" | "status"; ARGV[2] window_ms; ARGV[3] min_volume;
-- ARGV[4] failure ratio in permille; ARGV[5] cooldown_ms; ARGV[6] probe_ttl_ms;
-- record: ARGV[7] ok count, ARGV[8] failed count.
-- Hash fields: st (0 closed, 1 open, 2 half-open), oa (opened at, ms), pa (probe out since, ms,
-- 0: none), n<bucket> / f<bucket> (calls / failures counted in that bucket).
-- Returns, per breaker: {state, allowed (0/1), retry_after_ms, calls, failures}.
local op = ARGV[1]
local window = tonumber(ARGV[2])
local min_volume = tonumber(ARGV[3])
local ratio = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])
local probe_ttl = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket_ms = math.max(1, math.floor(window / 10))
local current = math.floor(now / bucket_ms)
local oldest = current - 9
local keep_ms = window + cooldown + probe_ttl + 60000

local function load(key)
  local raw = redis.call('HGETALL', key)
  local b = {st = 0, oa = 0, pa = 0, calls = 0, failures = 0, stale = {}}
  for i = 1, #raw, 2 do
    local field, value = raw[i], tonumber(raw[i + 1])
    if field == 'st' or field == 'oa' or field == 'pa' then
      b[field] = value
    else
      local bucket = tonumber(string.sub(field, 2))
      if bucket < oldest then
        table.insert(b.stale, field)
      elseif string.sub(field, 1, 1) == 'n' then
        b.calls = b.calls + value
      else
        b.failures = b.failures + value
      end
    end
  end
  return b
end

local function clear_buckets(key)
  local fields = redis.call('HKEYS', key)
  for _, field in ipairs(fields) do
    if field ~= 'st' and field ~= 'oa' and field ~= 'pa' then
      redis.call('HDEL', key, field)
    end
  end
end

local function status(b)
  if b.st == 0 then
    return {'closed', 1, 0, b.calls, b.failures}
  end
  if b.st == 1 then
    if now - b.oa >= cooldown then
      return {'half_open', 1, 0, 0, 0}
    end
    return {'open', 0, b.oa + cooldown - now, 0, 0}
  end
  if b.pa > 0 and now - b.pa < probe_ttl then
    return {'half_open', 0, b.pa + probe_ttl - now, 0, 0}
  end
  return {'half_open', 1, 0, 0, 0}
end

local function open(key, b)
  clear_buckets(key)
  redis.call('HSET', key, 'st', 1, 'oa', now, 'pa', 0)
  b.st, b.oa, b.pa, b.calls, b.failures = 1, now, 0, 0, 0
end

if op == 'status' then
  local out = {}
  for i, key in ipairs(KEYS) do
    out[i] = status(load(key))
  end
  return out
end

local key = KEYS[1]
local b = load(key)
if #b.stale > 0 then
  redis.call('HDEL', key, unpack(b.stale))
end

if op == 'acquire' then
  local allowed = 1
  if b.st == 1 then
    if now - b.oa >= cooldown then
      redis.call('HSET', key, 'st', 2, 'pa', now)
      b.st, b.pa = 2, now
      redis.call('PEXPIRE', key, keep_ms)
      return {'half_open', 1, 0, 0, 0}
    end
    allowed = 0
  elseif b.st == 2 then
    if b.pa > 0 and now - b.pa < probe_ttl then
      allowed = 0
    else
      redis.call('HSET', key, 'pa', now)
      redis.call('PEXPIRE', key, keep_ms)
      return {'half_open', 1, 0, 0, 0}
    end
  end
  local s = status(b)
  s[2] = allowed
  return s
end

-- record
local ok = tonumber(ARGV[7])
local failed = tonumber(ARGV[8])
if b.st == 1 and now - b.oa >= cooldown then
  b.st = 2
end
if b.st == 2 then
  if failed > 0 then
    open(key, b)
  elseif ok > 0 then
    clear_buckets(key)
    redis.call('HSET', key, 'st', 0, 'pa', 0)
    b.st, b.pa, b.calls, b.failures = 0, 0, 0, 0
  else
    redis.call('HSET', key, 'st', 2, 'pa', 0)
    b.pa = 0
  end
elseif b.st == 0 and ok + failed > 0 then
  redis.call('HINCRBY', key, 'n' .. current, ok + failed)
  if failed > 0 then
    redis.call('HINCRBY', key, 'f' .. current, failed)
  end
  b.calls = b.calls + ok + failed
  b.failures = b.failures + failed
  if b.calls >= min_volume and b.failures * 1000 > ratio * b.calls then
    open(key, b)
  end
end
if redis.call('EXISTS', key) == 1 then
  redis.call('PEXPIRE', key, keep_ms)
end
return status(b)
