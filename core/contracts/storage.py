"""Secure storage: where offline payments live until the processor has them.

Backends are synchronous (SQLCipher has no async driver); the core calls
them from one worker thread, so a backend sees one call at a time per
Terminal but must still be safe with other processes on the same files.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ..models import CaptureMethod
from .readers import CardDetails, CardResult


class PaymentState(enum.StrEnum):
    """Lifecycle of a stored payment.

    stored -> forwarding -> forwarded | declined | needs_attention, and
    outcome_unknown when a request was sent but no answer came back (it is
    retried with the same idempotency key).
    """

    STORED = "stored"
    FORWARDING = "forwarding"
    OUTCOME_UNKNOWN = "outcome_unknown"
    FORWARDED = "forwarded"
    DECLINED = "declined"
    NEEDS_ATTENTION = "needs_attention"


#: States that still count as "offline payments" waiting for the processor.
PENDING_STATES: frozenset[PaymentState] = frozenset(
    {PaymentState.STORED, PaymentState.FORWARDING, PaymentState.OUTCOME_UNKNOWN}
)
#: States a forwarder may claim.
CLAIMABLE_STATES: frozenset[PaymentState] = frozenset({PaymentState.STORED, PaymentState.OUTCOME_UNKNOWN})
FINAL_STATES: frozenset[PaymentState] = frozenset({PaymentState.FORWARDED, PaymentState.DECLINED})

#: The only transitions a backend may perform.  needs_attention -> stored is
#: an operator's explicit requeue.
ALLOWED_TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    PaymentState.STORED: frozenset({PaymentState.FORWARDING, PaymentState.NEEDS_ATTENTION}),
    PaymentState.OUTCOME_UNKNOWN: frozenset({PaymentState.FORWARDING, PaymentState.NEEDS_ATTENTION}),
    PaymentState.FORWARDING: frozenset(
        {
            PaymentState.FORWARDED,
            PaymentState.DECLINED,
            PaymentState.NEEDS_ATTENTION,
            PaymentState.STORED,
            PaymentState.OUTCOME_UNKNOWN,
        }
    ),
    PaymentState.NEEDS_ATTENTION: frozenset({PaymentState.STORED}),
    PaymentState.FORWARDED: frozenset(),
    PaymentState.DECLINED: frozenset(),
}


@dataclass(frozen=True)
class NewPayment:
    """Everything needed to store one payment.  Built by the Terminal."""

    offline_id: str
    idempotency_key: str
    amount: int
    currency: str
    capture_method: CaptureMethod
    metadata: dict[str, str]
    account_id: str
    livemode: bool
    stored_at: datetime
    card: CardResult
    intent_id: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    from_state: PaymentState | None
    to_state: PaymentState
    attempt: int
    error_code: str | None = None


@dataclass(frozen=True)
class StoredPayment:
    """A payment as the store holds it.

    ``card`` is None once card data was purged after forwarding, or when the
    record could not be decoded (then state is needs_attention with the reason).
    """

    offline_id: str
    idempotency_key: str = field(repr=False)
    amount: int
    currency: str
    capture_method: CaptureMethod
    metadata: dict[str, str]
    account_id: str
    livemode: bool
    stored_at: datetime
    state: PaymentState
    attempts: int
    card_details: CardDetails | None
    card: CardResult | None = field(default=None, repr=False)
    intent_id: str | None = None
    description: str | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    decline_code: str | None = None
    next_attempt_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class _ClaimStep:
    offline_id: str
    owner: str
    now: datetime


@dataclass(frozen=True)
class AttemptUpdate(_ClaimStep):
    """``record_attempt(offline_id, owner, now)`` as a value, for :meth:`PaymentStore.apply_claim_updates`."""

    def apply_to(self, store: PaymentStore) -> StoredPayment:
        return store.record_attempt(self.offline_id, self.owner, self.now)


@dataclass(frozen=True)
class OutcomeUpdate:
    """``complete(offline_id, owner, to_state, now, ...)`` as a value, for :meth:`PaymentStore.apply_claim_updates`."""

    offline_id: str
    owner: str
    to_state: PaymentState
    now: datetime
    intent_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    decline_code: str | None = None
    next_attempt_at: datetime | None = None

    def apply_to(self, store: PaymentStore) -> StoredPayment:
        return store.complete(
            self.offline_id,
            self.owner,
            self.to_state,
            self.now,
            intent_id=self.intent_id,
            error_code=self.error_code,
            error_message=self.error_message,
            decline_code=self.decline_code,
            next_attempt_at=self.next_attempt_at,
        )


@dataclass(frozen=True)
class AttemptWithdrawal(_ClaimStep):
    """``withdraw_attempt(offline_id, owner, now)`` as a value, for :meth:`PaymentStore.apply_claim_updates`."""

    def apply_to(self, store: PaymentStore) -> StoredPayment:
        return store.withdraw_attempt(self.offline_id, self.owner, self.now)


#: One write a forwarder makes to a payment it holds the claim on.
ClaimUpdate = AttemptUpdate | AttemptWithdrawal | OutcomeUpdate


@dataclass(frozen=True)
class StoreSummary:
    """Computed by the store without loading payment rows."""

    pending_count: int
    amounts_by_currency: dict[str, int]
    oldest_stored_at: datetime | None
    needs_attention_count: int


class PaymentStore(abc.ABC):
    """A durable, encrypted home for offline payments."""

    @abc.abstractmethod
    def open(self, keys: StorageKeyProvider) -> None:
        """Open (creating if absent), verify the key by reading, migrate.

        The key comes from ``keys``: ask with ``create=True`` only when no
        database exists yet.  Raises WrongStorageKey, StorageKeyUnavailable,
        StorageDamaged, EncryptionUnavailable.  Never deletes, truncates or
        recreates an existing file.
        """

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def store(self, payment: NewPayment, check: Callable[[StoreSummary], None] | None = None) -> StoredPayment:
        """Persist a new payment in state ``stored``.

        Returns only after a durable commit.  Raises OfflineStorageFull when
        the disk is full (nothing stored).  Storing the same offline_id twice
        returns the existing record unchanged.

        :param check: called with the store's summary as it is inside the
            storing transaction, before the insert; whatever it raises aborts
            the store (nothing written) and propagates.  The Terminal's offline
            limits run here, so they hold even with several processes on one
            store.  Not called when the payment is already stored.
        """

    @abc.abstractmethod
    def get(self, offline_id: str) -> StoredPayment:
        """Raises PaymentNotFound."""

    @abc.abstractmethod
    def list_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        """Payments oldest first, optionally filtered by state."""

    @abc.abstractmethod
    def summary(self) -> StoreSummary: ...

    @abc.abstractmethod
    def claim(self, owner: str, limit: int, lease_seconds: float, now: datetime) -> list[StoredPayment]:
        """Atomically move up to ``limit`` claimable payments (oldest first,
        ``next_attempt_at`` due) to ``forwarding`` under a lease held by ``owner``.

        A payment is held by at most one owner at a time, across processes.
        """

    @abc.abstractmethod
    def record_attempt(self, offline_id: str, owner: str, now: datetime) -> StoredPayment:
        """Note that a request is about to be sent (attempts + 1).

        Called before every send, so a crash afterwards is recovered as
        ``outcome_unknown``.  Raises InvalidTransition if ``owner`` no longer
        holds the claim.
        """

    @abc.abstractmethod
    def withdraw_attempt(self, offline_id: str, owner: str, now: datetime) -> StoredPayment:
        """Take back the claim's only attempt: it was recorded ahead, and its request never went out.

        The forwarder records a payment's attempt while the previous
        payment's requests run, so it is durable by the time it is needed.
        When the round stops first, this undoes it (attempts - 1, the claim
        marked unsent again), so release gives the payment back as it was
        and no attempt is counted that was never made.  Raises
        InvalidTransition if ``owner`` does not hold the claim or the claim
        has no attempt to take back.
        """

    @abc.abstractmethod
    def complete(
        self,
        offline_id: str,
        owner: str,
        to_state: PaymentState,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        decline_code: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> StoredPayment:
        """Leave ``forwarding`` for ``to_state`` and release the claim.

        Appends to the history.  Raises InvalidTransition for a transition
        not in ALLOWED_TRANSITIONS or a claim ``owner`` does not hold.
        """

    def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]:
        """Apply several record_attempt / withdraw_attempt / complete calls; one result per update, in order.

        Each update behaves exactly as its single call: its result is the
        StoredPayment that call returns, or the exception it raises (an
        InvalidTransition for a lost claim fails that update only, and
        changes nothing).  Every update in the list is durable when this
        returns.  If the method raises, no update was applied.

        The forwarder calls this with the updates its workers make at the
        same time (group commit).  This default makes one single call, one
        transaction, per update; a backend that can apply them in one
        transaction should override it.
        """
        results: list[StoredPayment | Exception] = []
        for update in updates:
            try:
                results.append(update.apply_to(self))
            except Exception as exc:  # noqa: BLE001 - it is that update's result, raised to its caller
                results.append(exc)
        return results

    def drain_channel(self) -> DrainChannel | None:
        """Awaitable claim and apply_claim_updates that need no thread of this process, if ready now.

        Every store call of the Terminal runs on the store's one thread.  A
        store whose drain bookkeeping runs elsewhere (the SQLCipher store's
        writer process) can offer this channel instead, so a long drain's
        calls go there straight from the event loop, with no thread hand-over.
        Asked before each such call, from the event loop: it must return at
        once and never block.

        :return: the channel, or ``None`` (the default) for "not now": the
            call then runs on the store's thread as usual.
        """
        return None

    @abc.abstractmethod
    def release(self, owner: str, now: datetime) -> int:
        """Give back every claim ``owner`` holds (clean shutdown)."""

    @abc.abstractmethod
    def recover_expired_claims(self, now: datetime) -> int:
        """Return claims whose lease expired (a crashed forwarder) to the queue:
        ``outcome_unknown`` if a request had been sent, else ``stored``."""

    @abc.abstractmethod
    def history(self, offline_id: str) -> list[HistoryEntry]: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Small encrypted key/value area (last seen account, reader cache)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...


class DrainChannel(Protocol):
    """``PaymentStore.claim`` and ``apply_claim_updates``, awaitable (see ``PaymentStore.drain_channel``).

    Same arguments, results, errors and durability as the store's methods.
    A call whose answer was lost (the other side died) raises StorageError
    and may or may not have been applied, as for any unanswered write.
    """

    async def claim(self, owner: str, limit: int, lease_seconds: float, now: datetime) -> list[StoredPayment]: ...

    async def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]: ...


class StorageKeyProvider(abc.ABC):
    """Supplies the raw 256-bit key of a store."""

    @abc.abstractmethod
    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        """Return the 32-byte key for ``store_id``.

        ``None`` means "I have no key for this store" (and ``create`` was
        False, or this provider cannot create keys).  Raises
        StorageKeyUnavailable when the key exists but cannot be read.
        """
