"""docs/policies.md documents every option and every refusal code of the bundled policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from offterm.core import errors
from offterm.plugins.policies import backoff, limits

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


@pytest.mark.parametrize(
    "registration",
    [*limits.offterm_offline_acceptance_policies(), *backoff.offterm_forwarding_policies()],
    ids=lambda r: r.name,
)
def test_every_option_is_documented(registration: object) -> None:
    text = DOC.read_text()
    for option in registration.options:  # type: ignore[attr-defined]
        assert f"| `{option.key}` |" in text, option.key


@pytest.mark.parametrize(
    "error",
    [
        limits.InvalidOfflineCurrency,
        limits.AmountExceedsOfflineMaximum,
        limits.OfflineTotalLimitReached,
        limits.OfflinePaymentCountLimitReached,
        limits.OfflineBacklogTooOld,
        limits.ReaderNotAvailableOffline,
        limits.ReaderOfflineLocationMismatch,
        limits.CardSwipeNotAvailableOffline,
        limits.InteracNotSupportedOffline,
        limits.CardBrandNotAllowedOffline,
        limits.OfflineAndCardExpired,
        limits.OfflinePinRequired,
    ],
    ids=lambda e: e.__name__,
)
def test_every_refusal_code_is_documented(error: type[errors.OfflineRefused]) -> None:
    text = DOC.read_text()
    assert f"`{error.__name__}` | `{error.code}`" in text
