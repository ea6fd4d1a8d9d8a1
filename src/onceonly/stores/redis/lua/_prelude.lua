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

-- status, token, deadline, fingerprint; nil when the value is not a record
-- (such a value is never overwritten: the client reports it as corrupt).
local function parse(v)
  if type(v) ~= 'string' or string.sub(v, 1, 3) ~= 'o1|' then return nil end
  local status = string.sub(v, 4, 4)
  if (status ~= 'P' and status ~= 'C') or string.sub(v, 5, 5) ~= '|'
      or string.sub(v, 38, 38) ~= '|' then
    return nil
  end
  local e = string.find(v, '|', 39, true)
  if not e then return nil end
  local deadline = tonumber(string.sub(v, 39, e - 1))
  local f = string.find(v, '|', e + 1, true)
  if not deadline or not f then return nil end
  return status, string.sub(v, 6, 37), deadline, string.sub(v, e + 1, f - 1)
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
