"""Default endpoint and API version, kept apart so the hook module can show them without httpx."""

from __future__ import annotations

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_STRIPE_VERSION = "2023-08-16"

#: Seconds before Stripe's search is trusted to show a new intent.  Stripe's API reference: "Under
#: normal operating conditions, data is searchable in less than a minute.  Occasionally, propagation
#: of new or updated data can be up to an hour behind during outages."  A "not found" trusted too
#: early would create the payment a second time, so the default is the documented worst case.
DEFAULT_SEARCH_DELAY = 3600.0
