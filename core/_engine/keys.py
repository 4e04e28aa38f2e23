"""One idempotency-key scheme for every request of a payment, online or forwarded.

A payment's key is made once, when its intent is created, and stored with
it.  Each step derives its own key from it, so any step can be resent
(after a timeout, a crash, a restart, from another process) without a
second effect.  The online path and the forwarder use the same steps with
the same parameters, so a payment that fell back offline is finished under
the keys its online attempt already used.

A stored payment's key generation is the period of its life since it was
stored (``offterm.core._engine.exchange``): every actor forwarding it computes
the same one, so they send the same keys, and a new generation's keys are
used only after a lookup at the processor showed they are safe.
"""

from __future__ import annotations

import enum


class Step(enum.StrEnum):
    """The requests a payment may make; each has its own key."""

    #: create an unconfirmed intent (online, when the app creates it)
    CREATE = "create"
    #: turn the reader's card data into a payment method (no money moves)
    PAYMENT_METHOD = "payment_method"
    #: create and confirm in one request (a stored payment with no intent yet)
    CREATE_AND_CONFIRM = "create_and_confirm"
    #: confirm an intent whose id is known
    CONFIRM = "confirm"
    #: cancel an intent the POS never reported as paid (journal recovery)
    CANCEL = "cancel"


#: Steps whose request may move money or make an intent: recorded durably before they are sent.
STATEFUL_STEPS: frozenset[Step] = frozenset({Step.CREATE, Step.CREATE_AND_CONFIRM, Step.CONFIRM, Step.CANCEL})
#: Steps that may have confirmed the payment's intent.
CONFIRMING_STEPS: frozenset[Step] = frozenset({Step.CREATE_AND_CONFIRM, Step.CONFIRM})
#: Steps that may have made an intent whose id the payment does not know yet.
CREATING_STEPS: frozenset[Step] = frozenset({Step.CREATE, Step.CREATE_AND_CONFIRM})


def step_key(payment_key: str, step: Step | str, generation: int = 0) -> str:
    """The idempotency key of ``step`` of the payment whose key is ``payment_key``."""
    step = Step(step)
    if generation <= 0:
        return f"{payment_key}-{step.value}"
    return f"{payment_key}-g{generation}-{step.value}"
