"""`CAMPAY_WEBHOOK_ALLOWED_IPS`: a callback from any other address is refused before anything else."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from core.settings import SettingsError, load_settings
from tests.campay_fake import FakeCampay
from tests.conftest import StartInstance, campay_settings


async def _pending(instance: Any) -> str:
    status, body, _ = await instance.api.initiate(order_id="o-allow")
    assert status == 201
    return body["reference"]


async def test_webhook_from_an_address_outside_the_allowlist_is_403_and_changes_nothing(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, json_log: Any
) -> None:
    instance = await start_instance(**campay_settings(campay, CAMPAY_WEBHOOK_ALLOWED_IPS="203.0.113.0/24, 2001:db8::7"))
    reference = await _pending(instance)
    campay.set_status(reference, "SUCCESSFUL")
    calls = campay.calls["transaction"]
    status, body = await campay.send_webhook(http, instance.url, reference)  # from 127.0.0.1
    assert status == 403 and body["error"]["code"] == "forbidden_source"
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    assert campay.calls["transaction"] == calls
    refused = [line for line in json_log.refresh() if line["event"] == "webhook refused"]
    assert refused and refused[0]["logger"] == "paytrack.audit" and refused[0]["source"] == "127.0.0.1"
    async with http.get(instance.url + "metrics") as resp:
        assert 'paytrack_webhooks_total{outcome="forbidden_source"} 1.0' in await resp.text()


@pytest.mark.parametrize(
    "forwarded_for, expected",
    [("203.0.113.9", 200), ("2001:db8::7", 200), ("198.51.100.1", 403), ("not-an-address", 403)],
)
async def test_allowlist_checks_the_forwarded_client_address_behind_a_trusted_proxy(
    start_instance: StartInstance, campay: FakeCampay, forwarded_for: str, expected: int
) -> None:
    instance = await start_instance(
        **campay_settings(
            campay,
            CAMPAY_WEBHOOK_ALLOWED_IPS="203.0.113.0/24,2001:db8::7",
            TRUST_FORWARDED_FOR=True,
        )
    )
    reference = await _pending(instance)
    campay.set_status(reference, "SUCCESSFUL")
    # The entry our proxy appended is the last one; the first was sent by the caller and proves nothing.
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": f"203.0.113.66, {forwarded_for}"}) as http:
        status, _ = await campay.send_webhook(http, instance.url, reference)
    assert status == expected
    final = (await instance.storage.get_payment(reference)).status.value
    assert final == ("SUCCESSFUL" if expected == 200 else "PENDING")


def test_allowlist_entries_are_addresses_or_cidr_ranges() -> None:
    settings = load_settings(_env_file=None, CAMPAY_WEBHOOK_ALLOWED_IPS="203.0.113.7, 10.0.0.0/8")
    assert [str(n) for n in settings.CAMPAY_WEBHOOK_ALLOWED_IPS] == ["203.0.113.7/32", "10.0.0.0/8"]
    assert load_settings(_env_file=None, CAMPAY_WEBHOOK_ALLOWED_IPS="").CAMPAY_WEBHOOK_ALLOWED_IPS == []
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, CAMPAY_WEBHOOK_ALLOWED_IPS="203.0.113.7,campay.net")
    assert [p.variable for p in refused.value.problems] == ["CAMPAY_WEBHOOK_ALLOWED_IPS"]
    assert "campay.net" in str(refused.value)
