"""Every Lua script the Redis roles run: each is one atomic step Redis cannot do in one command."""

# Compare-and-renew: extend the lease only if `owner` holds it, else take it if free.
ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Claim due outbox entries: push each one's due time forward by the lease, so
# no other worker sees it until the lease runs out (a dead claimer's entries
# come back by themselves), and return the entries.
CLAIM_OUTBOX = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""

# Point an order at a payment: a new initiation always (ARGV[3] == '1'); anything else only if the
# entry is free or already this payment's, so a write-back never re-points an order at an older payment.
INDEX_ORDER = """
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

# Drop dead letters that died before ARGV[1], then the oldest past ARGV[2] of them (scores are
# times of death); their entries leave the hash with them. Returns how many the cap dropped.
PRUNE_DEAD = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - #expired - tonumber(ARGV[2])
local capped = {}
if over > 0 then
  capped = redis.call('ZRANGE', KEYS[1], #expired, #expired + over - 1)
end
for _, ids in ipairs({expired, capped}) do
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('ZREM', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
end
return #capped
"""

RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
