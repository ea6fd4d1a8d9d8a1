-- KEYS[1] record key; ARGV token, lease_ms, fingerprint ('' for none), now (see now_ms).
-- Takes the key when absent, expired, or IN_PROGRESS under the same token:
--   {1, takeover (0|1), now}
-- otherwise answers with the holder's value in the same call:
--   {0, value, now}
-- and to a value that is not a record (see parse), which it leaves as it is:
--   {-1, value, now}
-- A record that Powertools wrote (see powertools) is never the caller's own: it is
-- answered while live and taken once ended (a takeover when it was INPROGRESS).
local token, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local v = redis.call('GET', KEYS[1])
local takeover = 0
if v then
  local status, holder, deadline, fingerprint, key_expiry = parse(v)
  if not status then
    status, deadline = powertools(v)
    if not status then return {-1, v, now} end
    holder = nil
  end
  if deadline > now and not (status == 'P' and holder == token) then
    -- A natively written claim is answered with its real deadline (see parse).
    local real = key_expiry and expiry_deadline()
    if real then v = header(status, holder, real, fingerprint) end
    return {0, v, now}
  end
  if status == 'P' and holder ~= token then takeover = 1 end
end
redis.call('SET', KEYS[1], header('P', token, now + lease, ARGV[3]), 'PX', lease)
return {1, takeover, now}
