"""``offterm serve``: Stripe's server-driven Terminal API on localhost, with offline mode.

One Terminal (the same TOML configuration as the Python API, plus ``[serve]``) behind the subset of
Stripe's API a server-driven POS uses: PaymentIntents, readers, ``process_payment_intent``; events as
signed webhooks and as a Server-Sent Events stream; offterm's offline status and stored queue on
``/v1/offterm/...``.  See docs/serve.md.

Modules, one job each: ``config`` ([serve] options), ``keys`` (the API key file), ``forms`` (Stripe's
form bodies), ``params`` (parameter checks), ``errors`` (Stripe's error shapes), ``db`` (the service's
SQLite file), ``idempotency`` (Idempotency-Key), ``objects`` (records and their Stripe shapes),
``service`` (the Terminal and reader actions), ``outbox`` (durable events), ``webhooks`` (signed
delivery), ``sse`` (the event stream), ``ratelimit``, ``app`` (routes), ``runner`` (uvicorn), and
``testing`` (start a service in tests).
"""

from __future__ import annotations

from .config import OFFLINE_BEHAVIOR_KEY, SERVE_OPTIONS, ServeSettings, serve_settings

OFFLINE_BEHAVIOR_HEADER = "Offterm-Offline-Behavior"

__all__ = ["OFFLINE_BEHAVIOR_HEADER", "OFFLINE_BEHAVIOR_KEY", "SERVE_OPTIONS", "ServeSettings", "serve_settings"]
