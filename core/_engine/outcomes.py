"""What a PaymentIntent's status means for a payment: the one table the core judges by.

A confirm that returned 2xx is not a payment: the processor may answer
with an intent that still waits (``processing``), needs the cardholder
(``requires_action``), or was declined (``requires_payment_method`` with a
``last_payment_error``).  Only ``succeeded`` and ``requires_capture`` are
paid.  A status the table does not know is never taken for paid.

=========================================  ==================  =========================================
intent status                              verdict             what the core does
=========================================  ==================  =========================================
``succeeded``, ``requires_capture``        PAID                forwarded; never sent again
``requires_payment_method`` + error        DECLINED            declined, with the error's codes
``requires_payment_method`` (no error),    UNPAID              confirm that intent (never a new one)
``requires_confirmation``
``processing``                             PROCESSING          retrieve until final (bounded), then
                                                               outcome_unknown, retrieved first next time
``requires_action``                        NEEDS_ATTENTION     an offline card cannot complete it
``canceled``                               NEEDS_ATTENTION     canceled at the processor; never paid
anything else                              NEEDS_ATTENTION     unknown to offterm: kept for a person
=========================================  ==================  =========================================
"""

from __future__ import annotations

import enum

from ..contracts.forwarding import IntentSnapshot


class Verdict(enum.StrEnum):
    PAID = "paid"
    DECLINED = "declined"
    UNPAID = "unpaid"
    PROCESSING = "processing"
    NEEDS_ATTENTION = "needs_attention"


PAID_STATUSES = frozenset({"succeeded", "requires_capture"})


def judge(intent: IntentSnapshot) -> Verdict:
    """The verdict of the table above for ``intent``."""
    status = intent.status
    if status in PAID_STATUSES:
        return Verdict.PAID
    if status == "requires_payment_method":
        return Verdict.DECLINED if intent.last_payment_error is not None else Verdict.UNPAID
    if status == "requires_confirmation":
        return Verdict.UNPAID
    if status == "processing":
        return Verdict.PROCESSING
    return Verdict.NEEDS_ATTENTION


def attention_code(intent: IntentSnapshot) -> str:
    """The error code a NEEDS_ATTENTION verdict is recorded with."""
    if intent.status == "requires_action":
        return "intent_requires_action"
    if intent.status == "canceled":
        return "intent_canceled"
    return "unexpected_intent_status"
