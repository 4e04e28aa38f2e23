"""Cutting credentials and card numbers out of text that came from the processor.

Stripe's messages may quote what was sent (a key, a token, a number).
Every message the transport keeps (on an exception, in a snapshot's
``last_payment_error``) goes through :func:`scrub` first.
"""

from __future__ import annotations

import re

# Anything that looks like a credential or a card number is cut from messages.
_SECRETS = re.compile(r"\b(?:sk|rk|pk|pst|dss)_[A-Za-z0-9_\-*]+|\b\d{12,19}\b")


def scrub(text: str) -> str:
    """``text`` without anything looking like a key, token or card number, at most 500 characters."""
    return _SECRETS.sub("[redacted]", text)[:500]
