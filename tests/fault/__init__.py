"""Fault injection on real processes: the guarantee of docs/API.md under crashes, outages and lying webhooks.

Two `server.py` processes share one real `redis-server` (append-only, fsync
always, like production) and talk to the CamPay fake over HTTP. A driver plays
the shoppers (REST initiations with JWT users), their checkout pages (one or two
Socket.IO clients per payment, re-tracking with `last_seq` on every reconnect)
and CamPay (true outcomes, signed webhooks dropped, duplicated, reordered,
forged). Meanwhile one server is SIGKILLed and restarted, Redis is stopped for
about five seconds, and CamPay's status API answers 503 for a while. Every
initiate carries an Idempotency-Key; the kill catches "crash" payments whose
collects CamPay accepted but whose answers it held (issue 31: every franc
reaches its order), and a merchant receiver records the outbound webhooks.

- `processes.py`: the server processes (start, readiness, SIGKILL, log tails).
- `clients.py`: one checkout page (its connections and every event received).
- `plan.py`: the plan of one run (its knobs, and what CamPay does for each payment).
- `scenario.py`: the driver that plays it on real processes, and what it records.
- `checks.py`: what the records say: violations of the guarantee and the figures.
- `run.py`: `python -m tests.fault.run --payments 500` prints the figures.

`tests/test_fault_injection.py` runs a ~220-payment scenario in CI.
"""
