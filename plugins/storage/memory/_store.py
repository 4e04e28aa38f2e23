"""``MemoryStore``: the storage contract in plain Python, one lock around everything.

Read this first when writing a backend: each method is the contract's rule, spelled
out without SQL.  A real backend must also make every write durable before it
returns and share claims across processes; this one keeps data as long as the
object lives (``close`` and ``open`` again keep it), and claims within it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from offterm.core.contracts.readers import CardResult
from offterm.core.contracts.storage import (
    ALLOWED_TRANSITIONS,
    CLAIMABLE_STATES,
    FINAL_STATES,
    PENDING_STATES,
    HistoryEntry,
    NewPayment,
    OnlineAttempt,
    PaymentState,
    PaymentStore,
    StorageKeyProvider,
    StoredPayment,
    StoreSummary,
)
from offterm.core.errors import (
    ConfigError,
    InvalidRequest,
    InvalidTransition,
    PaymentNotFound,
    StorageError,
    StoreNotFound,
)

#: The option that must be true before the store opens.
OPT_IN = "i_understand_payments_are_lost_on_exit"

_STEP = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_S = PaymentState


@dataclass
class _Record:
    """One payment and what only the store sees: its claim and its history."""

    payment: StoredPayment
    history: list[HistoryEntry]
    claim_owner: str | None = None
    claimed_at: datetime | None = None
    claim_expires_at: datetime | None = None
    claim_sent: bool = False  # a request went out under this claim
    claimed_from: PaymentState | None = None
    seq: int = 0


class MemoryStore(PaymentStore):
    """PaymentStore in a dict (see the module docstring)."""

    def __init__(self, *, i_understand_payments_are_lost_on_exit: bool = False) -> None:
        self._allowed = i_understand_payments_are_lost_on_exit is True
        self._lock = threading.Lock()
        self._open = False
        self._created = False  # an open(create=True) made the (empty) store; its data lives with the object
        self._payments: dict[str, _Record] = {}
        self._keys: dict[str, str] = {}  # idempotency key -> offline id
        self._journal: dict[str, OnlineAttempt] = {}
        self._meta: dict[str, str] = {}
        self._seq = 0

    # -- the ledger ------------------------------------------------------------------

    def open(self, keys: StorageKeyProvider, *, create: bool = True) -> None:
        if not self._allowed:
            raise ConfigError(
                f"storage.memory.{OPT_IN}",
                "the memory store keeps payments in this process only and loses them on exit; set it to true "
                "to use it anyway (tests and demos)",
            )
        if not create and not self._created:
            raise StoreNotFound("no payment store: this in-memory store was never created (nothing was created)")
        self._created = True
        self._open = True

    def close(self) -> None:
        self._open = False  # the data stays with the object: open() again reads it back

    def store(self, payment: NewPayment, check: Callable[[StoreSummary], None] | None = None) -> StoredPayment:
        _check_new(payment)
        with self._lock:
            self._check_open()
            existing = self._payments.get(payment.offline_id)
            if existing is not None:
                return existing.payment
            if payment.idempotency_key in self._keys:
                raise InvalidRequest("that idempotency key already belongs to another payment")
            if check is not None:
                check(self._summary())  # under the lock: nothing is stored between this look and the insert
            now = _now()
            stored = StoredPayment(
                offline_id=payment.offline_id,
                idempotency_key=payment.idempotency_key,
                amount=payment.amount,
                currency=payment.currency,
                capture_method=payment.capture_method,
                metadata=dict(payment.metadata),
                account_id=payment.account_id,
                livemode=payment.livemode,
                stored_at=_aware(payment.stored_at, "stored_at"),
                state=_S.STORED,
                attempts=0,
                card_details=payment.card.details,
                card=payment.card,
                intent_id=payment.intent_id,
                description=payment.description,
                updated_at=now,
                steps_sent=dict(payment.steps_sent),
            )
            self._seq += 1
            self._payments[payment.offline_id] = _Record(stored, [HistoryEntry(now, None, _S.STORED, 0)], seq=self._seq)
            self._keys[payment.idempotency_key] = payment.offline_id
            return stored

    def get(self, offline_id: str) -> StoredPayment:
        with self._lock:
            return self._record(offline_id).payment

    def list_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidRequest("limit must be a non-negative integer")
        wanted = None if states is None else {PaymentState(s) for s in states}
        with self._lock:
            self._check_open()
            found = [r.payment for r in self._ordered() if wanted is None or r.payment.state in wanted]
        return found if limit is None else found[:limit]

    def summary(self) -> StoreSummary:
        with self._lock:
            self._check_open()
            return self._summary()

    def history(self, offline_id: str) -> list[HistoryEntry]:
        with self._lock:
            return list(self._record(offline_id).history)

    def requeue(self, offline_id: str, now: datetime, *, reason: str | None = None) -> StoredPayment:
        now = _aware(now, "now")
        if reason is not None:
            _text(reason, "reason")
        with self._lock:
            rec = self._record(offline_id)
            if rec.payment.state is not _S.NEEDS_ATTENTION:
                raise InvalidTransition(
                    f"payment {offline_id} is {rec.payment.state.value}; only needs_attention can be requeued"
                )
            return self._move(
                rec, _S.STORED, now, "requeued", next_attempt_at=None, last_error_code="requeued",
                last_error_message=reason,
            )  # fmt: skip

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidRequest("meta keys and values are strings")
        with self._lock:
            self._check_open()
            self._meta[key] = value

    # -- the in-flight journal of online confirms --------------------------------------

    def begin_online(self, attempt: OnlineAttempt) -> None:
        if not isinstance(attempt, OnlineAttempt):
            raise InvalidRequest("begin_online() takes an OnlineAttempt")
        if attempt.resolution is not None:
            raise InvalidRequest("begin_online() journals an unresolved attempt; use resolve_online() to resolve it")
        for name in ("offline_id", "idempotency_key", "owner"):
            _text(getattr(attempt, name), name)
        _check_money(attempt.amount, attempt.currency)
        _aware(attempt.started_at, "started_at")
        with self._lock:
            self._check_open()
            known = self._journal.get(attempt.offline_id)
            if known is not None and known.resolution is not None:
                raise InvalidTransition(f"the online attempt {attempt.offline_id} is already resolved; it is kept")
            self._journal[attempt.offline_id] = replace(attempt, steps_sent=dict(attempt.steps_sent))

    def end_online(self, offline_id: str) -> None:
        _text(offline_id, "offline_id")
        with self._lock:
            self._check_open()
            self._journal.pop(offline_id, None)

    def resolve_online(
        self,
        offline_id: str,
        resolution: str,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> OnlineAttempt:
        _text(offline_id, "offline_id")
        _text(resolution, "resolution")
        now = _aware(now, "now")
        with self._lock:
            self._check_open()
            known = self._journal.get(offline_id)
            if known is None:
                raise PaymentNotFound(f"no online attempt {offline_id!r} in the journal")
            resolved = replace(
                known, resolution=resolution, resolved_at=now, intent_id=intent_id or known.intent_id,
                error_code=error_code,
            )  # fmt: skip
            self._journal[offline_id] = resolved
            return resolved

    def online_attempts(self, *, resolved: bool | None = None) -> list[OnlineAttempt]:
        if resolved is not None and not isinstance(resolved, bool):
            raise InvalidRequest("resolved is None, True or False")
        with self._lock:
            self._check_open()
            entries = [a for a in self._journal.values() if resolved is None or (a.resolution is not None) == resolved]
        return sorted(entries, key=lambda a: a.started_at)  # stable: ties stay in journaling order

    # -- the claim queue -------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, lease_seconds: float, now: datetime, *, ignore_backoff: bool = False
    ) -> list[StoredPayment]:
        _text(owner, "owner")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("claim limit must be a positive integer")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float) or not lease_seconds > 0:
            raise InvalidRequest("lease_seconds must be positive")
        if not isinstance(ignore_backoff, bool):
            raise InvalidRequest("ignore_backoff must be a bool")
        now = _aware(now, "now")
        with self._lock:
            self._check_open()
            due = [
                r
                for r in self._ordered()
                if r.payment.state in CLAIMABLE_STATES
                and (ignore_backoff or r.payment.next_attempt_at is None or r.payment.next_attempt_at <= now)
            ][:limit]
            for rec in due:
                rec.claimed_from = rec.payment.state
                rec.claim_owner, rec.claimed_at, rec.claim_sent = owner, now, False
                rec.claim_expires_at = now + timedelta(seconds=lease_seconds)
                self._move(rec, _S.FORWARDING, now, None)
            return [r.payment for r in due]

    def record_attempt(self, offline_id: str, owner: str, now: datetime, steps: Collection[str] = ()) -> StoredPayment:
        now = _aware(now, "now")
        names = _check_steps(steps)
        with self._lock:
            rec = self._held(offline_id, owner, now, live_lease=True)
            assert rec.claimed_at is not None and rec.claim_expires_at is not None
            rec.claim_expires_at = now + (rec.claim_expires_at - rec.claimed_at)  # same length, from now
            rec.claimed_at, rec.claim_sent = now, True
            sent = dict(rec.payment.steps_sent)
            for name in names:
                sent[name] = (sent[name][0] if name in sent else now, now)
            return self._update(rec, now, attempts=rec.payment.attempts + 1, steps_sent=sent)

    def record_intent(self, offline_id: str, owner: str, intent_id: str, now: datetime) -> StoredPayment:
        now = _aware(now, "now")
        _text(intent_id, "intent_id")
        with self._lock:
            return self._update(self._held(offline_id, owner, now), now, intent_id=intent_id)

    def start_key_generation(
        self, offline_id: str, owner: str, now: datetime, intent_id: str | None, *, generation: int | None = None
    ) -> StoredPayment:
        now = _aware(now, "now")
        if intent_id is not None:
            _text(intent_id, "intent_id")
        if generation is not None and (type(generation) is not int or generation < 0):
            raise InvalidRequest("generation must be a non-negative integer or None")
        with self._lock:
            rec = self._held(offline_id, owner, now)
            generation = max(rec.payment.key_generation + 1, generation or 0)
            return self._update(rec, now, key_generation=generation, steps_sent={}, intent_id=intent_id)

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
        now = _aware(now, "now")
        try:
            target = PaymentState(to_state)
        except ValueError:
            raise InvalidTransition(f"unknown payment state {to_state!r}") from None
        if target not in ALLOWED_TRANSITIONS[_S.FORWARDING]:
            raise InvalidTransition(f"a claimed payment cannot move from forwarding to {target.value}")
        if intent_id is not None:
            _text(intent_id, "intent_id")
        if next_attempt_at is not None:
            next_attempt_at = _aware(next_attempt_at, "next_attempt_at")
        with self._lock:
            rec = self._held(offline_id, owner, now)
            if target is _S.OUTCOME_UNKNOWN and rec.payment.attempts == 0:
                raise InvalidTransition(f"payment {offline_id} was never sent, so its outcome cannot be unknown")
            changes: dict[str, object] = {
                "intent_id": intent_id or rec.payment.intent_id,
                "last_error_code": error_code,
                "last_error_message": error_message,
                "decline_code": decline_code,
                "next_attempt_at": next_attempt_at,
            }
            if target in FINAL_STATES:  # card data goes; what reconciliation needs stays
                details = rec.payment.card_details
                changes.update(card=None, card_details=details and replace(details, cardholder_name=None))
            self._clear_claim(rec)
            return self._move(rec, target, now, error_code, **changes)

    def record_outcome(
        self,
        offline_id: str,
        to_state: PaymentState,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> StoredPayment | None:
        now = _aware(now, "now")
        target = _decided_elsewhere(to_state)
        if intent_id is not None:
            _text(intent_id, "intent_id")
        with self._lock:
            rec = self._record(offline_id)
            if rec.payment.state not in PENDING_STATES:
                return None
            changes: dict[str, object] = {
                "intent_id": intent_id or rec.payment.intent_id,
                "last_error_code": error_code,
                "last_error_message": None if error_code is None else "decided by the store hub's forwarder",
                "decline_code": error_code if target is _S.DECLINED else None,
                "next_attempt_at": None,
            }
            if target in FINAL_STATES:
                details = rec.payment.card_details
                changes.update(card=None, card_details=details and replace(details, cardholder_name=None))
            self._clear_claim(rec)
            if rec.payment.state is not _S.FORWARDING:  # through forwarding: only the allowed transitions
                self._move(rec, _S.FORWARDING, now, "decided_by_hub")
            return self._move(rec, target, now, "decided_by_hub", **changes)

    def release(self, owner: str, now: datetime) -> int:
        _text(owner, "owner")
        now = _aware(now, "now")
        with self._lock:
            self._check_open()
            held = [r for r in self._payments.values() if r.payment.state is _S.FORWARDING and r.claim_owner == owner]
            for rec in held:
                self._give_back(rec, now, "claim_released")
            return len(held)

    def recover_expired_claims(self, now: datetime, owner_gone: Callable[[str], bool] | None = None) -> int:
        now = _aware(now, "now")
        with self._lock:
            self._check_open()
            owners = {r.claim_owner for r in self._claims() if r.claim_expires_at and r.claim_expires_at > now}
        # Asked outside the lock (as a database backend asks outside its transaction).
        gone = {o for o in sorted(o for o in owners if o) if owner_gone(o)} if owner_gone else set()
        with self._lock:
            count = 0
            for rec in self._claims():
                expired = rec.claim_expires_at is not None and rec.claim_expires_at <= now
                if expired or rec.claim_owner in gone:
                    self._give_back(rec, now, "claim_expired" if expired else "claim_owner_gone")
                    count += 1
            return count

    # -- helpers (call with the lock held) --------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError("the memory store is not open")

    def _record(self, offline_id: str) -> _Record:
        self._check_open()
        rec = self._payments.get(offline_id)
        if rec is None:
            raise PaymentNotFound(f"no stored payment {offline_id!r}")
        return rec

    def _ordered(self) -> list[_Record]:
        return sorted(self._payments.values(), key=lambda r: (r.payment.stored_at, r.seq))

    def _claims(self) -> list[_Record]:
        return [r for r in self._payments.values() if r.payment.state is _S.FORWARDING]

    def _held(self, offline_id: str, owner: str, now: datetime, *, live_lease: bool = False) -> _Record:
        """The payment ``owner`` holds the claim on, or the contract's error saying why not."""
        _text(owner, "owner")
        rec = self._record(offline_id)
        if rec.payment.state is not _S.FORWARDING:
            raise InvalidTransition(f"payment {offline_id} is {rec.payment.state.value}, not claimed")
        if rec.claim_owner != owner:
            raise InvalidTransition(f"payment {offline_id} is claimed by another forwarder")
        if live_lease and rec.claim_expires_at is not None and rec.claim_expires_at <= now:
            raise InvalidTransition(f"the claim on payment {offline_id} expired; claim it again")
        return rec

    def _give_back(self, rec: _Record, now: datetime, code: str) -> None:
        """Back to the queue: outcome_unknown if a request went out under the claim, else where it came from."""
        target = _S.OUTCOME_UNKNOWN if rec.claim_sent else (rec.claimed_from or _S.STORED)
        self._clear_claim(rec)
        self._move(rec, target, now, code)

    @staticmethod
    def _clear_claim(rec: _Record) -> None:
        rec.claim_owner = rec.claimed_at = rec.claim_expires_at = rec.claimed_from = None
        rec.claim_sent = False

    @staticmethod
    def _move(rec: _Record, to: PaymentState, now: datetime, code: str | None, **changes: object) -> StoredPayment:
        """The one place a state changes: checked against ALLOWED_TRANSITIONS, then recorded in the history."""
        if to not in ALLOWED_TRANSITIONS[rec.payment.state]:
            raise InvalidTransition(f"a payment cannot move from {rec.payment.state.value} to {to.value}")
        rec.history.append(HistoryEntry(now, rec.payment.state, to, rec.payment.attempts, code))
        return MemoryStore._update(rec, now, state=to, **changes)

    @staticmethod
    def _update(rec: _Record, now: datetime, **changes: object) -> StoredPayment:
        rec.payment = replace(rec.payment, updated_at=now, **changes)  # type: ignore[arg-type]
        return rec.payment

    def _summary(self) -> StoreSummary:
        pending = [r.payment for r in self._payments.values() if r.payment.state in PENDING_STATES]
        amounts: dict[str, int] = {}
        for p in pending:
            amounts[p.currency] = amounts.get(p.currency, 0) + p.amount
        return StoreSummary(
            pending_count=len(pending),
            amounts_by_currency=amounts,
            oldest_stored_at=min((p.stored_at for p in pending), default=None),
            needs_attention_count=sum(r.payment.state is _S.NEEDS_ATTENTION for r in self._payments.values()),
        )


def _decided_elsewhere(to_state: str) -> PaymentState:
    try:
        target = PaymentState(to_state)
    except ValueError:
        raise InvalidTransition(f"unknown payment state {to_state!r}") from None
    if target not in (_S.FORWARDED, _S.DECLINED, _S.NEEDS_ATTENTION):
        raise InvalidTransition(f"an outcome decided elsewhere is forwarded, declined or needs_attention, not {target}")
    return target


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidRequest(f"{what} must be a non-empty string of at most 255 characters")
    return value


def _check_money(amount: object, currency: object) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidRequest("amount must be a positive integer in minor units")
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        raise InvalidRequest("currency must be a 3-letter ISO 4217 code")


def _check_steps(steps: Collection[str]) -> list[str]:
    if isinstance(steps, str | bytes) or not isinstance(steps, Collection):
        raise InvalidRequest("steps must be a collection of step names")
    names = list(steps)
    if not all(isinstance(n, str) and _STEP.fullmatch(n) for n in names):
        raise InvalidRequest("a step name is 1-64 letters, digits, '_', '.', ':' or '-'")
    return names


def _check_new(payment: NewPayment) -> None:
    if not isinstance(payment, NewPayment):
        raise InvalidRequest("store() takes a NewPayment")
    for name in ("offline_id", "idempotency_key", "account_id"):
        _text(getattr(payment, name), name)
    _check_money(payment.amount, payment.currency)
    _aware(payment.stored_at, "stored_at")
    card = payment.card
    if not isinstance(card, CardResult) or not card.encrypted_card_data:
        raise InvalidRequest("card must be a CardResult with encrypted card data")
    last4 = card.details.last4 if card.details is not None else None
    if not isinstance(last4, str) or not re.fullmatch(r"[0-9]{4}", last4):
        raise InvalidRequest("card details: last4 must be exactly 4 digits")
