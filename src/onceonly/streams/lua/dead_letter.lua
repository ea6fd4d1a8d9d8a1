-- Move one entry to the dead-letter stream and acknowledge it, atomically.
-- KEYS: 1 stream, 2 dead-letter stream, 3 the entry's error record.
-- ARGV: 1 group, 2 consumer, 3 entry id, 4 delivery count read, 5 same-slot check ('1' / '0'),
-- 6 how long the tombstone is kept (ms).
-- Reply {code, detail}: DEAD and the dead letter's id; FENCED and why; LOST
-- (the entry is gone: acknowledged); REFUSED and why (nothing written).
-- The error record is kept as a tombstone, "dead|<letter id>|<deliveries>|<consumer>",
-- so that this script sent again (its reply lost) answers DEAD with the same letter.
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
if ARGV[5] == '1' then
  local bad = cross_slot()
  if bad then return {REFUSED, 'key ' .. KEYS[bad] .. ' is not in the slot of ' .. KEYS[1]} end
end
local ok, why = holds(group, id, consumer, ARGV[4])
if not ok then
  local letter_id, rest = string.match(redis.call('GET', KEYS[3]) or '', '^dead|([^|]+)|(.*)$')
  if letter_id and rest == ARGV[4] .. '|' .. consumer then return {DEAD, letter_id} end
  return {FENCED, why}
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return {REFUSED, 'the dead-letter stream ' .. KEYS[2] .. ' holds a ' .. kind}
end
local found = redis.call('XRANGE', KEYS[1], id, id)[1]
if not found then
  redis.call('XACK', KEYS[1], group, id)
  redis.call('DEL', KEYS[3])
  return {LOST, ''}
end
local letter = {'XADD', KEYS[2], '*', 'onceonly.stream', KEYS[1], 'onceonly.group', group,
  'onceonly.id', id, 'onceonly.consumer', consumer, 'onceonly.deliveries', ARGV[4],
  'onceonly.error', redis.call('GET', KEYS[3]) or ''}
for _, v in ipairs(found[2]) do letter[#letter + 1] = v end
local letter_id = redis.call(unpack(letter))
redis.call('XACK', KEYS[1], group, id)
redis.call('SET', KEYS[3], 'dead|' .. letter_id .. '|' .. ARGV[4] .. '|' .. consumer,
  'PX', ARGV[6])
return {DEAD, letter_id}
