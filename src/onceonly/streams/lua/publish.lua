-- Append an entry once per event id.
-- KEYS: 1 stream, 2 the event id's record. ARGV: 1 digest of the fields, 2 ttl ms,
-- 3 MAXLEN (~) or '', then the fields (name, value, ...).
-- Reply {code, entry id}: 2 appended now; 1 appended before with these fields;
-- 0 appended before with other fields (the id of that first entry).
local record = redis.call('GET', KEYS[2])
if record then
  local id, digest = string.match(record, '^([^|]*)|(.*)$')
  if id and digest == ARGV[1] then return {1, id} end
  return {0, id or ''}
end
local add = {'XADD', KEYS[1]}
if ARGV[3] ~= '' then
  add[#add + 1] = 'MAXLEN'; add[#add + 1] = '~'; add[#add + 1] = ARGV[3]
end
add[#add + 1] = '*'
for i = 4, #ARGV do add[#add + 1] = ARGV[i] end
local id = redis.call(unpack(add))
redis.call('SET', KEYS[2], id .. '|' .. ARGV[1], 'PX', ARGV[2])
return {2, id}
