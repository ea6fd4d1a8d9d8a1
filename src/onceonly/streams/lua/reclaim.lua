-- Take over entries idle past a threshold, from any consumer of the group,
-- with the delivery counts this claim made.
-- KEYS[1] stream; ARGV group, consumer, min idle ms, cursor, count.
-- XAUTOCLAIM raises each claimed entry's delivery count by one (so the old
-- owner's late commit is FENCED); XPENDING, in the same script, reads the counts.
-- Reply: {next cursor, {id, fields (false: trimmed, Redis < 7), deliveries, ...},
-- {ids deleted while pending (Redis >= 7: XAUTOCLAIM dropped them from the PEL)}}.
local group, consumer = ARGV[1], ARGV[2]
local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], group, e[1], e[1], 1)[1]
  out[#out + 1] = e[1]
  out[#out + 1] = e[2] or false
  out[#out + 1] = p and p[4] or 0
end
return {r[1], out, r[3] or {}}
