-- KEYS[1] record key; ARGV token, lease_ms, now (see now_ms).
-- 1 renewed; 0 the claim is lost; -1 the value is not a record.
local fingerprint, now = owned(ARGV[1])
if not fingerprint then return now end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], header('P', ARGV[1], now + lease, fingerprint), 'PX', lease)
return 1
