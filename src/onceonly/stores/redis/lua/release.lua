-- KEYS[1] record key; ARGV token, now (see now_ms).
-- 1 released; 0 the claim is lost; -1 the value is not a record.
local fingerprint, now = owned(ARGV[1])
if not fingerprint then return now end
redis.call('DEL', KEYS[1])
return 1
