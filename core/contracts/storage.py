"""Secure storage: where offline payments live until the processor has them.

The contract has two halves: ``PaymentLedger`` (what a store is: durable payments, their history,
the summary, the in-flight journal, a small key/value area) and ``ClaimQueue`` (what forwarding
needs from it: claims under leases, and the bookkeeping of each attempt).  A backend implements
both, as ``PaymentStore``.

Backends are synchronous (SQLCipher has no async driver); the core calls
them from one worker thread, so a backend sees one call at a time per
Terminal but must still be safe with other processes on the same files.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

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
    #: Requests an online attempt already sent under this payment's idempotency key before it fell
    #: back offline: step name -> (first sent, last sent).  Stored with the payment, so the forwarder
    #: knows the processor may hold an intent for it.
    steps_sent: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)


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
    #: The key generation its requests are sent under: 0 for the key the payment was stored with, then
    #: the period (idempotency window + search delay) since it was stored in which a lookup at the
    #: processor started it over (``PaymentStore.start_key_generation``).
    key_generation: int = 0
    #: Step name (e.g. "payment_method", "create_and_confirm", "confirm", "create") -> (first sent,
    #: last sent), within the current key generation.  The processor forgets idempotency keys (Stripe
    #: after 24 h), so the forwarder must know when each request first went out.
    steps_sent: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    @property
    def first_request_at(self) -> datetime | None:
        """When the first request of the current key generation was sent; None if none was."""
        return min((first for first, _ in self.steps_sent.values()), default=None)


@dataclass(frozen=True)
class OnlineAttempt:
    """One online confirm in flight, journaled so a crash mid-request can be resolved at the next start.

    Holds no card data: only what is needed to find the payment at the processor (its idempotency
    key, intent id) and to tell the app what recovery found.  ``resolution`` is None while the
    outcome is unknown; else what a lookup found, e.g. "charged", "not_charged", "declined".
    """

    offline_id: str
    idempotency_key: str = field(repr=False)
    amount: int
    currency: str
    owner: str
    started_at: datetime
    intent_id: str | None = None
    steps_sent: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    resolution: str | None = None
    resolved_at: datetime | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class StoreSummary:
    """Computed by the store without loading payment rows."""

    pending_count: int
    amounts_by_currency: dict[str, int]
    oldest_stored_at: datetime | None
    needs_attention_count: int


class PaymentLedger(abc.ABC):
    """What a store *is*: the durable, encrypted record of offline payments.

    Guarantees every backend gives (the conformance kit, ``offterm.testing.StoreConformance``,
    checks each of them):

    * **Durability.**  A write (``store``, ``requeue``, ``set_meta``, the journal calls) is
      committed before it returns: a store closed and opened again, or killed and opened again,
      reads back everything a call reported done.  Nothing is ever lost to get past an error: a
      backend never deletes, truncates or recreates its data because it cannot read it.
    * **Identity.**  ``offline_id``, ``idempotency_key``, amount, currency, account and
      ``stored_at`` never change once stored; two payments never share an idempotency key.
    * **History.**  Every state change appends a ``HistoryEntry``; entries are never changed or
      removed while the payment exists.  The first entry is ``stored``.
    * **Summary.**  ``summary()`` counts the payments in ``PENDING_STATES`` (stored, forwarding,
      outcome_unknown), totals their amounts per currency, gives the oldest pending
      ``stored_at`` and counts ``needs_attention`` - always equal to a recount of the payments.

    All datetimes given and returned are timezone-aware (UTC); a naive one is ``InvalidRequest``.
    """

    @abc.abstractmethod
    def open(self, keys: StorageKeyProvider, *, create: bool = True) -> None:
        """Open (creating if absent and ``create``), verify the key by reading, migrate.

        The key comes from ``keys``: ask with ``create=True`` only when no database exists yet.
        Never deletes, truncates or recreates an existing file.  Opening an open store does nothing.

        :param keys: where the store's key comes from.
        :param create: False for inspection tools: a missing store raises ``StoreNotFound`` and
            nothing is written (no directory, no database, no key asked with ``create=True``, no
            space reserve); an existing store opens as usual but holds no new space reserve.
        :raises WrongStorageKey: the key does not decrypt the existing data.
        :raises StorageKeyUnavailable: there is data but no readable key for it.
        :raises StorageDamaged: the data is damaged (left untouched).
        :raises EncryptionUnavailable: the backend cannot encrypt (no plaintext fallback).
        :raises ConfigError: the backend's options forbid opening it (e.g. the ``memory`` store
            without its explicit opt-in).
        :raises StoreNotFound: ``create`` is False and there is no store (naming where it looked).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's resources; every call before it returned is durable.  Idempotent."""

    @abc.abstractmethod
    def store(self, payment: NewPayment, check: Callable[[StoreSummary], None] | None = None) -> StoredPayment:
        """Persist a new payment in state ``stored``.

        Returns only after a durable commit.  Storing the same offline_id twice returns the existing
        record unchanged.  ``payment.steps_sent`` (requests an online attempt already sent under its
        key) is stored with it, at key generation 0.

        :param payment: the payment, with its card data as the reader sealed it.
        :param check: called with the store's summary as it is inside the storing transaction,
            before the insert; whatever it raises aborts the store (nothing written) and propagates.
            The Terminal's offline limits run here, so they hold even with several processes on one
            store.  Not called when the payment is already stored.
        :return: the payment as stored: state ``stored``, attempts 0.
        :raises InvalidRequest: a malformed payment, or an idempotency key another payment has
            (nothing written).
        :raises OfflineStorageFull: the disk is full (nothing stored).
        """

    @abc.abstractmethod
    def get(self, offline_id: str) -> StoredPayment:
        """One payment.

        :return: the payment as stored now.
        :raises PaymentNotFound: no such payment (never stored, or removed by retention).
        """

    @abc.abstractmethod
    def list_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        """Payments oldest (``stored_at``) first, ties in storing order.

        :param states: only payments in these states; None for all, empty for none.
        :param limit: at most this many (a non-negative integer); None for all.
        :raises InvalidRequest: a bad limit.
        """

    @abc.abstractmethod
    def summary(self) -> StoreSummary:
        """Counts and totals without loading payment rows (see the class docstring).

        :return: pending count, pending amounts by currency (only currencies with a pending
            payment), the oldest pending ``stored_at`` (None when nothing is pending), and the
            ``needs_attention`` count.
        """

    @abc.abstractmethod
    def history(self, offline_id: str) -> list[HistoryEntry]:
        """Every state the payment went through, oldest first; the first entry is ``stored``.

        :return: entries with time, from and to state, the attempt count at that moment and the
            transition's code (an error code, or a bookkeeping code such as ``claim_expired`` or
            ``requeued``).
        :raises PaymentNotFound: no such payment.
        """

    @abc.abstractmethod
    def requeue(self, offline_id: str, now: datetime, *, reason: str | None = None) -> StoredPayment:
        """An operator's action: put a ``needs_attention`` payment back in the queue.

        In one durable commit: state ``stored``, ``next_attempt_at`` cleared (claimable at once),
        ``last_error_code`` ``"requeued"`` with ``reason`` as ``last_error_message``, and a history
        entry ``needs_attention -> stored`` with code ``"requeued"`` (the error that put the payment
        in ``needs_attention`` stays in its own history entry).  The idempotency key, key
        generation, steps sent and intent id are kept, so forwarding again cannot charge twice.

        :param offline_id: the payment.
        :param now: when (timezone-aware).
        :param reason: why, in the operator's words (at most 255 characters); optional.
        :return: the payment as stored after the update.
        :raises InvalidTransition: the payment is not in ``needs_attention`` (nothing changed).
        :raises PaymentNotFound: no such payment.
        :raises InvalidRequest: a naive ``now`` or a reason that is not a short string.
        """

    def record_outcome(
        self,
        offline_id: str,
        to_state: PaymentState,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> StoredPayment | None:
        """Record an outcome decided elsewhere: the store hub's forwarder forwarded this payment for us.

        In one durable commit, a payment still waiting (``stored``, ``outcome_unknown``, or
        ``forwarding`` under any claim, which is dropped: a forwarder of ours that still holds it
        finds its claim gone) moves to ``to_state`` (``forwarded``, ``declined`` or
        ``needs_attention``) with ``intent_id``, ``error_code`` as its last error (and decline code
        when declined) and a history entry with code ``decided_by_hub``; ``forwarded`` and
        ``declined`` purge the card data as ``complete`` does.

        :return: the payment after the update, or None when nothing changed (it was no longer
            waiting: already forwarded, declined or needing attention here).
        :raises PaymentNotFound: no such payment.
        :raises InvalidTransition: ``to_state`` is not one of the three.
        :raises InvalidRequest: this backend cannot record outcomes decided elsewhere (the default).
        """
        from ..errors import InvalidRequest

        raise InvalidRequest(f"{type(self).__name__} cannot record an outcome decided elsewhere")

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Read the small encrypted key/value area (last seen account, reader cache).

        :return: the value last set for ``key``, or None.
        """

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` to ``value`` (replacing it); durable when it returns.

        :raises InvalidRequest: key or value not a string, or an empty key.
        """

    # -- the in-flight journal of online confirms ------------------------------------

    @abc.abstractmethod
    def begin_online(self, attempt: OnlineAttempt) -> None:
        """Journal an online confirm before its first request goes out; durable when it returns.

        Inserts the entry, or replaces the unresolved entry with the same ``offline_id`` (the
        Terminal calls again with the updated view, e.g. once the intent id is known).  No card data
        is stored.

        :param attempt: unresolved (``resolution`` None).
        :raises InvalidTransition: the entry for that ``offline_id`` is already resolved (it is kept).
        :raises InvalidRequest: a malformed attempt (nothing written).
        :raises OfflineStorageFull: the disk is full (nothing written).
        """

    @abc.abstractmethod
    def end_online(self, offline_id: str) -> None:
        """Delete the journal entry: the confirm was answered in-process, or the payment was stored offline.

        Durable when it returns; no error if there is no entry.
        """

    @abc.abstractmethod
    def resolve_online(
        self,
        offline_id: str,
        resolution: str,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> OnlineAttempt:
        """Mark an entry resolved (what a lookup after a crash found); it is kept so the app can list it.

        Resolving again overwrites the resolution.  Resolved entries are removed with the summaries
        of finished payments (the store's retention).

        :param resolution: e.g. "charged", "not_charged", "declined" (non-empty).
        :param intent_id: if given, becomes the entry's intent id; None keeps the stored one.
        :return: the entry as stored after the update.
        :raises PaymentNotFound: no entry for ``offline_id``.
        """

    @abc.abstractmethod
    def online_attempts(self, *, resolved: bool | None = None) -> list[OnlineAttempt]:
        """Journal entries, oldest (``started_at``) first.

        :param resolved: None for all, False for unresolved only, True for resolved only.
        """


class ClaimQueue(abc.ABC):
    """What forwarding needs from a store: a queue of claimable payments, taken under leases.

    Guarantees:

    * **One claim at a time.**  ``claim`` moves payments to ``forwarding`` atomically; a payment is
      held by at most one owner, across threads, store instances and processes on the same data
      (a backend whose data cannot be shared says so: the ``memory`` store).
    * **Leases.**  A claim expires ``lease_seconds`` after it was taken or last renewed
      (``record_attempt``).  An expired claim can no longer send (``record_attempt`` refuses it)
      and ``recover_expired_claims`` gives it back; so does ``owner_gone`` for a dead owner.
    * **Transitions.**  Only ``ALLOWED_TRANSITIONS``; anything else is ``InvalidTransition`` and
      changes nothing.  A payment given back goes to ``outcome_unknown`` if a request was sent
      under the claim (``record_attempt``), else to the state it was claimed from.
    * **Memory for exactly-once.**  Attempts, the steps each request sent, the processor's
      intent id and the key generation are durable in the call's own commit.

    Every method that changes a claimed payment needs ``owner`` to hold its claim.
    """

    @abc.abstractmethod
    def claim(
        self, owner: str, limit: int, lease_seconds: float, now: datetime, *, ignore_backoff: bool = False
    ) -> list[StoredPayment]:
        """Atomically move up to ``limit`` claimable payments (oldest first) to ``forwarding`` under a lease.

        A payment is held by at most one owner at a time, across processes.

        :param owner: who holds the claims (non-empty; see ``recover_expired_claims``).
        :param limit: at most this many payments (a positive integer).
        :param lease_seconds: the claims expire this long after ``now`` unless renewed by
            ``record_attempt``.
        :param now: timezone-aware.
        :param ignore_backoff: claim payments whose ``next_attempt_at`` is still in the future too
            (the network just came back: payments that failed for lack of network go at once).
            Without it only payments with no ``next_attempt_at`` or one at or before ``now`` are taken.
        :return: the claimed payments, in state ``forwarding``, oldest first; empty when none is due.
        :raises InvalidRequest: a bad argument (nothing claimed).
        """

    @abc.abstractmethod
    def record_attempt(self, offline_id: str, owner: str, now: datetime, steps: Collection[str] = ()) -> StoredPayment:
        """Note that a request is about to be sent (attempts + 1), and which steps it sends.

        Called before every send, so a crash afterwards is recovered as ``outcome_unknown``.  Renews
        the claim's lease (same length, from ``now``).  Durable when it returns.

        :param steps: step names (e.g. "payment_method", "confirm") this send makes; in the same
            commit each gets ``steps_sent[step] = (existing first or now, now)`` within the current
            key generation.
        :return: the payment as stored after the update.
        :raises InvalidTransition: ``owner`` does not hold the claim, or its lease expired.
        :raises PaymentNotFound: no such payment.
        :raises InvalidRequest: a step name that is not a short identifier.
        """

    @abc.abstractmethod
    def record_intent(self, offline_id: str, owner: str, intent_id: str, now: datetime) -> StoredPayment:
        """Durably remember the processor's intent id as soon as it is known (no state change).

        The processor prunes idempotency keys (Stripe after 24 h); with the intent id the payment can
        still be looked up before a step is resent.

        :return: the payment as stored after the update.
        :raises InvalidTransition: ``owner`` does not hold the claim.
        :raises PaymentNotFound: no such payment.
        :raises InvalidRequest: ``intent_id`` is not a non-empty string.
        """

    @abc.abstractmethod
    def start_key_generation(
        self, offline_id: str, owner: str, now: datetime, intent_id: str | None, *, generation: int | None = None
    ) -> StoredPayment:
        """Start over under a new key generation, after a lookup at the processor.

        ``key_generation`` set to ``generation``, ``steps_sent`` cleared, ``intent_id`` set to what
        the lookup found, all in one durable commit.  State, attempts and the claim are unchanged.

        :param intent_id: the intent the processor has for this payment, or None for "the
            processor has none" (the stored intent id is cleared).
        :param generation: the new generation (the exchange's period since the payment was stored,
            the same for every actor); None, or one not above the current: the current one + 1.
        :raises InvalidRequest: ``generation`` is not a non-negative integer.
        :return: the payment as stored after the update.
        :raises InvalidTransition: ``owner`` does not hold the claim.
        :raises PaymentNotFound: no such payment.
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

        Appends to the history (with ``error_code`` as the entry's code).  ``forwarded`` and
        ``declined`` are final: the card data is purged (``card`` None afterwards), the details stay.

        :param intent_id: if given, becomes the payment's intent id (for every target state,
            ``outcome_unknown`` included); None keeps the stored one.
        :param next_attempt_at: when the payment may be claimed again (None: at once).
        :return: the payment as stored after the update.
        :raises InvalidTransition: a transition not in ALLOWED_TRANSITIONS, a claim ``owner`` does
            not hold, or ``outcome_unknown`` for a payment never sent.
        :raises PaymentNotFound: no such payment.
        """

    @abc.abstractmethod
    def release(self, owner: str, now: datetime) -> int:
        """Give back every claim ``owner`` holds (clean shutdown), expired or not.

        Each goes to ``outcome_unknown`` if a request was sent under it, else back to where it was
        claimed from (history code ``claim_released``).

        :return: how many claims were given back.
        :raises InvalidRequest: an empty owner.
        """

    @abc.abstractmethod
    def recover_expired_claims(self, now: datetime, owner_gone: Callable[[str], bool] | None = None) -> int:
        """Return claims of crashed forwarders to the queue, in one transaction.

        A claim is recovered when its lease expired, or (whatever its lease) when ``owner_gone``
        says its owner is gone.  A recovered payment goes to ``outcome_unknown`` if a request had
        been sent in that claim, else back to where it was claimed from (history code
        ``claim_expired`` or ``claim_owner_gone``).

        :param owner_gone: called once per distinct owner of a current (unexpired) claim, before
            the write; True means that owner can no longer act (the core knows a dead process of
            this device from its owner string), so its claims are taken back at once instead of
            waiting out the lease.  Whatever it raises propagates, and nothing is recovered.
        :return: how many claims were recovered.
        """


class PaymentStore(PaymentLedger, ClaimQueue):
    """A durable, encrypted home for offline payments: a ledger with a claim queue over it.

    This is what a storage backend implements (``offterm_storage_backends``).  The split says
    which guarantees serve whom: the Terminal stores and reads through ``PaymentLedger``; the
    forwarder takes work through ``ClaimQueue``.  ``offterm.plugins.storage.memory`` is the
    short reference implementation; ``offterm.testing.StoreConformance`` proves a backend.
    """


class StorageKeyProvider(abc.ABC):
    """Supplies the raw 256-bit key of a store."""

    @abc.abstractmethod
    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        """Return the 32-byte key for ``store_id``.

        ``None`` means "I have no key for this store" (and ``create`` was
        False, or this provider cannot create keys).  Raises
        StorageKeyUnavailable when the key exists but cannot be read.
        """
