"""Merchant webhooks held to the Standard Webhooks specification (spec/standard-webhooks.md, 1.0.0).

A signing secret per endpoint, in the padded `whsec_` form, of 24 to 64 bytes; during a rotation every
message carries the signature of each secret, so a verifier holding either accepts it; `webhook-id` never
holds a `.`; a 410 Gone disables the endpoint for every instance; `Retry-After` on 429 and 503 sets the next
attempt; and in production only https endpoints that are not loopback, private or link-local addresses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from ipaddress import ip_address
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.clock import ManualClock, SystemClock
from core.secrets import decode_secret
from core.settings import SettingsError, load_settings
from payments.model import Payment, PaymentStatus
from payments.outbox import DisabledEndpoint, OutboxPolicy, endpoint_id, entry_reference
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage
from tests.conftest import Instance, StartInstance
from tests.harness import JWT_SECRET, PRODUCTION, eventually, make_settings, user_token
from tests.merchant_receiver import SECRET, MerchantReceiver, make_secret, merchant_settings
from tests.redis_server import RedisServer
from webhooks.outbound.delivery import DeliveryWorker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def other_merchant(aiohttp_server) -> AsyncIterator[MerchantReceiver]:  # type: ignore[no-untyped-def]
    """A second merchant endpoint, with a secret of its own."""
    receiver = MerchantReceiver(secret=make_secret("the-other-endpoint"))
    server = await aiohttp_server(receiver.app())
    receiver.url = str(server.make_url("/hooks"))
    yield receiver


async def _paid(instance: Instance, order_id: str, outcome: str = "SUCCESSFUL", token: str | None = None) -> str:
    api = instance.api.as_user(token) if token else instance.api
    status, body, _ = await api.initiate(order_id=order_id)
    assert status == 201, body
    assert (await api.simulate(body["reference"], outcome))[0] == 200
    return str(body["reference"])


def _problems(**settings: Any) -> list[str]:
    """What `load_settings` refuses in these settings (none: an empty list), each as `VARIABLE: message`."""
    try:
        load_settings(_env_file=None, **settings)
    except SettingsError as exc:
        return [str(p) for p in exc.problems]
    return []


def _b64(size: int) -> str:
    return base64.b64encode(bytes(range(size))).decode()


# -- secrets: one per endpoint, 24 to 64 bytes, padded whsec_ --------------------------------------


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (_b64(32), "must start with whsec_"),
        ("whsec_" + _b64(25).rstrip("="), "is not padded base64"),
        ("whsec_" + "not*base64*at*all!", "is not padded base64"),
        ("whsec_" + _b64(16), "decodes to 16 bytes; it must be 24 to 64 random bytes"),
        ("whsec_" + _b64(65), "decodes to 65 bytes; it must be 24 to 64 random bytes"),
    ],
)
def test_a_secret_outside_the_spec_is_refused_at_start_with_a_precise_message(secret: str, expected: str) -> None:
    problems = _problems(MERCHANT_WEBHOOK_URL="https://shop.example/hooks", MERCHANT_WEBHOOK_SECRET=secret)
    assert len(problems) == 1 and problems[0].startswith("MERCHANT_WEBHOOK_SECRET: ")
    assert expected in problems[0], problems
    assert secret not in problems[0]  # a secret is never echoed


@pytest.mark.parametrize("size", [24, 25, 26, 64])
def test_secrets_of_24_to_64_bytes_in_the_padded_form_are_accepted(size: int) -> None:
    secret = "whsec_" + _b64(size)
    assert _problems(MERCHANT_WEBHOOK_URL="https://shop.example/hooks", MERCHANT_WEBHOOK_SECRET=secret) == []
    assert decode_secret(secret) == bytes(range(size))


def test_each_url_needs_its_own_secret() -> None:
    two_urls = "https://shop.example/hooks,https://erp.example/paytrack"
    (shared,) = _problems(MERCHANT_WEBHOOK_URL=two_urls, MERCHANT_WEBHOOK_SECRET=SECRET)
    assert (
        shared.startswith("MERCHANT_WEBHOOK_SECRET: ") and "1 endpoint" in shared and "2 MERCHANT_WEBHOOK_URL" in shared
    )
    (reused,) = _problems(MERCHANT_WEBHOOK_URL=two_urls, MERCHANT_WEBHOOK_SECRET=f"{SECRET},{SECRET}")
    assert "endpoints 1 and 2 share a secret" in reused and SECRET not in reused
    (bad,) = _problems(MERCHANT_WEBHOOK_URL=two_urls, MERCHANT_WEBHOOK_SECRET=f"{SECRET},{make_secret('b')} whsec_x")
    assert "endpoint 2, secret 2: " in bad and "is not padded base64" in bad
    assert _problems(MERCHANT_WEBHOOK_URL=two_urls, MERCHANT_WEBHOOK_SECRET=f"{SECRET},{make_secret('b')}") == []
    twice = "https://shop.example/hooks,https://shop.example/hooks"
    (listed,) = _problems(MERCHANT_WEBHOOK_URL=twice, MERCHANT_WEBHOOK_SECRET=f"{SECRET},{make_secret('b')}")
    assert listed.startswith("MERCHANT_WEBHOOK_URL: https://shop.example/hooks listed more than once")


async def test_each_endpoint_is_signed_with_its_own_secret_and_both_secrets_verify_during_a_rotation(
    start_instance: StartInstance, merchant: MerchantReceiver, other_merchant: MerchantReceiver
) -> None:
    old, new = make_secret("the-old-secret"), make_secret("the-new-secret")
    merchant.secret = new
    instance = await start_instance(
        **merchant_settings(
            merchant,
            MERCHANT_WEBHOOK_URL=f"{merchant.url},{other_merchant.url}",
            MERCHANT_WEBHOOK_SECRET=f"{new} {old},{other_merchant.secret}",
        )
    )
    await _paid(instance, "order-rotation")
    await merchant.wait_for(accepted=1)
    await other_merchant.wait_for(accepted=1)

    rotating = merchant.accepted[0]
    assert len(rotating.headers["webhook-signature"].split(" ")) == 2  # both signatures, space-separated
    for verifier in (Webhook(old), Webhook(new)):  # a merchant still on the old secret, and one on the new
        assert verifier.verify(rotating.raw, rotating.headers)["id"] == rotating.message_id

    single = other_merchant.accepted[0]
    assert other_merchant.accepted[0].verified and len(single.headers["webhook-signature"].split(" ")) == 1
    for stranger in (Webhook(old), Webhook(new)):  # the first endpoint's secrets do not sign the second's
        with pytest.raises(WebhookVerificationError):
            stranger.verify(single.raw, single.headers)


# -- webhook-id: the message id, never a `.` -------------------------------------------------------


async def test_webhook_id_holds_no_full_stop_even_when_the_reference_does(merchant: MerchantReceiver) -> None:
    """The spec signs `{id}.{timestamp}.{body}`: an id with a `.` makes two messages sign alike."""
    reference = "ref.2026.01"
    payment = Payment(
        reference=reference,
        order_id="order-1",
        amount=500,
        phone_number="237671234567",
        owner_id="alice",
        status=PaymentStatus.SUCCESSFUL,
        seq=2,
        created_at=T0,
        updated_at=T0,
    )
    now = datetime.now(UTC)
    (entry,) = OutboxPolicy([merchant.url], ["payment.succeeded"]).entries_for(payment, now)
    assert "." not in entry.message_id and json.loads(entry.body)["id"] == entry.message_id
    assert entry_reference(entry.id) == reference  # storage still finds the entry's payment (its bucket)

    storage = MemoryStorage(SystemClock(), payment_ttl=3600, client_ttl=3600, event_log_max=50)
    storage.outbox.enqueue([entry])
    worker = DeliveryWorker(
        storage, SystemClock(), endpoints={merchant.url: [decode_secret(merchant.secret)]}, timeout=15, max_attempts=3
    )
    try:
        assert await worker.run_once() == 1
    finally:
        await worker.stop()
    (delivery,) = merchant.accepted
    assert delivery.verified and delivery.headers["webhook-id"] == entry.message_id
    assert "." not in delivery.headers["webhook-id"]


# -- 410 Gone disables the endpoint -----------------------------------------------------------------


async def _outbox_view(instance: Instance) -> dict[str, Any]:
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/outbox")
    assert status == 200
    return dict(body)


async def _dead_entry(instance: Instance, reference: str) -> dict[str, Any] | None:
    return next((e for e in (await _outbox_view(instance))["dead"] if e["reference"] == reference), None)


async def test_a_410_disables_the_endpoint_until_the_operator_enables_it(
    start_instance: StartInstance, merchant: MerchantReceiver, json_log: Any
) -> None:
    merchant.responses = [410]
    instance = await start_instance(**merchant_settings(merchant))
    gone_ref = await _paid(instance, "order-gone")
    await merchant.wait_for(attempts=1)

    dead = await eventually(lambda: _dead_entry(instance, gone_ref))
    assert dead["attempts"] == 1 and dead["last_error"] == "HTTP 410 Gone: endpoint disabled"
    (disabled,) = (await _outbox_view(instance))["disabled_endpoints"]
    assert disabled["endpoint_id"] == endpoint_id(merchant.url) and disabled["url"] == merchant.url
    assert disabled["reason"] == "HTTP 410 Gone" and disabled["message_id"] == dead["message_id"]
    async with instance.api.session.get(instance.url + "metrics") as resp:
        assert "paytrack_merchant_endpoints_disabled_total 1.0" in await resp.text()
    lines = [line for line in json_log.refresh() if line["event"] == "merchant endpoint disabled"]
    assert [(line["level"], line["url"], line["status"]) for line in lines] == [("error", merchant.url, 410)]

    # No further attempts: the next message is dead-lettered without being sent.
    later_ref = await _paid(instance, "order-after-gone")
    later = await eventually(lambda: _dead_entry(instance, later_ref))
    assert later["attempts"] == 0 and later["last_error"].startswith("endpoint disabled")
    assert len(merchant.attempts) == 1

    path = f"/api/payment/debug/outbox/endpoints/{disabled['endpoint_id']}/enable"
    status, body, _ = await instance.api.request("POST", path)
    assert status == 200 and body["enabled"]["url"] == merchant.url
    assert (await _outbox_view(instance))["disabled_endpoints"] == []
    status, body, _ = await instance.api.request("POST", path)
    assert status == 404 and body["error"]["code"] == "endpoint_not_disabled"
    assert (await instance.api.request("POST", f"/api/payment/debug/outbox/{later['id']}/replay"))[0] == 200
    await merchant.wait_for(accepted=1)
    assert merchant.accepted[0].body["data"]["reference"] == later_ref


@pytest.mark.redis
async def test_a_410_seen_by_one_instance_stops_every_instance(
    start_redis_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    merchant.responses = [410]
    a = await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="a")
    b = await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="b")
    await _paid(a, "order-gone-a")
    await merchant.wait_for(attempts=1)
    await eventually(lambda: _disabled_on(b))
    later_ref = await _paid(b, "order-gone-b")
    later = await eventually(lambda: _dead_entry(a, later_ref))
    assert later["attempts"] == 0 and len(merchant.attempts) == 1


async def _disabled_on(instance: Instance) -> list[dict[str, Any]]:
    return list((await _outbox_view(instance))["disabled_endpoints"])


# -- Retry-After on 429 and 503 ---------------------------------------------------------------------


async def _retried(instance: Instance) -> Any:
    entries = [e for e in await instance.storage.outbox_list() if e.attempts == 1 and e.state == "pending"]
    return entries[0] if entries else None


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [
        (503, "120", 120),
        (429, "7", 7),
        (503, format_datetime(T0 + timedelta(hours=1), usegmt=True), 3600),  # an HTTP date
        (429, str(30 * 86400), 86400),  # a month: bounded to a day
    ],
)
async def test_retry_after_on_429_and_503_sets_the_next_attempt(
    start_instance: StartInstance, merchant: MerchantReceiver, status: int, retry_after: str, wait: int
) -> None:
    clock = ManualClock(T0)  # stands still: the next attempt's time is read from the outbox, never waited for
    merchant.responses = [(status, {"Retry-After": retry_after})]
    instance = await start_instance(clock, **merchant_settings(merchant))
    await _paid(instance, f"order-retry-after-{status}-{wait}")
    entry = await eventually(lambda: _retried(instance))
    assert entry.last_error == f"HTTP {status}"
    assert entry.next_attempt_at == T0.timestamp() + wait


@pytest.mark.parametrize("retry_after", ["soon", "-5", format_datetime(T0 - timedelta(hours=1), usegmt=True)])
async def test_a_retry_after_that_says_nothing_usable_leaves_the_schedule(
    start_instance: StartInstance, merchant: MerchantReceiver, retry_after: str
) -> None:
    clock = ManualClock(T0)
    merchant.responses = [(503, {"Retry-After": retry_after})]
    instance = await start_instance(clock, **merchant_settings(merchant))  # the schedule scaled to 5 ms
    await _paid(instance, "order-retry-after-junk")
    entry = await eventually(lambda: _retried(instance))
    assert T0.timestamp() < entry.next_attempt_at < T0.timestamp() + 1


# -- production: public https endpoints only --------------------------------------------------------


def test_production_refuses_plain_http_and_literal_private_addresses_at_start() -> None:
    urls = [
        "http://shop.example/hooks",
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://[fe80::1]/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost:8443/hooks",
        "https://shop.example/hooks",  # fine
    ]
    secrets = ",".join(make_secret(f"endpoint-{i}") for i in range(len(urls)))
    settings = {**PRODUCTION, "MERCHANT_WEBHOOK_URL": ",".join(urls), "MERCHANT_WEBHOOK_SECRET": secrets}
    problems = [p for p in _problems(**settings) if p.startswith("MERCHANT_WEBHOOK_URL: ")]
    assert problems == [
        "MERCHANT_WEBHOOK_URL: http://shop.example/hooks must be https:// in production "
        "(MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
        "MERCHANT_WEBHOOK_URL: https://127.0.0.1/hooks is a loopback address; production sends only to public "
        "addresses (MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
        "MERCHANT_WEBHOOK_URL: https://10.1.2.3/hooks is a private address; production sends only to public "
        "addresses (MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
        "MERCHANT_WEBHOOK_URL: https://[fe80::1]/hooks is a link-local address; production sends only to public "
        "addresses (MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
        "MERCHANT_WEBHOOK_URL: https://169.254.169.254/latest/meta-data is a link-local address; production sends "
        "only to public addresses (MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
        "MERCHANT_WEBHOOK_URL: https://localhost:8443/hooks is a loopback address; production sends only to public "
        "addresses (MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only)",
    ]
    assert _problems(**settings, MERCHANT_WEBHOOK_ALLOW_PRIVATE=True) == []
    development = {**settings, "APP_ENV": "development", "AUTH_MODE": "none"}
    assert _problems(**development) == []


def _loopback_name() -> str:
    """A name (not an address) the system resolver maps to this machine: the host's own name."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    assert addresses and not any(ip_address(a).is_global for a in addresses), (
        f"this test needs the host name {name!r} to resolve to a non-public address; it resolves to {addresses}"
    )
    return name


async def test_production_refuses_at_send_time_a_name_that_resolves_to_a_private_address(
    start_instance: StartInstance, merchant: MerchantReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    name = _loopback_name()
    port = merchant.url.split(":")[2].split("/")[0]
    url = f"https://{name}:{port}/hooks"
    clock = ManualClock(datetime.now(UTC))  # stands still: one attempt, then the rescheduled entry is read
    instance = await start_instance(
        clock,
        **{
            **PRODUCTION,
            **merchant_settings(merchant, MERCHANT_WEBHOOK_URL=url, MERCHANT_WEBHOOK_ALLOW_PRIVATE=False),
            "SIMULATE_ENABLED": True,
        },
    )
    with caplog.at_level(logging.ERROR, logger="paytrack.merchant"):
        await _paid(instance, "order-private", token=user_token("alice", secret=JWT_SECRET))
        entry = await eventually(lambda: _retried(instance))
    assert entry.state == "pending" and entry.next_attempt_at > clock.now().timestamp()  # rescheduled
    assert entry.last_error.startswith(f"refused: {name} resolves to ")
    assert "not a public address" in entry.last_error
    assert merchant.attempts == []  # nothing reached the receiver
    refused = [r for r in caplog.records if r.getMessage() == "merchant webhook refused: endpoint is not public"]
    assert refused and getattr(refused[0], "url", None) == url


class RawMerchant:
    """A merchant endpoint that answers every request with the same raw bytes, whatever HTTP it breaks: what
    an aiohttp server would not send (a header value outside ASCII) a merchant's proxy may."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hooks"

    async def start(self) -> RawMerchant:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def raw_merchant() -> AsyncIterator[Callable[[bytes], Awaitable[RawMerchant]]]:
    started: list[RawMerchant] = []

    async def start(answer: bytes) -> RawMerchant:
        started.append(await RawMerchant(answer).start())
        return started[-1]

    yield start
    for merchant in started:
        await merchant.stop()


@pytest.mark.parametrize(
    "retry_after",
    ["\N{SUPERSCRIPT TWO}", "\N{CIRCLED DIGIT NINE}", "Wed, 21 Oct 2099 07:28:00 +99999999999999999999"],
    ids=["superscript-two", "circled-nine", "date-with-a-huge-offset"],
)
async def test_a_retry_after_python_cannot_read_is_a_failed_attempt_like_any_other(
    start_instance: StartInstance, raw_merchant: Callable[[bytes], Awaitable[RawMerchant]], retry_after: str
) -> None:
    """A 503 whose Retry-After Python's parsers choke on (`²`, `⑨`: str.isdigit says yes, float() says
    ValueError; a date whose offset overflows a C int: OverflowError) says nothing usable: the attempt is
    counted and rescheduled on the schedule, like `soon`. It must not escape the attempt, which then stays
    claimed with no attempt counted, and is sent again each time its claim runs out, never dead-lettered."""
    merchant = await raw_merchant(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
        + retry_after.encode()
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    clock = ManualClock(T0)  # stands still: one attempt, then the rescheduled entry is read
    instance = await start_instance(
        clock,
        MERCHANT_WEBHOOK_URL=merchant.url,
        MERCHANT_WEBHOOK_SECRET=SECRET,
        MERCHANT_WEBHOOK_RETRY_SCALE=0.001,
        MERCHANT_WEBHOOK_POLL_SECONDS=0.02,
    )
    await _paid(instance, "order-retry-after-not-ascii")
    entry = await eventually(lambda: _retried(instance))
    assert merchant.requests == 1
    assert entry.last_error == "HTTP 503"
    assert T0.timestamp() < entry.next_attempt_at < T0.timestamp() + 1  # the schedule's first step, scaled


@pytest.mark.redis
async def test_an_endpoint_another_instance_disabled_stays_disabled_here_while_redis_is_away(
    start_redis_instance: StartInstance, redis_server: RedisServer, merchant: MerchantReceiver
) -> None:
    """Instance B hears a 410 and disables the endpoint on Redis while this instance, A, has nothing to send
    (so it reads no list). Redis goes away; A, on memory, queues a message for that endpoint. A must still
    know the endpoint is disabled (the storage mirrors the list read from Redis): the message is dead-lettered
    unsent, not delivered to an endpoint its merchant said is gone."""
    a = await start_redis_instance(**merchant_settings(merchant), REDIS_KEY_PREFIX="gone-while-away:")
    b = RedisStorage.from_settings(
        make_settings(REDIS_URL=redis_server.url, REDIS_KEY_PREFIX="gone-while-away:", REDIS_TIMEOUT_SECONDS=1.0),
        SystemClock(),
    )
    await b.start()
    gone = DisabledEndpoint(
        endpoint_id=endpoint_id(merchant.url),
        url=merchant.url,
        disabled_at=datetime.now(UTC).timestamp(),
        reason="HTTP 410 Gone",
        message_id="msg_elsewhere_succeeded",
    )
    try:
        assert await b.endpoint_disable(gone)  # what B's worker does on a 410
    finally:
        await b.close()
    fallback = a.storage.fallback  # A's memory: what A goes by while Redis is away
    await eventually(lambda: fallback.endpoints.get(gone.endpoint_id) is not None)

    redis_server.stop()
    reference = await _paid(a, "order-while-away")
    dead = await eventually(lambda: _dead_entry(a, reference))
    assert dead["attempts"] == 0 and dead["last_error"].startswith("endpoint disabled")
    assert merchant.attempts == []
