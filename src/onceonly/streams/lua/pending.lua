-- This consumer's own pending entries after an id, with their delivery counts.
-- KEYS[1] stream; ARGV group, consumer, count, after (an entry id; '0' first).
-- XREADGROUP with an id re-delivers pending entries (their counts go up by one);
-- XPENDING, in the same script, reads the counts that this delivery made.
-- Reply: id, fields (nil: the entry was deleted or trimmed), deliveries, id, ...
local group, consumer = ARGV[1], ARGV[2]
local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], ARGV[4])
local entries = read and read[1] and read[1][2]
if not entries or #entries == 0 then return {} end
local counts = {}
local first, last = entries[1][1], entries[#entries][1]
for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, first, last, #entries, consumer)) do
  counts[p[1]] = p[4]
end
local out = {}
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2] or false
  out[#out + 1] = counts[e[1]] or 0
end
return out
