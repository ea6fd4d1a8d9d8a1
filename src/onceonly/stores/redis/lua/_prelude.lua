-- Shared by every onceonly script (prepended when the scripts are built).
-- A record is "o1|<P|C>|<token: 32 hex>|<deadline ms>|<fingerprint hex>|<outcome>";
-- the scripts read the header with string functions and never touch the outcome.

-- The last argument of every script is '' (use the server's TIME) or a time in
-- ms injected by a store built with clock= (tests move it by hand).
-- Read once per script call: a script is atomic, so every use sees one time.
local clock
local function now_ms()
  if clock then return clock end
  local injected = ARGV[#ARGV]
  if injected ~= '' then
    clock = tonumber(injected)
  else
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

-- The deadline of an IN_PROGRESS record that the store's native claim wrote
-- (SET NX PX GET, no script: the client does not know the server's time):
-- "until the key's own PX expiry". Compared as text: as a Lua number (a
-- double) it is not exact. An older onceonly reads it as a deadline far
-- ahead, which under the server's time means the same: live while it is there.
local KEY_EXPIRY = '9999999999999999'

-- The one definition of a record, codec.py's to the byte: "o1|", status P or C,
-- a token of 32 lower-case hex digits, a deadline of 1 to 16 decimal digits, a
-- fingerprint of 0 to 128 lower-case hex digits, then the outcome: none while
-- IN_PROGRESS, at least one byte once COMPLETED. One anchored match and a few
-- length checks (Lua patterns have no counted repeats); no loop. The explicit
-- classes matter: %x takes upper case and tonumber takes "nan", "0x10",
-- "1e3", "-5" and " 1000 ", none of which the decoder does.
local RECORD = '^o1|([PC])|([0-9a-f]+)|([0-9]+)|([0-9a-f]*)|()'

-- status, token, deadline, fingerprint, key_expiry; nil when the value is not
-- a record (such a value is never overwritten: the client reports it as
-- corrupt). key_expiry is true for an IN_PROGRESS record with the KEY_EXPIRY
-- deadline: it ends when KEYS[1] does, so it is live while it is there, and
-- its deadline (a number above any clock's now) judges it so as it is; a
-- script that answers with it says its real deadline (see expiry_deadline).
local function parse(v)
  if type(v) ~= 'string' then return nil end
  local status, token, deadline, fingerprint, rest = string.match(v, RECORD)
  if not status or #token ~= 32 or #deadline > 16 or #fingerprint > 128
      or (rest > #v) ~= (status == 'P') then
    return nil
  end
  return status, token, tonumber(deadline), fingerprint,
    status == 'P' and deadline == KEY_EXPIRY
end

-- The real deadline of a KEY_EXPIRY record under KEYS[1]: now + PTTL; nil for
-- a key without an expiry (it never ends: the marker stays).
local function expiry_deadline()
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 then return nil end
  return now_ms() + left
end

local function header(status, token, deadline, fingerprint)
  return 'o1|' .. status .. '|' .. token .. '|' .. string.format('%.0f', deadline)
    .. '|' .. fingerprint .. '|'
end

-- A value that Powertools' idempotency utility wrote (its Redis layer stores a
-- JSON object under the bare key), by the rule of onceonly/powertools_records.py,
-- check for check: only the fields status, expiration, in_progress_expiration,
-- data and validation; status COMPLETED, INPROGRESS or EXPIRED; expiration whole
-- seconds 0..1e12; in_progress_expiration absent or whole ms 0..1e15; data absent
-- or a string; validation absent or 0..128 lower-case hex digits. cjson reads
-- numbers as doubles, exact for whole numbers this small. Returns 'C', 'P' or 'E'
-- (EXPIRED: ended) and the deadline in ms (COMPLETED: expiration; INPROGRESS: the
-- earlier of in_progress_expiration and expiration); nil when v is not one
-- (never raises: cjson.decode runs under pcall). Called only for a value that
-- parse refused: a record of ours pays for nothing but this function's closure,
-- made once per script call like the others here. Powertools' own "<key>:lock"
-- key (its orphan lock) is never read: a claim here is one atomic script and
-- needs no lock.
local function powertools(v)
  -- Built here, not at the top: every script call would pay for them.
  local STATUS = {COMPLETED = 'C', INPROGRESS = 'P', EXPIRED = 'E'}
  local FIELD = {status = true, expiration = true, in_progress_expiration = true,
    data = true, validation = true}
  local function whole(n, limit)
    return type(n) == 'number' and n >= 0 and n <= limit and n == math.floor(n)
  end
  local ok, t = pcall(cjson.decode, v)
  if not ok or type(t) ~= 'table' then return nil end
  for field in pairs(t) do
    if not FIELD[field] then return nil end
  end
  local kind, expiration = STATUS[t.status], t.expiration
  local progress, data, validation = t.in_progress_expiration, t.data, t.validation
  if not kind or not whole(expiration, 1e12)
      or (progress ~= nil and not whole(progress, 1e15))
      or (data ~= nil and type(data) ~= 'string')
      or (validation ~= nil and (type(validation) ~= 'string' or #validation > 128
        or string.find(validation, '[^0-9a-f]'))) then
    return nil
  end
  -- cjson also reads number spellings that JSON (and Python, which reads these
  -- values on the other side) refuses: hex, '+1', '010', '1.', nan, inf; and it
  -- stops at a NUL. Outside its strings a Powertools value holds only JSON
  -- numbers and punctuation, so those are refused here, on the text with its
  -- escapes and then its strings taken out.
  local bare = string.gsub(string.gsub(v, '\\.', ''), '"[^"]*"', '')
  if string.find(bare, '[^ \t\n\r%d{},:%.eE%+%-]') or string.find(bare, '[^eE]%+')
      or string.find(bare, '[^%d%.eE%+%-]%-?0%d') or string.find(bare, '%.[^%d]') then
    return nil
  end
  if kind == 'E' then return kind, 0 end
  local deadline = expiration * 1000
  if kind == 'P' and progress ~= nil and progress < deadline then deadline = progress end
  return kind, deadline
end

-- The record under KEYS[1] if the caller (token) holds a running claim on it:
-- returns fingerprint, now; or nil, code with code 0 (lost: a record Powertools
-- wrote too, never the caller's) or -1 (not a record).
local function owned(token)
  local v = redis.call('GET', KEYS[1])
  if not v then return nil, 0 end
  local status, holder, deadline, fingerprint = parse(v)
  if not status then return nil, powertools(v) and 0 or -1 end
  local now = now_ms()
  if status ~= 'P' or holder ~= token or deadline <= now then return nil, 0 end
  return fingerprint, now
end
