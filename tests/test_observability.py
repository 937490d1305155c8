"""What operators see: Prometheus metrics, X-Request-ID, and structured log fields."""

from __future__ import annotations

import gc
import math
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from observability.metrics import InstrumentedStorage, Metrics
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, eventually

TOKEN = "metrics-token-0123456789"


async def scrape(instance: Instance, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    async with instance.api.session.get(instance.api.base_url + "/metrics", headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_count_sockets_tracking_payments_and_update_latency(instance: Instance) -> None:
    tracker = await instance.tracker()
    _, payment, _ = await instance.api.initiate(order_id="m-1")
    await tracker.track(payment["reference"])
    status, _, _ = await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200
    await tracker.wait_for("payment-success")

    samples = await scrape(instance)
    assert value(samples, "paytrack_connected_sockets") == 1
    assert value(samples, "paytrack_tracked_payments") == 1
    assert value(samples, "paytrack_payments_total", status="PENDING") == 1
    assert value(samples, "paytrack_payments_total", status="SUCCESSFUL") == 1
    assert value(samples, "paytrack_update_to_emit_seconds_count") == 1
    assert math.isnan(value(samples, "paytrack_redis_up"))  # memory backend: no Redis to be up or down

    await tracker.disconnect()
    await eventually(lambda: _connected(instance) == 0)


def _connected(instance: Instance) -> float:
    from observability.metrics import METRICS

    return instance.app[METRICS].registry.get_sample_value("paytrack_connected_sockets")


async def test_each_app_has_its_own_registry(start_instance: StartInstance) -> None:
    busy, idle = await start_instance(), await start_instance()
    await busy.api.initiate(order_id="m-2")
    assert value(await scrape(busy), "paytrack_payments_total", status="PENDING") == 1
    assert value(await scrape(idle), "paytrack_payments_total", status="PENDING") is None


async def test_metrics_are_404_in_production_without_token_or_public(start_instance: StartInstance) -> None:
    closed = await start_instance(**PRODUCTION)
    status, body, _ = await closed.api.request("GET", "/metrics")
    assert status == 404 and body["error"]["code"] == "not_found"

    tokened = await start_instance(**PRODUCTION, METRICS_TOKEN=TOKEN)
    for auth in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        status, _, _ = await tokened.api.request("GET", "/metrics", headers=auth)
        assert status == 404
    assert value(await scrape(tokened, Authorization=f"Bearer {TOKEN}"), "paytrack_connected_sockets") == 0

    public = await start_instance(**PRODUCTION, METRICS_PUBLIC=True)
    assert value(await scrape(public), "paytrack_connected_sockets") == 0


def test_metrics_token_must_be_long_enough() -> None:
    from core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="METRICS_TOKEN"):
        load_settings(_env_file=None, METRICS_TOKEN="short")


async def test_webhook_outcomes_and_provider_calls_are_counted(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    live = await start_instance(**campay_settings(campay))
    _, payment, _ = await live.api.initiate(order_id="m-3")
    ref = payment["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    assert (await campay.send_webhook(http, live.url, ref))[0] == 200
    assert (await campay.send_webhook(http, live.url, ref))[0] == 200  # duplicate
    assert (await campay.send_webhook(http, live.url, ref, key="forged-key-forged-key-forged-key"))[0] == 401

    _, other, _ = await live.api.initiate(order_id="m-4")
    campay.fail_next["transaction"] = [503] * 10  # more than the retries: CamPay is down
    status, body = await campay.send_webhook(http, live.url, other["reference"])
    assert status == 202 and body["outcome"] == "verification_pending"

    samples = await scrape(live)
    assert value(samples, "paytrack_webhooks_total", outcome="applied") == 1
    assert value(samples, "paytrack_webhooks_total", outcome="duplicate") == 1
    assert value(samples, "paytrack_webhooks_total", outcome="invalid_signature") == 1
    assert value(samples, "paytrack_webhooks_total", outcome="verification_pending") == 1
    assert value(samples, "paytrack_provider_request_seconds_count", provider="campay", operation="collect") == 2
    assert value(samples, "paytrack_provider_request_seconds_count", provider="campay", operation="transaction") == 3
    assert (
        value(
            samples,
            "paytrack_provider_errors_total",
            provider="campay",
            operation="transaction",
            code="provider_unavailable",
        )
        == 1
    )


class _UnreachableBackend:
    """Stands in for a storage backend whose server is gone (what redis-py raises)."""

    backend = "broken"

    async def get_payment(self, reference: str) -> Any:
        raise ConnectionError("connection refused")


async def test_storage_failures_are_counted_by_operation() -> None:
    metrics = Metrics()
    storage = InstrumentedStorage(_UnreachableBackend(), metrics)
    assert storage.backend == "broken"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await storage.get_payment("ref-1")
    assert 'paytrack_storage_errors_total{operation="get_payment"} 2.0' in metrics.render().decode()


# -- request ids and log fields --------------------------------------------------------


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(instance: Instance) -> None:
    _, _, headers = await instance.api.request("GET", "/health", headers={"X-Request-ID": "checkout-7f3a:1"})
    assert headers["X-Request-ID"] == "checkout-7f3a:1"
    for bad in ("has spaces", "x" * 200, "<script>"):
        _, _, headers = await instance.api.request("GET", "/health", headers={"X-Request-ID": bad})
        assert headers["X-Request-ID"] != bad and len(headers["X-Request-ID"]) == 32
    status, body, headers = await instance.api.request("GET", "/no/such/route")
    assert status == 404 and body["error"]["code"] == "not_found" and len(headers["X-Request-ID"]) == 32
    status, _, headers = await instance.api.request(
        "POST", "/api/payment/initiate", data=b"{", headers={"X-Request-ID": "r-400"}
    )
    assert status == 400 and headers["X-Request-ID"] == "r-400"


async def test_log_lines_carry_request_id_and_reference(instance: Instance, json_log: Any) -> None:
    _, payment, _ = await instance.api.initiate(order_id="log-1", headers={"X-Request-ID": "req-initiate"})
    ref = payment["reference"]
    await instance.api.request(
        "POST",
        "/api/payment/test/simulate",
        json={"reference": ref, "status": "SUCCESSFUL"},
        headers={"X-Request-ID": "req-simulate"},
    )
    lines = json_log.refresh()
    initiated = next(line for line in lines if line["event"] == "payment initiated")
    assert initiated["request_id"] == "req-initiate" and initiated["reference"] == ref
    assert initiated["instance"] == "test-instance" and initiated["level"] == "info"
    applied = next(line for line in lines if line["event"] == "status update applied")
    assert applied["request_id"] == "req-simulate" and applied["reference"] == ref and applied["seq"] == 2


async def test_lines_logged_deep_inside_a_webhook_carry_its_reference(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, json_log: Any
) -> None:
    live = await start_instance(**campay_settings(campay))
    _, payment, _ = await live.api.initiate(order_id="log-2")
    ref = payment["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    campay.revoke_tokens()  # the provider client logs its token renewal while verifying this webhook
    assert (await campay.send_webhook(http, live.url, ref))[0] == 200
    renewal = next(line for line in json_log.refresh() if line["event"] == "CamPay token rejected; renewing once")
    assert renewal["reference"] == ref and len(renewal["request_id"]) == 32
    accepted = next(line for line in json_log.refresh() if line["event"] == "webhook accepted")
    assert accepted["request_id"] == renewal["request_id"] and accepted["outcome"] == "applied"


@pytest.mark.redis
async def test_redis_reachability_and_storage_failures_during_an_outage(
    start_redis_instance: StartInstance, redis_server: Any
) -> None:
    instance = await start_redis_instance(REDIS_KEY_PREFIX="metrics:")
    await instance.api.initiate(order_id="m-redis")
    samples = await scrape(instance)
    assert value(samples, "paytrack_redis_up") == 1
    assert value(samples, "paytrack_payments_total", status="PENDING") == 1

    redis_server.stop()
    await instance.api.request("GET", "/api/payment/status/m-redis")  # served from memory, Redis failing
    samples = await scrape(instance)
    assert value(samples, "paytrack_redis_up") == 0
    failures = {labels: v for (name, labels), v in samples.items() if name == "paytrack_storage_errors_total"}
    assert sum(failures.values()) >= 1, samples


async def test_metrics_time_each_garbage_collector_pass_by_generation(instance: Instance) -> None:
    before = value(await scrape(instance), "paytrack_gc_pause_seconds_count", generation="2") or 0.0
    gc.collect()  # one full pass, timed like any other
    after = value(await scrape(instance), "paytrack_gc_pause_seconds_count", generation="2")
    assert after is not None and after >= before + 1


async def test_the_collector_timer_is_removed_at_cleanup() -> None:
    metrics = Metrics()
    lifetime = metrics.gc_pauses()(web.Application())
    await anext(lifetime)
    gc.collect(0)
    timed = metrics.registry.get_sample_value("paytrack_gc_pause_seconds_count", {"generation": "0"})
    assert timed is not None and timed >= 1
    with pytest.raises(StopAsyncIteration):
        await anext(lifetime)
    gc.collect(0)
    assert metrics.registry.get_sample_value("paytrack_gc_pause_seconds_count", {"generation": "0"}) == timed
