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

# Claim due outbox entries for ARGV[4]: push each one's due time forward to the lease's end (ARGV[3]), so
# no other worker sees it until the lease runs out (a dead claimer's entries come back by themselves), name
# the claim's owner (the fence OUTBOX_PUT checks), and return the entries. An id whose entry is gone leaves
# the index. Entries ARGV[4] holds already come first: an owner is one claim pass, so this is the same call
# again (redis-py sends a command again on a new connection when the first one's answer was lost), and the
# claims the lost answer carried must reach their claimer rather than wait out the lease unsent.
# KEYS: due, entries, claims. ARGV: [1] now, [2] limit, [3] lease end, [4] owner.
CLAIM_OUTBOX = """
local claimed = {}
local claims = redis.call('HGETALL', KEYS[3])
for i = 1, #claims, 2 do
  if claims[i + 1] == ARGV[4] then
    local raw = redis.call('HGET', KEYS[2], claims[i])
    if raw and redis.call('ZSCORE', KEYS[1], claims[i]) then
      redis.call('ZADD', KEYS[1], ARGV[3], claims[i])
      claimed[#claimed + 1] = raw
    end
  end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, math.max(0, tonumber(ARGV[2]) - #claimed))
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    redis.call('HSET', KEYS[3], id, ARGV[4])
    claimed[#claimed + 1] = raw
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return claimed
"""

# End ARGV[1]'s claims on the entries still pending, each due again at ARGV[2] (it was due when claimed): a
# claimer that never got its claim's answer (Redis went away as it answered) gives the entries back rather
# than leave them unsent for the lease. Returns how many. KEYS: due, claims.
RELEASE_OUTBOX_CLAIMS = """
local released = 0
local claims = redis.call('HGETALL', KEYS[2])
for i = 1, #claims, 2 do
  if claims[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[2], claims[i])
    if redis.call('ZSCORE', KEYS[1], claims[i]) then
      redis.call('ZADD', KEYS[1], ARGV[2], claims[i])
      released = released + 1
    end
  end
end
return released
"""

# Extend ARGV[2]'s claim on a pending entry to ARGV[3] (never shorten it). KEYS: due, claims. ARGV: [1] id.
RENEW_OUTBOX_CLAIM = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
return 1
"""

# Write an entry decided in Python (outbox_edits), if the stored copy is still the one the decision read
# (ARGV[2]; '' for none) and, with a fence (ARGV[6] ~= ''), only while ARGV[6] holds the claim; never one
# delivered. ARGV[4] places it: 'due' at score ARGV[5], or 'dead' at ARGV[5]. ARGV[7]: the claim
# afterwards: '' ends it (and the entry is due at exactly ARGV[5]), '=' keeps it if it is live at ARGV[8]
# (now) and ends it if it lapsed, else its new owner, unless another owner's claim is still live, which is
# then kept; either way the entry is then never due earlier than a later due time or live claim there. Returns {1} written, {0}
# refused (fenced out, delivered, gone), {2, stored copy} when the stored copy changed since it was read
# (decide again on it).
# KEYS: entries, due, dead, claims, delivered. ARGV: [1] id, [2] expected copy, [3] new copy, [4] placement,
#   [5] score, [6] fence owner, [7] claim afterwards, [8] now.
OUTBOX_PUT = """
local id = ARGV[1]
if redis.call('ZSCORE', KEYS[5], id) then return {0} end
local holder = redis.call('HGET', KEYS[4], id)
if ARGV[6] ~= '' and holder ~= ARGV[6] then return {0} end
local current = redis.call('HGET', KEYS[1], id)
if (current or '') ~= ARGV[2] then
  if not current then return {0} end
  return {2, current}
end
local claim = ARGV[7]
if claim ~= '' and holder and holder ~= claim then
  local live = tonumber(redis.call('ZSCORE', KEYS[2], id) or '0') > tonumber(ARGV[8])
  if live then
    claim = '='
  elseif claim == '=' then
    claim = '-'  -- a lapsed claim nobody took up: it ends here
  end
end
redis.call('HSET', KEYS[1], id, ARGV[3])
if ARGV[4] == 'dead' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[3], ARGV[5], id)
  redis.call('HDEL', KEYS[4], id)
  return {1}
end
redis.call('ZREM', KEYS[3], id)
if claim == '' then
  redis.call('ZADD', KEYS[2], ARGV[5], id)
  redis.call('HDEL', KEYS[4], id)
else
  redis.call('ZADD', KEYS[2], 'GT', ARGV[5], id)
  if claim == '-' then
    redis.call('HDEL', KEYS[4], id)
  elseif claim ~= '=' then
    redis.call('HSET', KEYS[4], id, claim)
  end
end
return {1}
"""

# A delivered entry leaves, whoever holds its claim, and leaves a tombstone.
# KEYS: entries, due, dead, claims, delivered. ARGV: [1] id, [2] now.
OUTBOX_DELIVERED = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
return 1
"""

# In one bucket: drop dead letters that died before ARGV[1] (their entries leave the hash with them) and
# tombstones of deliveries before ARGV[2]; returns how many dead letters are left.
# KEYS: dead, entries, delivered.
PRUNE_DEAD = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for i = 1, #expired, 500 do
  local chunk = {unpack(expired, i, math.min(i + 499, #expired))}
  redis.call('ZREM', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
return redis.call('ZCARD', KEYS[1])
"""

# In one bucket: drop the dead letters ARGV names (the oldest past the cap, chosen over every bucket) if
# they are still dead letters; returns how many it dropped. KEYS: dead, entries.
DROP_DEAD = """
local dropped = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    dropped = dropped + 1
  end
end
return dropped
"""

# Extend a lease only if `owner` still holds it (never take it again: a lease that ended, by completion or
# by lapsing, stays ended). KEYS: lease. ARGV: [1] owner, [2] ms.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Store a payment decided in Python (payments.state), but only if the stored copy is still the one the
# decision read (ARGV[1], '' for none): compare-and-set, so the rule has one copy and the write one round
# trip. Every key is in the payment's bucket (keys.py); its order's keys are in the order's bucket, written
# by ORDER_PAID before and ORDER_POINT beside this script. Returns {1} when written, else {0, the stored copy
# ('' for none), the last write's token} to decide again on (or, when the stored copy is this very write and
# the token this write's, to learn that a reply redis-py lost was this write's success).
# KEYS: payment, its event log, the bucket's PENDING index, outbox entries, outbox due, the payment's last
#   write's token, the outbox's delivered tombstones.
# ARGV: [1] expected copy, [2] new copy ('' stores nothing: outbox entries only), [3] TTL seconds,
#   [4] reference, [5] PENDING score ('' removes it from the index), [6] event ('' none), [7] event log cap,
#   [8] this write's token (random), [9...] outbox entries as (id, JSON, due) triples, each written once
#   per id, and never one already delivered.
STORE_PAYMENT = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return {0, current or '', redis.call('GET', KEYS[6]) or ''}
end
local ttl, reference = ARGV[3], ARGV[4]
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
  if ARGV[5] ~= '' then
    redis.call('ZADD', KEYS[3], ARGV[5], reference)
  else
    redis.call('ZREM', KEYS[3], reference)
  end
  if ARGV[6] ~= '' then
    redis.call('RPUSH', KEYS[2], ARGV[6])
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[7]), -1)
  end
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('SET', KEYS[6], ARGV[8], 'EX', 60)
end
for i = 9, #ARGV, 3 do
  if not redis.call('ZSCORE', KEYS[7], ARGV[i]) then
    redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[5], 'NX', ARGV[i + 2], ARGV[i])
  end
end
return {1}
"""

# Put ARGV[1] on its order's paid list (space-separated references, the payer first) unless it is there, and
# return the list; it expires ARGV[2] seconds after the last payment to join or be stored SUCCESSFUL again.
# Runs before the payment is stored SUCCESSFUL (the payment's and the order's keys may be on two nodes), so a
# crash between the two leaves a member whose record is not SUCCESSFUL yet: readers check the records.
# KEYS: the order's paid list.
ORDER_PAID = """
local paid = redis.call('GET', KEYS[1]) or ''
local found = false
for reference in string.gmatch(paid, '%S+') do
  if reference == ARGV[1] then found = true end
end
if not found then
  paid = (paid == '' and ARGV[1]) or (paid .. ' ' .. ARGV[1])
end
redis.call('SET', KEYS[1], paid, 'EX', ARGV[2])
return paid
"""

# Point an order at payment ARGV[1]: ARGV[2] '1' always (a new initiation), '0' only if free or already here
# (so a write-back never re-points an order at an older payment); expires ARGV[3] seconds after.
# KEYS: the order's latest payment.
ORDER_POINT = """
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == '1' or not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
return 1
"""

# Claim an Idempotency-Key: the record and its lease together, or what is there and whether it is held.
# This very claim (the record, under this owner's lease) is claimed already: a try whose reply was lost (a
# timeout, a node failing over) made it, and the caller runs it again (redis-py's retry, the ride-out's).
# KEYS: record, lease. ARGV: [1] record JSON, [2] owner, [3] lease ms, [4] record TTL ms.
# Returns {1} when claimed, else {0, the stored record, 1 if its lease is held else 0}.
CLAIM_IDEMPOTENCY = """
local current = redis.call('GET', KEYS[1])
if current then
  if current == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then return {1} end
  return {0, current, redis.call('EXISTS', KEYS[2])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {1}
"""

# Take over a claim whose holder stopped renewing: only if the record is still the one seen and the lease
# is free; the record is replaced (naming the taker's nonce, its TTL kept). Taken already when the record
# is the replacement under the taker's lease (a try whose reply was lost, run again).
# KEYS: record, lease. ARGV: [1] expected record JSON, [2] owner, [3] lease ms, [4] replacement JSON.
TAKE_OVER_IDEMPOTENCY = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[4] and redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if current ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Store a key's final answer and end its lease; with a nonce (ARGV[3] ~= ''), only if the stored record is
# still that initiation's in-progress claim. KEYS: record, lease. ARGV: [1] record JSON, [2] TTL ms, [3] nonce.
COMPLETE_IDEMPOTENCY = """
if ARGV[3] ~= '' then
  local current = redis.call('GET', KEYS[1])
  if not current then return 0 end
  local record = cjson.decode(current)
  if record.state ~= 'in_progress' or record.nonce ~= ARGV[3] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# End a lease if `owner` holds it; with ARGV[2] == '1' delete the record too. KEYS: record, lease.
RELEASE_IDEMPOTENCY = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
return 1
"""

# Make nonce ARGV[1] hold its order unless another intent's nonce does (the first step of storing an intent;
# the intent itself is a key of its own, on whichever node its nonce hashes to). KEYS: the order's hold.
# ARGV: [1] nonce, [2] hold ms. Returns 1 when held by ARGV[1].
HOLD_ORDER = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Write an intent (ARGV[1]) for ARGV[2] ms: a script so that the WAIT after it shares its connection.
# KEYS: intent.
WRITE_INTENT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Replace an intent keeping its TTL (ARGV[1]), or drop it (''). KEYS: intent.
SETTLE_INTENT = """
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
end
return 1
"""

# Free an order if nonce ARGV[1] holds it. KEYS: the order's hold.
RELEASE_ORDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Enable a merchant endpoint: its record and its removal in one step (an endpoint disabled again meanwhile,
# a fresh 410, is not removed under the record an operator read). KEYS: disabled endpoints. ARGV: [1] id.
ENABLE_ENDPOINT = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then redis.call('HDEL', KEYS[1], ARGV[1]) end
return record
"""
