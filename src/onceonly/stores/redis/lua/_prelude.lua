-- Shared by every onceonly script (prepended when the scripts are built).
-- A record is "o1|<P|C>|<token: 32 hex>|<deadline ms>|<fingerprint hex>|<outcome>";
-- the scripts read the header with string functions and never touch the outcome.

-- The last argument of every script is '' (use the server's TIME) or a time in
-- ms injected by a store built with clock= (tests move it by hand).
local function now_ms()
  local injected = ARGV[#ARGV]
  if injected ~= '' then return tonumber(injected) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The one definition of a record, codec.py's to the byte: "o1|", status P or C,
-- a token of 32 lower-case hex digits, a deadline of 1 to 16 decimal digits, a
-- fingerprint of 0 to 128 lower-case hex digits, then the outcome: none while
-- IN_PROGRESS, at least one byte once COMPLETED. One anchored match and a few
-- length checks (Lua patterns have no counted repeats); no loop. The explicit
-- classes matter: %x takes upper case and tonumber takes "nan", "0x10",
-- "1e3", "-5" and " 1000 ", none of which the decoder does.
local RECORD = '^o1|([PC])|([0-9a-f]+)|([0-9]+)|([0-9a-f]*)|()'

-- status, token, deadline, fingerprint; nil when the value is not a record
-- (such a value is never overwritten: the client reports it as corrupt).
local function parse(v)
  if type(v) ~= 'string' then return nil end
  local status, token, deadline, fingerprint, rest = string.match(v, RECORD)
  if not status or #token ~= 32 or #deadline > 16 or #fingerprint > 128
      or (rest > #v) ~= (status == 'P') then
    return nil
  end
  return status, token, tonumber(deadline), fingerprint
end

local function header(status, token, deadline, fingerprint)
  return 'o1|' .. status .. '|' .. token .. '|' .. string.format('%.0f', deadline)
    .. '|' .. fingerprint .. '|'
end

-- The record under KEYS[1] if the caller (token) holds a running claim on it:
-- returns fingerprint, now; or nil, code with code 0 (lost) or -1 (not a record).
local function owned(token)
  local v = redis.call('GET', KEYS[1])
  if not v then return nil, 0 end
  local status, holder, deadline, fingerprint = parse(v)
  if not status then return nil, -1 end
  local now = now_ms()
  if status ~= 'P' or holder ~= token or deadline <= now then return nil, 0 end
  return fingerprint, now
end
