"""Storage split by role, one small class per role and backend.

Layout, and why it is this one:

    base.py        the roles realtime and auth own (ClientRegistry, AuthCacheStore) and `Storage`, the union;
                   payments/ports.py holds the payment roles (PaymentStore, IdempotencyStore, LockService,
                   OutboxStore)
    composite.py   `CompositeStorage`: one object with every role's methods, delegated once from the role
                   objects, so call sites keep `storage.get_payment(...)`, `storage.list_clients()`, ...
    expiring.py    `ExpiringMap`, the TTL dict every memory role keeps its data in
    keys.py        every Redis key name
    memory/        one module per role (payments, clients, idempotency, outbox, locks, auth) + the assembly
    redis/         the same roles on Redis, plus `context.py` (client, keys, the optimistic WATCH helper)
                   and `scripts.py` (every Lua script)
    resilient/     Redis with a memory fallback: `failover.py` is the ONE generic wrapper (route to the
                   primary while healthy, to memory while degraded, write back on recovery) and
                   `policies.py` the small per-role parts (what to remember, how to write it back)
    factory.py     picks the backend from settings

A package per backend (rather than a module per role holding both backends)
keeps each backend's shared plumbing (a Redis client and key names, or the
clock and TTLs) private to it, and lets a reader compare one backend's roles
side by side; the contract both must keep is the protocols' docstrings and
tests/test_storage_contract.py.
"""
