-- KEYS[1] record key; ARGV token, now (see now_ms).
-- 1 released, or no live record is there (a retried release finds the key gone:
-- its job is done); 0 a live record of another owner, or a completed one, holds
-- the key (a live record Powertools wrote too); -1 the value is not a record.
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
local status, holder, deadline = parse(v)
if not status then
  status, deadline = powertools(v)
  if not status then return -1 end
  holder = nil
end
if deadline <= now_ms() then return 1 end
if status ~= 'P' or holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
