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

# Store a payment decided in Python (payments.state), but only if the stored copy is still the one the
# decision read (ARGV[1], '' for none): compare-and-set, so the rule has one copy and the write one
# round trip. Returns {1} when written, else {0, the stored copy ('' for none)} to decide again on.
# KEYS: payment, its event log, its order's index entry, the PENDING index, outbox entries, outbox due.
# ARGV: [1] expected copy, [2] new copy ('' stores nothing: outbox entries only), [3] TTL seconds,
#   [4] reference, [5] order index: '1' point it here (a new initiation), '0' only if free or already
#   here (so a write-back never re-points an order at an older payment), '' leave it,
#   [6] PENDING score ('' removes it from the index), [7] event ('' none), [8] event log cap,
#   [9...] outbox entries as (id, JSON, due) triples, each written once per id.
STORE_PAYMENT = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return {0, current or ''}
end
local ttl, reference = ARGV[3], ARGV[4]
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
  if ARGV[5] ~= '' then
    local holder = redis.call('GET', KEYS[3])
    if ARGV[5] == '1' or not holder or holder == reference then
      redis.call('SET', KEYS[3], reference, 'EX', ttl)
    end
  end
  if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[4], ARGV[6], reference)
  else
    redis.call('ZREM', KEYS[4], reference)
  end
  if ARGV[7] ~= '' then
    redis.call('RPUSH', KEYS[2], ARGV[7])
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
  end
  redis.call('EXPIRE', KEYS[2], ttl)
end
for i = 9, #ARGV, 3 do
  redis.call('HSETNX', KEYS[5], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[6], 'NX', ARGV[i + 2], ARGV[i])
end
return {1}
"""
