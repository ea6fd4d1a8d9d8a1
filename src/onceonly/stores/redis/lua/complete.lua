-- KEYS[1] record key; ARGV token, outcome, ttl_ms, now (see now_ms).
-- 1 stored; 0 the claim is lost; -1 the value is not a record.
local fingerprint, now = owned(ARGV[1])
if not fingerprint then
  if now == 0 then
    -- A complete retried after its reply was lost finds its own outcome: done.
    local status, holder = parse(redis.call('GET', KEYS[1]))
    if status == 'C' and holder == ARGV[1] then return 1 end
  end
  return now
end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], header('C', ARGV[1], now + ttl, fingerprint) .. ARGV[2], 'PX', ttl)
return 1
