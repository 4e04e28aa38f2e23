"""The bundled forwarding policy ("default"): ordering, full-jitter backoff, giving up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offterm.core.config import validate_options
from offterm.core.contracts import CardDetails, ForwardingPolicy, PaymentState, StoredPayment
from offterm.core.errors import ConfigError
from offterm.core.manager import create_plugin_manager
from offterm.core.models import CaptureMethod, ReadMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.policies import backoff

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def make_policy(**options: Any) -> ForwardingPolicy:
    """As the Terminal builds it: selected by the configured name "default"."""
    pm = create_plugin_manager(autoload=False, env={}, bundled=[("forwarding-policy", backoff.__name__)])
    reg = pm.forwarding_policy("default")
    validated = validate_options("forwarding_policy.default", reg.options, options, env={})
    return reg.factory(ComponentContext("default", validated, Path(".")))


def payment(offline_id: str, stored_at: datetime, attempts: int = 0) -> StoredPayment:
    return StoredPayment(
        offline_id=offline_id,
        idempotency_key="idem_" + offline_id,
        amount=1000,
        currency="usd",
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={},
        account_id="acct_1",
        livemode=False,
        stored_at=stored_at,
        state=PaymentState.STORED,
        attempts=attempts,
        card_details=CardDetails("visa", "4242", 12, 2030, ReadMethod.CONTACT_EMV),
    )


def ceiling(n: int, base: float = 1.0, cap: float = 300.0) -> float:
    return min(cap, base * 2 ** (n - 1))


# -- delays ---------------------------------------------------------------------------------------


def test_delays_stay_within_the_full_jitter_bounds() -> None:
    policy = make_policy(seed=1)
    for n in range(1, 40):
        delays = [policy.retry_delay(n) for _ in range(50)]
        assert all(0.0 <= d <= ceiling(n) for d in delays), n


def test_delays_are_jittered_across_the_whole_range() -> None:
    policy = make_policy(seed=2)
    delays = [policy.retry_delay(6) for _ in range(400)]  # ceiling 32 s
    assert min(delays) < 32 * 0.1
    assert max(delays) > 32 * 0.9
    assert len(set(delays)) > 390


def test_ceiling_doubles_then_caps() -> None:
    policy = make_policy(seed=3, base_delay=0.5, max_delay=10)
    highs = [max(policy.retry_delay(n) for _ in range(300)) for n in (1, 2, 3, 4, 5, 6, 7)]
    # each ceiling: 0.5, 1, 2, 4, 8, 10, 10
    for high, cap in zip(highs, (0.5, 1, 2, 4, 8, 10, 10), strict=True):
        assert cap * 0.9 < high <= cap


@given(attempts=st.integers(0, 10**6), base=st.floats(0, 100), extra=st.floats(0, 10_000))
def test_any_attempt_count_is_bounded(attempts: int, base: float, extra: float) -> None:
    cap = base + extra
    policy = backoff.BackoffPolicy(backoff.BackoffSettings(base_delay=base, max_delay=cap, seed=0))
    delay = policy.retry_delay(attempts)
    assert 0.0 <= delay <= min(cap, base * 2.0 ** max(min(attempts, 1000) - 1, 0))


def test_seed_makes_delays_reproducible() -> None:
    a, b, c = make_policy(seed=42), make_policy(seed=42), make_policy(seed=43)
    seq_a = [a.retry_delay(n) for n in range(1, 20)]
    assert seq_a == [b.retry_delay(n) for n in range(1, 20)]
    assert seq_a != [c.retry_delay(n) for n in range(1, 20)]


def test_an_rng_can_be_injected() -> None:
    policy = backoff.BackoffPolicy(rng=random.Random(5))
    same = random.Random(5)
    assert policy.retry_delay(3) == same.uniform(0, 4.0)


def test_zero_base_delay_retries_at_once() -> None:
    policy = make_policy(base_delay=0, max_delay=0)
    assert {policy.retry_delay(n) for n in range(1, 10)} == {0.0}


# -- giving up -----------------------------------------------------------------------------------------


def test_give_up_at_max_attempts() -> None:
    policy = make_policy()
    assert policy.give_up_reason(payment("a", NOW, attempts=19), NOW) is None
    reason = policy.give_up_reason(payment("a", NOW, attempts=20), NOW)
    assert reason is not None and "max_attempts = 20" in reason and "20 attempts" in reason


def test_give_up_after_max_age() -> None:
    policy = make_policy()
    assert policy.give_up_reason(payment("a", NOW - timedelta(hours=168)), NOW) is None
    reason = policy.give_up_reason(payment("a", NOW - timedelta(hours=168, seconds=1)), NOW)
    assert reason is not None and "max_age_hours = 168" in reason


def test_limits_are_configurable_and_zero_means_none() -> None:
    strict = make_policy(max_attempts=3, max_age_hours=1)
    assert strict.give_up_reason(payment("a", NOW, attempts=3), NOW) is not None
    assert strict.give_up_reason(payment("a", NOW - timedelta(hours=2)), NOW) is not None
    lenient = make_policy(max_attempts=0, max_age_hours=0)
    assert lenient.give_up_reason(payment("a", NOW - timedelta(days=3650), attempts=10**6), NOW) is None


def test_naive_and_aware_times_compare() -> None:
    policy = make_policy()
    naive_old = (NOW - timedelta(hours=200)).replace(tzinfo=None)
    assert policy.give_up_reason(payment("a", naive_old), NOW) is not None


# -- ordering --------------------------------------------------------------------------------------------


def test_oldest_first_whatever_the_input_order() -> None:
    policy = make_policy()
    ps = [payment(f"p{i}", NOW - timedelta(minutes=i)) for i in range(10)]
    expected = [f"p{i}" for i in range(9, -1, -1)]
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(ps)
        assert [p.offline_id for p in policy.order(list(ps))] == expected


def test_ties_are_broken_by_offline_id() -> None:
    policy = make_policy()
    ps = [payment(i, NOW) for i in ("c", "a", "b")]
    assert [p.offline_id for p in policy.order(ps)] == ["a", "b", "c"]


# -- registration and configuration --------------------------------------------------------------------------


def test_registration_documents_defaults() -> None:
    (reg,) = list(backoff.offterm_forwarding_policies())
    assert reg.name == "default"
    defaults = {o.key: o.default for o in reg.options}
    assert defaults == {"base_delay": 1.0, "max_delay": 300.0, "max_attempts": 20, "max_age_hours": 168.0, "seed": None}
    assert all(o.help for o in reg.options)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"base_delay": -1}, "forwarding_policy.default.base_delay"),
        ({"max_delay": "5"}, "forwarding_policy.default.max_delay"),
        ({"base_delay": 10, "max_delay": 5}, "forwarding_policy.default.max_delay"),
        ({"max_attempts": 2.5}, "forwarding_policy.default.max_attempts"),
        ({"max_attempts": True}, "forwarding_policy.default.max_attempts"),
        ({"max_age_hours": -3}, "forwarding_policy.default.max_age_hours"),
        ({"seed": "x"}, "forwarding_policy.default.seed"),
        ({"jitter": "none"}, "forwarding_policy.default.jitter"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_policy(**options)
    assert info.value.key == key
