"""Default endpoint and API version, kept apart so the hook module can show them without httpx."""

from __future__ import annotations

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_STRIPE_VERSION = "2023-08-16"
