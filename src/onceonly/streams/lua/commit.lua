-- Commit one entry: its effects, its dedup record and its XACK, all or none.
-- KEYS: 1 stream, 2 the event's dedup record, 3 the entry's error record,
--       4.. the effects' keys.
-- ARGV: 1 group, 2 consumer, 3 entry id, 4 delivery count read, 5 mark (what the
--       dedup record holds: which delivery applied it), 6 dedup ttl ms,
--       7 same-slot check ('1' / '0'), 8 error record ttl ms, 9 effect count,
--       then per effect: command, key number (KEYS[3 + n]), argument count, arguments.
-- Reply {code, detail}:
--   APPLIED: written. DUPLICATE: the event was applied before; acknowledged only
--   (detail 'retried': this very commit was applied before, its reply lost).
--   FENCED: the entry is no longer this delivery's; nothing written.
--   REFUSED: an effect could not be applied (detail: why); nothing written but
--   the error record; the entry stays pending.
local group, consumer, id, deliveries, mark = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local ok, why = holds(group, id, consumer, deliveries)
if not ok then
  if redis.call('GET', KEYS[2]) == mark then return {DUPLICATE, 'retried'} end
  return {FENCED, why}
end
if redis.call('GET', KEYS[2]) then
  redis.call('XACK', KEYS[1], group, id)
  redis.call('DEL', KEYS[3])
  return {DUPLICATE, ''}
end

local FIRST, BASE = 10, 3
local FAMILY = {HSET = 'hash', HINCRBY = 'hash', HDEL = 'hash', ZADD = 'zset', ZINCRBY = 'zset',
  ZREM = 'zset', SADD = 'set', SREM = 'set', INCRBY = 'string', SET = 'string',
  XADD = 'stream', EXPIRE = false}

-- Signed 64-bit integers as hi * 1e9 + lo with 0 <= lo < 1e9: both parts are
-- exact in Lua's doubles, so sums and the overflow test are exact too.
local E9 = 1000000000
local function fits(hi, lo)
  return (hi < 9223372036 or (hi == 9223372036 and lo <= 854775807))
    and (hi > -9223372037 or (hi == -9223372037 and lo >= 145224192))
end
-- A value as Redis' string2ll reads it (no sign '+', no leading zero, no
-- space, in range): hi, lo; or nil when INCRBY / HINCRBY would refuse it.
local function int64(v)
  if type(v) == 'table' then return v[1], v[2] end
  if v == '0' then return 0, 0 end
  local sign, digits = string.match(v, '^(%-?)([1-9]%d*)$')
  if not digits or #digits > 19 then return nil end
  local hi, lo = tonumber(string.sub(digits, 1, -10)) or 0, tonumber(string.sub(digits, -9))
  if sign == '-' then
    if lo > 0 then hi, lo = -hi - 1, E9 - lo else hi = -hi end
  end
  if not fits(hi, lo) then return nil end
  return hi, lo
end
-- v + by as {hi, lo}, or nil and why.
local function add(v, by)
  local hi, lo = int64(v)
  if not hi then return nil, 'holds a value that is not a 64-bit integer' end
  local bhi, blo = int64(by)
  hi, lo = hi + bhi, lo + blo
  if lo >= E9 then hi, lo = hi + 1, lo - E9 end
  if not fits(hi, lo) then return nil, 'would overflow a 64-bit integer' end
  return {hi, lo}
end

-- Walk the effects as Redis would apply them, reading what they depend on,
-- and return why one would fail (a wrong type, a value that is not an
-- integer, an overflow), or nil when all of them will succeed.
local function check()
  local types, strings, fields = {}, {}, {}
  local i = FIRST
  for _ = 1, tonumber(ARGV[9]) do
    local command, key = ARGV[i], KEYS[BASE + tonumber(ARGV[i + 1])]
    local argc = tonumber(ARGV[i + 2])
    local family = FAMILY[command]
    if family == nil or not key then return 'unknown effect ' .. tostring(command) end
    if family then
      local held = types[key] or redis.call('TYPE', key)['ok']
      if held ~= 'none' and held ~= family then
        return command .. ' needs a ' .. family .. ' at ' .. key .. ', which holds a ' .. held
      end
      types[key] = family
    end
    if command == 'SET' then
      strings[key] = ARGV[i + 3]
    elseif command == 'INCRBY' then
      local now = strings[key]
      if now == nil then now = redis.call('GET', key) or '0' end
      local sum, bad = add(now, ARGV[i + 3])
      if not sum then return 'INCRBY at ' .. key .. ': the key ' .. bad end
      strings[key] = sum
    elseif command == 'HSET' or command == 'HDEL' or command == 'HINCRBY' then
      local known = fields[key] or {}
      fields[key] = known
      if command == 'HSET' then
        for j = i + 3, i + 2 + argc, 2 do known[ARGV[j]] = ARGV[j + 1] end
      elseif command == 'HDEL' then
        for j = i + 3, i + 2 + argc do known[ARGV[j]] = '0' end
      else
        local name = ARGV[i + 3]
        local now = known[name]
        if now == nil then now = redis.call('HGET', key, name) or '0' end
        local sum, bad = add(now, ARGV[i + 4])
        if not sum then return 'HINCRBY at ' .. key .. ': the field ' .. bad end
        known[name] = sum
      end
    end
    i = i + 3 + argc
  end
  return nil
end

local refused
if ARGV[7] == '1' then
  local bad = cross_slot()
  if bad then refused = 'key ' .. KEYS[bad] .. ' is not in the hash slot of ' .. KEYS[1] end
end
refused = refused or check()
if refused then
  redis.call('SET', KEYS[3], 'effects refused: ' .. refused, 'PX', ARGV[8])
  return {REFUSED, refused}
end

local i = FIRST
for _ = 1, tonumber(ARGV[9]) do
  local argc = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[BASE + tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + argc))
  i = i + 3 + argc
end
redis.call('SET', KEYS[2], mark, 'PX', ARGV[6])
redis.call('XACK', KEYS[1], group, id)
redis.call('DEL', KEYS[3])
return {APPLIED, ''}
