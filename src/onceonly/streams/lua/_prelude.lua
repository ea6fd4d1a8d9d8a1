-- Shared by the stream scripts (prepended when they are built). KEYS[1] is
-- always the stream; every other key must be in its Redis Cluster hash slot.

-- Reply codes (scripts.py has the same table).
local APPLIED, DUPLICATE, FENCED, REFUSED, DEAD, LOST, ERROR = 1, 2, 3, 4, 5, 6, 7

-- What Redis Cluster hashes of a key: the text inside its first {...} when
-- that is not empty, else the whole key.
local function hashed(key)
  local open = string.find(key, '{', 1, true)
  if open then
    local close = string.find(key, '}', open + 1, true)
    if close and close > open + 1 then return string.sub(key, open + 1, close - 1) end
  end
  return key
end

-- CRC16/XMODEM mod 16384, as Redis Cluster computes slots.
local function slot(key)
  local crc, part = 0, hashed(key)
  for i = 1, #part do
    crc = bit.bxor(crc, bit.lshift(string.byte(part, i), 8))
    for _ = 1, 8 do
      if bit.band(crc, 0x8000) ~= 0 then
        crc = bit.band(bit.bxor(bit.lshift(crc, 1), 0x1021), 0xffff)
      else
        crc = bit.band(bit.lshift(crc, 1), 0xffff)
      end
    end
  end
  return crc % 16384
end

-- What the stream hashes, and "{that}": a key that starts with it hashes the
-- same (nil when that holds a '}', which no hash tag can).
local HOME = hashed(KEYS[1])
local HOME_TAG = not string.find(HOME, '}', 1, true) and ('{' .. HOME .. '}') or nil

-- The first key (by index, from KEYS[first] to KEYS[last]; all but the stream
-- when not given) outside the stream's slot, or nil. A cluster refuses such a
-- call before the script runs (CROSSSLOT); this refuses it on a standalone
-- server too, so code that works there works on a cluster. A key that starts
-- with the stream's hash tag costs one prefix test, one that shares it one
-- more string comparison; others a CRC.
local function cross_slot(first, last)
  local home_slot = nil
  for i = first or 2, last or #KEYS do
    local key = KEYS[i]
    if not (HOME_TAG and string.find(key, HOME_TAG, 1, true) == 1) and hashed(key) ~= HOME then
      home_slot = home_slot or slot(KEYS[1])
      if slot(key) ~= home_slot then return i end
    end
  end
  return nil
end

-- Whether `consumer` still holds entry `id` of the group with the delivery
-- count it read. Another consumer's XCLAIM / XAUTOCLAIM moves the entry and
-- raises its count, so a count that differs means someone claimed it in
-- between, even if it came back to this consumer. Returns true, or false and why.
local function holds(group, id, consumer, deliveries)
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
  if not p then return false, 'not pending' end
  if p[2] ~= consumer or p[4] ~= tonumber(deliveries) then
    return false, 'pending on ' .. p[2] .. ' at delivery ' .. p[4]
  end
  return true
end
