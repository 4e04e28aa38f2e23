"""Store-wide offline limits (``hub_limits``): every lane of a store shares one budget.

Two real lane Terminals (SQLCipher stores, simulated readers, the processor simulator) on a real
PostgreSQL hub: lane A's stored payments count against lane B's next offline payment; with the hub
stopped, or its answer too old, lane B falls back to its share; with no store-wide limit set, or
no hub, the policy approves.  The Terminals run without background tasks, so nothing is forwarded
behind the test's back and each replication round is the test's own (``catch_up``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lanes import lane_config, pay, set_hub_key

from offterm.core import Terminal, create_plugin_manager
from offterm.core.contracts import StateTotals
from offterm.core.contracts.policies import FleetExposure
from offterm.core.errors import OfftermError
from offterm.plugins.policies.hub_limits import (
    POLICY_NAME,
    HubLimitsPolicy,
    StoreOfflinePaymentCountLimitReached,
    StoreOfflineTotalLimitReached,
    parse_options,
)
from offterm.testing.config import terminal_config

LIMITS = {"max_total": {"usd": 5000}, "max_count": 5, "lane_share": 0.5}


def _lane(hub: Any, name: str, simulator: Any, tmp_path: Any, **limits: Any) -> dict[str, Any]:
    _, config = lane_config(hub, name, simulator, tmp_path / name)
    if limits:
        config["acceptance"][POLICY_NAME] = limits
    return config


async def _open(config: dict[str, Any], *, first_round: bool = True) -> Terminal:
    """An open lane, its reader connected; ``first_round``: one replication round done (the hub answered)."""
    pm = create_plugin_manager(autoload=False, env={})
    t = Terminal.from_config(config, plugin_manager=pm, background=False)
    await t.open()
    [reader] = (await t.discover_readers())[:1]
    await t.connect_reader(reader)  # online once: the account is cached
    if first_round and t.replication.enabled:
        await t.replication.catch_up()  # what the background loop does at once when it starts
    return t


async def _waiting(t: Terminal) -> list[int]:
    return sorted(p.amount for p in await t.list_stored_payments())


async def test_lane_as_stored_payments_count_against_lane_bs_next_offline_payment(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    a = await _open(_lane(hub, "lane_a", simulator, tmp_path, **LIMITS))
    b = await _open(_lane(hub, "lane_b", simulator, tmp_path, **LIMITS))
    try:
        for _ in range(3):
            await pay(a, 1500, forced=True)
        await a.replication.catch_up()  # A's 4,500 are on the hub

        await b.replication.catch_up()  # B's round asks the hub what the other lanes hold
        with pytest.raises(StoreOfflineTotalLimitReached) as refused:
            await pay(b, 1000, forced=True)  # alone B could (its share is 2,500): the store cannot
        assert refused.value.code == "store_offline_total_amount_limit_reached"
        assert refused.value.policy == POLICY_NAME
        details = refused.value.details
        assert (details["limit"], details["scope"], details["currency"]) == ("max_total", "store", "usd")
        assert (details["maximum"], details["stored"]) == (5000, 4500)
        assert "max_total.usd" in str(refused.value)
        assert await _waiting(b) == []  # refused: nothing stored

        await pay(b, 100, forced=True)  # 4,600 in the store, 4 payments
        await pay(b, 100, forced=True)  # 4,700, 5 payments: max_count reached, not exceeded
        with pytest.raises(StoreOfflinePaymentCountLimitReached) as refused_count:
            await pay(b, 100, forced=True)
        assert refused_count.value.code == "store_offline_payment_count_limit_reached"
        assert refused_count.value.details["limit"] == "max_count"
        assert (refused_count.value.details["maximum"], refused_count.value.details["stored"]) == (5, 5)
        assert await _waiting(b) == [100, 100]

        # and the other way round: B's payments, once on the hub, count against A
        await b.replication.catch_up()
        await a.replication.catch_up()
        with pytest.raises(StoreOfflinePaymentCountLimitReached):
            await pay(a, 100, forced=True)
    finally:
        await a.close()
        await b.close()


async def test_with_the_hub_stopped_or_its_answer_too_old_the_lane_share_applies(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    a = await _open(_lane(hub, "lane_a", simulator, tmp_path, **LIMITS))
    b = await _open(_lane(hub, "lane_b", simulator, tmp_path, **LIMITS, max_exposure_age=2))
    try:
        for _ in range(3):
            await pay(a, 1500, forced=True)
        await a.replication.catch_up()
        await b.replication.catch_up()
        with pytest.raises(StoreOfflineTotalLimitReached):  # the hub answered: the store's total applies
            await pay(b, 1000, forced=True)

        hub.cluster.stop("immediate")
        with pytest.raises(OfftermError) as failed:
            await b.replication.catch_up()
        assert failed.value.code == "hub_unavailable"
        await asyncio.sleep(2.2)  # the last answer is now older than max_exposure_age
        assert b.replication.fleet_exposure(2) is None

        stored = await pay(b, 1000, forced=True)  # B's share alone: 5,000 x 0.5 = 2,500, A's 4,500 unknown
        assert stored.requires_upload
        with pytest.raises(StoreOfflineTotalLimitReached) as refused:
            await pay(b, 2000, forced=True)  # 3,000 > 2,500
        details = refused.value.details
        assert (details["scope"], details["maximum"], details["stored"]) == ("lane_share", 2500, 1000)
        assert "lane_share = 0.5" in str(refused.value)
        await pay(b, 1000, forced=True)  # 2,000 of 2,500, 2 payments: floor(5 x 0.5) = 2 reached
        with pytest.raises(StoreOfflinePaymentCountLimitReached) as refused_count:
            await pay(b, 100, forced=True)
        assert refused_count.value.details["scope"] == "lane_share"
        assert refused_count.value.details["maximum"] == 2
    finally:
        await a.close()
        await b.close()
        hub.cluster.start()


async def test_a_lane_that_opens_while_the_hub_is_down_uses_its_share_from_the_start(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    config = _lane(hub, "lane_b", simulator, tmp_path, **LIMITS)
    hub.cluster.stop("immediate")
    try:
        b = await _open(config, first_round=False)
        try:
            assert b.replication.fleet_snapshot() == FleetExposure(None, None)  # never answered
            await pay(b, 2500, forced=True)  # exactly the share
            with pytest.raises(StoreOfflineTotalLimitReached) as refused:
                await pay(b, 1, forced=True)
            assert refused.value.details["scope"] == "lane_share"
        finally:
            await b.close()
    finally:
        hub.cluster.start()


async def test_with_no_store_wide_limit_configured_it_approves_everything(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    a = await _open(_lane(hub, "lane_a", simulator, tmp_path))  # [acceptance.hub_limits] not set at all
    b = await _open(_lane(hub, "lane_b", simulator, tmp_path))
    try:
        for _ in range(3):
            await pay(a, 40_000, forced=True)
        await a.replication.catch_up()
        await b.replication.catch_up()
        snapshot = b.replication.fleet_snapshot()
        assert snapshot is not None and snapshot.totals == StateTotals(3, {"usd": 120_000})  # the hub answered
        for _ in range(3):
            await pay(b, 40_000, forced=True)  # 240,000 in the store: no store-wide limit, no refusal
        hub.cluster.stop("immediate")
        await pay(b, 40_000, forced=True)  # nor without the hub
        assert await _waiting(b) == [40_000] * 4
    finally:
        await a.close()
        await b.close()
        hub.cluster.start()


async def test_a_lane_with_no_hub_is_never_bounded_by_store_wide_limits(simulator, tmp_path) -> None:
    config = terminal_config(simulator, tmp_path / "alone")
    config["acceptance"] = {"limits": {"max_amount": {"usd": 100_000}}, POLICY_NAME: dict(LIMITS)}
    t = await _open(config)
    try:
        assert t.replication.fleet_snapshot() is None
        for _ in range(3):
            await pay(t, 3000, forced=True)  # 9,000 > max_total and its share: no hub, no store to bound
        assert await _waiting(t) == [3000] * 3
    finally:
        await t.close()


# -- the policy alone: the fleet's age, other currencies, option validation ----------------------


def _request(amount: int, fleet: FleetExposure | None, *, currency: str = "usd", lane_total: int = 0):
    from datetime import UTC, datetime

    from offterm.core.contracts import AcceptanceRequest, StoreSummary

    return AcceptanceRequest(
        amount=amount,
        currency=currency,
        card=None,
        summary=StoreSummary(1 if lane_total else 0, {currency: lane_total} if lane_total else {}, None, 0),
        now=datetime.now(UTC),
        merchant_country="US",
        reader=None,
        reader_last_online_at=None,
        reader_last_online_location=None,
        location_id=None,
        fleet=fleet,
    )


def test_the_hubs_answer_counts_only_while_younger_than_max_exposure_age() -> None:
    policy = HubLimitsPolicy(parse_options({**LIMITS, "max_exposure_age": 10}))
    others = StateTotals(2, {"usd": 4000})
    assert isinstance(policy.evaluate(_request(2000, FleetExposure(others, 9.9))), StoreOfflineTotalLimitReached)
    # 10.1 s old: B falls back to its share (2,500), which 2,000 fits
    assert policy.evaluate(_request(2000, FleetExposure(others, 10.1))) is None
    refusal = policy.evaluate(_request(3000, FleetExposure(others, 10.1)))
    assert refusal is not None and refusal.details["scope"] == "lane_share"


def test_a_currency_without_a_store_wide_total_is_not_bounded_by_amount() -> None:
    policy = HubLimitsPolicy(parse_options({"max_total": {"usd": 5000}}))
    assert (
        policy.evaluate(_request(900_000, FleetExposure(StateTotals(1, {"eur": 900_000}), 0.0), currency="eur")) is None
    )


def test_a_lane_share_of_zero_takes_nothing_offline_without_the_hub() -> None:
    policy = HubLimitsPolicy(parse_options({"max_count": 100, "lane_share": 0}))
    refusal = policy.evaluate(_request(1, FleetExposure(None, None)))
    assert isinstance(refusal, StoreOfflinePaymentCountLimitReached) and refusal.details["maximum"] == 0
    assert policy.evaluate(_request(1, FleetExposure(StateTotals(), 0.0))) is None


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_total": {"xyz": 10}}, "acceptance.hub_limits.max_total.xyz"),
        ({"max_total": {"usd": 0}}, "acceptance.hub_limits.max_total.usd"),
        ({"max_count": -1}, "acceptance.hub_limits.max_count"),
        ({"lane_share": 1.5}, "acceptance.hub_limits.lane_share"),
        ({"max_exposure_age": 0}, "acceptance.hub_limits.max_exposure_age"),
        ({"max_exposure_ag": 5}, "acceptance.hub_limits.max_exposure_ag"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    from offterm.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_options(options)
    assert key in str(caught.value)
