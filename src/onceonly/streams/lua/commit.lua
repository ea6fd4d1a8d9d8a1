-- Commit the entries of a batch, each on its own: its effects, its dedup
-- record and its XACK, all or none. One entry's outcome (or error) does not
-- change another's; each entry is checked before any of its writes.
-- KEYS: 1 stream, then per entry: its dedup record, its error record, its
--       effects' keys.
-- ARGV: 1 group, 2 consumer, 3 dedup ttl ms, 4 same-slot check ('1' / '0'),
--       5 error record ttl ms, 6 / 7 the lowest / highest entry id, 8 entry count,
--       then per entry: id, delivery count read, effect key count, effect count,
--       effect argument count, then per effect: command, key number (KEYS[e + n],
--       e the entry's error record), argument count, arguments.
-- Reply: per entry a code and a detail, in order:
--   APPLIED: written. DUPLICATE: the event was applied before; acknowledged only
--   (detail 'retried': this very commit was applied before, its reply lost).
--   FENCED: the entry is no longer this delivery's; nothing written.
--   REFUSED: an effect could not be applied (detail: why); nothing written but
--   the error record; the entry stays pending.
--   ERROR: Redis answered one of its commands with an error (detail: the error).
local group, consumer, ttl, error_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[5]

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
  if #digits <= 9 then -- under 1e9 (most counters): lo alone, in range
    local lo = tonumber(digits)
    if sign == '-' then return -1, E9 - lo end
    return 0, lo
  end
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

-- Keys an applied entry's effects left holding their family or nothing (a
-- script sees no key expire), so a later entry needs no TYPE for that family.
-- The keys this script writes itself (dedup and error records) are dropped.
local typed = {}

-- The XACKs and error-record DELs of the entries committed so far, sent once
-- at the end (one command each instead of one per entry). Nothing in between
-- reads the group's pending list for those ids or those records, unless an
-- effect names one of the records: `settle` sends them before that happens.
local acked, cleared, clearing = {}, {}, {}
local function settle()
  if #acked > 0 then redis.call('XACK', KEYS[1], group, unpack(acked)) end
  if #cleared > 0 then redis.call('DEL', unpack(cleared)) end
  for _, key in ipairs(cleared) do typed[key] = nil end
  acked, cleared, clearing = {}, {}, {}
end
local function done(id, errors)
  acked[#acked + 1] = id
  if not clearing[errors] then
    cleared[#cleared + 1], clearing[errors] = errors, true
  end
end

-- What `key` holds, for an effect of `family` at it: typed or not there
-- (`family` then), or the type TYPE reads. For HINCRBY / INCRBY, `read` (the
-- HGET / GET its check needs anyway) answers both: it fails on a key of
-- another type only. Returns the type, and what `read` read.
local function held_type(key, family, read, ...)
  if typed[key] == family then
    if read then return family, redis.call(read, key, ...) end
    return family
  end
  if read then
    local ok, value = pcall(redis.call, read, key, ...)
    if ok then return family, value end
  end
  return redis.call('TYPE', key)['ok']
end

-- Walk one entry's effects (from ARGV[first], keys from KEYS[base + n]) as Redis
-- would apply them, reading what they depend on; return why one would fail (a
-- wrong type, a value that is not an integer, an overflow), or nil, and the
-- families the effects give their keys.
local function check(first, base, count)
  local types, strings, fields = {}, {}, {}
  local i = first
  for _ = 1, count do
    local command, key = ARGV[i], KEYS[base + tonumber(ARGV[i + 1])]
    local argc = tonumber(ARGV[i + 2])
    local family = FAMILY[command]
    if family == nil or not key then return 'unknown effect ' .. tostring(command) end
    if clearing[key] then settle() end
    local read = nil -- what the type probe read, for INCRBY / HINCRBY
    if family then
      local held = types[key]
      if not held then
        if command == 'INCRBY' and strings[key] == nil then
          held, read = held_type(key, family, 'GET')
        elseif command == 'HINCRBY' and (fields[key] or {})[ARGV[i + 3]] == nil then
          held, read = held_type(key, family, 'HGET', ARGV[i + 3])
        else
          held = held_type(key, family)
        end
      end
      if held ~= 'none' and held ~= family then
        return command .. ' needs a ' .. family .. ' at ' .. key .. ', which holds a ' .. held
      end
      types[key] = family
    end
    if command == 'SET' then
      strings[key] = ARGV[i + 3]
    elseif command == 'INCRBY' then
      local now = strings[key]
      if now == nil then now = read or redis.call('GET', key) or '0' end
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
        if now == nil then now = read or redis.call('HGET', key, name) or '0' end
        local sum, bad = add(now, ARGV[i + 4])
        if not sum then return 'HINCRBY at ' .. key .. ': the field ' .. bad end
        known[name] = sum
      end
    end
    i = i + 3 + argc
  end
  return nil, types
end

-- Where the effects after the first start, when the first is an INCRBY /
-- HINCRBY on a key no other effect of the entry names (else nil). Such an
-- increment needs no read of its value: the other effects are checked first,
-- then it is sent as the entry's first write, which Redis refuses (writing
-- nothing) exactly when the check would have.
local function increment_first(first, count)
  local command = ARGV[first]
  if command ~= 'HINCRBY' and command ~= 'INCRBY' then return nil end
  local number, rest = ARGV[first + 1], first + 3 + tonumber(ARGV[first + 2])
  local i = rest
  for _ = 2, count do
    if ARGV[i + 1] == number then return nil end
    i = i + 3 + tonumber(ARGV[i + 2])
  end
  return rest
end

-- Check (see `check`) and apply an entry's effects. Returns why they were
-- refused (nothing written), or nil and the families they gave their keys.
local function apply(first, base, count)
  local from, left, refused, types = first, count, nil, nil
  local rest = count > 0 and increment_first(first, count)
  if rest then
    refused, types = check(rest, base, count - 1)
    if refused then return check(first, base, count) end -- the first may fail first
    local key = KEYS[base + tonumber(ARGV[first + 1])]
    if clearing[key] then settle() end
    local ok, err = pcall(redis.call, ARGV[first], key,
      unpack(ARGV, first + 3, first + 2 + tonumber(ARGV[first + 2])))
    if not ok then
      refused = check(first, base, 1) -- why, in the check's words
      if not refused then error(err) end -- not a refusal (an ACL, out of memory)
      return refused
    end
    types[key] = FAMILY[ARGV[first]]
    from, left = rest, count - 1
  else
    refused, types = check(first, base, count)
    if refused then return refused end
  end
  local i = from
  for _ = 1, left do
    local argc = tonumber(ARGV[i + 2])
    redis.call(ARGV[i], KEYS[base + tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + argc))
    i = i + 3 + argc
  end
  return nil, types
end

-- This consumer's pending entries between the batch's lowest and highest ids:
-- id -> delivery count. One read for the batch; an entry not found in it
-- (other entries of this consumer in between filled the count) is read alone.
local mine = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, ARGV[6], ARGV[7], tonumber(ARGV[8]),
    consumer)) do
  mine[p[1]] = p[4]
end

-- One entry whose dedup record is KEYS[k] (error record KEYS[k + 1]) and
-- whose arguments start at ARGV[a]: its code and detail.
local function commit(k, a)
  local id, deliveries = ARGV[a], ARGV[a + 1]
  local dedup, errors = KEYS[k], KEYS[k + 1]
  local mark = id .. '|' .. deliveries .. '|' .. consumer
  local ok, why = mine[id] == tonumber(deliveries), nil
  if not ok then ok, why = holds(group, id, consumer, deliveries) end
  if not ok then
    if redis.call('GET', dedup) == mark then return DUPLICATE, 'retried' end
    return FENCED, why
  end
  if redis.call('GET', dedup) then
    done(id, errors)
    return DUPLICATE, ''
  end
  local last, count, first = k + 1 + tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), a + 5
  local refused, types
  if ARGV[4] == '1' then
    local bad = cross_slot(k, last)
    if bad then refused = 'key ' .. KEYS[bad] .. ' is not in the hash slot of ' .. KEYS[1] end
  end
  if not refused then refused, types = apply(first, k + 1, count) end
  if refused then
    redis.call('SET', errors, 'effects refused: ' .. refused, 'PX', error_ttl)
    typed[errors], typed[dedup] = nil, nil
    return REFUSED, refused
  end
  for key, family in pairs(types) do typed[key] = family end
  redis.call('SET', dedup, mark, 'PX', ttl)
  typed[dedup] = nil
  done(id, errors)
  return APPLIED, ''
end

local reply, k, a = {}, 2, 9
for _ = 1, tonumber(ARGV[8]) do
  local ok, code, detail = pcall(commit, k, a)
  if not ok then
    -- An error of one of its commands (an ACL refusal, out of memory) is this
    -- entry's, not the batch's, as when each entry had a script call of its
    -- own. Its effects may be half written: forget what the keys hold.
    if type(code) == 'table' then code = code.err end
    reply[#reply + 1], reply[#reply + 2] = ERROR, tostring(code)
    typed = {}
  else
    reply[#reply + 1], reply[#reply + 2] = code, detail
  end
  k = k + 2 + tonumber(ARGV[a + 2])
  a = a + 5 + tonumber(ARGV[a + 4])
end
settle()
return reply
