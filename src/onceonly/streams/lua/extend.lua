-- Reset the idle time of entries this consumer is working on, so that no
-- other consumer's reclaim takes them meanwhile.
-- KEYS[1] stream; ARGV group, consumer, then id, delivery count read, id, ...
-- Only entries still pending on this consumer at the count it read are
-- touched (one reclaimed meanwhile stays with its new owner). XCLAIM ... JUSTID
-- keeps the delivery count, so this consumer's own commit is not fenced.
-- Reply: how many entries were extended.
local group, consumer = ARGV[1], ARGV[2]
local args = {KEYS[1], group, consumer, 0}
for i = 3, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)[1]
  if p and p[2] == consumer and p[4] == tonumber(ARGV[i + 1]) then args[#args + 1] = ARGV[i] end
end
if #args == 4 then return 0 end
args[#args + 1] = 'JUSTID'
return #redis.call('XCLAIM', unpack(args))
