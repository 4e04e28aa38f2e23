"""One Terminal behind Stripe's server-driven API: PaymentIntents, readers and their actions.

Everything the POS asks goes through the Terminal's public methods, so online, offline and
forwarding behave exactly as in the Python API.  ``process_payment_intent`` answers at once with the
reader's action ``in_progress``; the collection and the confirmation run in a background task, and the
action's end is an event (``terminal.reader.action_succeeded`` / ``action_failed``).

Across a restart (a crash, a SIGKILL mid-payment) the records in ``serve.sqlite3`` say which payments
were in an action; at the next start each is settled from what the Terminal knows, never by charging
again: stored offline (the store has it), charged / declined / not charged (the in-flight journal's
recovery: ``recovered_payments()`` and ``offterm_on_online_payment_recovered``), or, when it never
reached the processor, failed with ``service_restarted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from offterm.core import Terminal, hookimpl
from offterm.core.config import Config
from offterm.core.contracts import PaymentState, ReaderInfo
from offterm.core.contracts.storage import OnlineAttempt
from offterm.core.errors import CardDeclined, OfftermError, OutcomeUnknown, ReaderError
from offterm.core.manager import create_plugin_manager
from offterm.core.models import IntentStatus, OfflineBehavior, OfflineStatus, PaymentIntent

from . import objects
from .config import OFFLINE_BEHAVIOR_KEY, ServeSettings
from .db import transaction
from .errors import ApiError, from_offterm, missing, unexpected_state
from .objects import CONFIRMING, CREATED, DONE, IN_ACTION, IntentRecord
from .outbox import Outbox

log = structlog.get_logger("offterm.serve")

#: What a request's waiting part hands back: the synchronous rest, run by the endpoint inside the transaction
#: that also keeps the request's Idempotency-Key answer (one commit per request; nothing awaits inside it).
Finish = Callable[[], dict[str, Any]]


class _Listener:
    """The service's plugin: the Terminal's events become the service's."""

    def __init__(self, service: PaymentService) -> None:
        self._service = service

    def offterm_on_payment_intent_forwarded(self, intent: PaymentIntent, error: Exception | None) -> None:
        self._service.forwarded(intent, error)

    def offterm_on_online_payment_recovered(self, payment: OnlineAttempt) -> None:
        self._service.recovered(payment)

    def offterm_on_offline_status_changed(self, status: OfflineStatus) -> None:
        # not an event of the outbox (no webhook, no number): the SSE streams re-read the status
        self._service.outbox.notify()


# Marked by a call rather than as decorators: pluggy's marker is untyped, and mypy strict refuses untyped decorators.
for _hook in (
    _Listener.offterm_on_payment_intent_forwarded,
    _Listener.offterm_on_online_payment_recovered,
    _Listener.offterm_on_offline_status_changed,
):
    hookimpl(_hook)


class _ReaderState:
    def __init__(self, info: ReaderInfo, action: dict[str, Any] | None) -> None:
        self.info = info
        self.action = action
        self.task: asyncio.Task[None] | None = None
        self.intent_id: str | None = None
        self.presented = asyncio.Event()
        self.confirming = False


class PaymentService:
    def __init__(self, config: Config, settings: ServeSettings, db: sqlite3.Connection, outbox: Outbox) -> None:
        self.settings = settings
        self._db = db
        self.outbox = outbox
        p = config.sections["plugins"]
        pm = create_plugin_manager(
            disabled=p["disable"],
            autoload=p["autoload"],
            strict=p["strict"],
            env=config.env,
            plugins={"offterm-serve": _Listener(self)},
        )
        self.terminal = Terminal(config, pm)
        self._records: dict[str, IntentRecord] = {}
        self._by_offline: dict[str, str] = {}
        self._readers: dict[str, _ReaderState] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        for (body,) in self._db.execute("SELECT body FROM intents"):
            record = IntentRecord.restore(json.loads(body))
            self._remember(record)
        await self.terminal.open()
        self._livemode()
        found = await self._discover_readers()
        await self._settle_after_restart()
        await self._connect_reader(found)

    async def close(self) -> None:
        for state in self._readers.values():
            if state.task is not None:
                state.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.task
        await self.terminal.close()

    def _livemode(self) -> bool:
        account = self.terminal.last_seen_account
        live = bool(account and account[1])
        self.outbox.livemode = live
        return live

    async def _discover_readers(self) -> list[ReaderInfo]:
        try:
            found: list[ReaderInfo] = await self.terminal.discover_readers()
        except (OfftermError, OSError) as exc:
            log.warning("reader_discovery_failed", error_type=type(exc).__name__)
            return []
        saved = dict(self._db.execute("SELECT id, action FROM readers").fetchall())
        for info in found:
            rid = objects.reader_id(info)
            raw = saved.get(rid)
            state = _ReaderState(info, json.loads(raw) if raw else None)
            if state.action and state.action.get("type") == "process_payment_intent":
                state.intent_id = state.action["process_payment_intent"]["payment_intent"]
            self._readers[rid] = state
        return found

    async def _connect_reader(self, found: list[ReaderInfo]) -> None:
        wanted = [i for i in found if self.settings.reader in (None, i.serial_number)]
        if wanted:
            try:
                await self.terminal.connect_reader(wanted[0])
            except (OfftermError, OSError) as exc:
                log.warning("reader_connect_failed", error_type=type(exc).__name__)

    # -- records ---------------------------------------------------------------------------

    def _remember(self, record: IntentRecord) -> None:
        self._records[record.id] = record
        self._by_offline[record.offline_id] = record.id

    def _save(self, record: IntentRecord) -> None:
        self._remember(record)
        self._db.execute(
            "INSERT INTO intents (id, offline_id, phase, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET phase = excluded.phase, body = excluded.body",
            (record.id, record.offline_id, record.phase, json.dumps(record.persisted())),
        )

    def _save_action(self, state: _ReaderState) -> None:
        self._db.execute(
            "INSERT INTO readers (id, action) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET action = excluded.action",
            (objects.reader_id(state.info), json.dumps(state.action)),
        )

    def record(self, intent_id: str) -> IntentRecord:
        record = self._records.get(intent_id)
        if record is None:
            alias = self._by_offline.get(intent_id)
            record = self._records.get(alias) if alias else None
        if record is None:
            raise missing("payment_intent", intent_id)
        return record

    def reader(self, reader_id: str) -> _ReaderState:
        state = self._readers.get(reader_id)
        if state is None:
            raise missing("terminal.reader", reader_id)
        return state

    def render_reader(self, state: _ReaderState) -> dict[str, Any]:
        conn = self.terminal.connected_reader
        online = conn is not None and conn.is_connected and conn.info.serial_number == state.info.serial_number
        return objects.render_reader(state.info, online=online, action=state.action, livemode=self._livemode())

    def readers(self) -> list[dict[str, Any]]:
        return [self.render_reader(s) for s in self._readers.values()]

    # -- PaymentIntents -----------------------------------------------------------------------

    async def create_intent(self, params: dict[str, Any], behavior: OfflineBehavior) -> Finish:
        """The Terminal's PaymentIntent; then (``Finish``) its record, saved and rendered."""
        try:
            intent = await self.terminal.create_payment_intent(params, offline_behavior=behavior)
        except OfftermError as exc:
            raise from_offterm(exc) from exc
        return lambda: self._created(intent, behavior)

    def _created(self, intent: PaymentIntent, behavior: OfflineBehavior) -> dict[str, Any]:
        record = IntentRecord(
            id=intent.id or intent.offline_id,
            offline_id=intent.offline_id,
            amount=intent.amount,
            currency=intent.currency,
            capture_method=intent.capture_method.value,
            metadata=dict(intent.metadata),
            description=intent.description,
            created=objects.now(),
            status=intent.status.value,
            offline_behavior=behavior.value,
            livemode=self._livemode(),
            processor_intent_id=intent.id,
            core=intent,
        )
        self._save(record)
        return record.render()

    async def cancel_intent(self, intent_id: str, reason: str | None) -> Finish:
        """Checked and canceled at the Terminal; then (``Finish``) the record and its event, saved."""
        record = self.record(intent_id)
        if record.phase in (IN_ACTION, CONFIRMING):
            raise unexpected_state("This PaymentIntent is being processed by a reader; cancel the reader action first.")
        if record.status not in ("requires_payment_method", "requires_confirmation") or record.offline_details:
            raise unexpected_state(
                f"You cannot cancel this PaymentIntent because it has a status of {record.status}. Only a "
                "PaymentIntent with one of the following statuses may be canceled: requires_payment_method, "
                "requires_confirmation."
            )
        await self._cancel_core(record)

        def canceled() -> dict[str, Any]:
            record.status, record.phase = "canceled", DONE
            record.cancellation_reason, record.canceled_at = reason or "requested_by_customer", objects.now()
            out = record.render()
            with transaction(self._db):
                self._save(record)
                self.outbox.append("payment_intent.canceled", out, record.offline_id)
            return out

        return canceled

    async def _cancel_core(self, record: IntentRecord) -> None:
        core = record.core or PaymentIntent(
            offline_id=record.offline_id, amount=record.amount, currency=record.currency, id=record.processor_intent_id
        )
        try:
            await self.terminal.cancel_payment_intent(core)
        except OfftermError as exc:
            log.warning("cancel_failed", offline_id=record.offline_id, code=exc.code)

    # -- reader actions -------------------------------------------------------------------------

    def process(self, reader_id: str, intent_id: str) -> dict[str, Any]:
        state = self.reader(reader_id)
        record = self.record(intent_id)
        if state.task is not None and not state.task.done():
            raise ApiError(400, "Reader is currently busy processing another request.", code="terminal_reader_busy")
        if record.core is None and record.status in ("requires_payment_method", "requires_confirmation"):
            raise unexpected_state("This PaymentIntent was created before the service restarted; create a new one.")
        if record.status not in ("requires_payment_method", "requires_confirmation") or record.phase != CREATED:
            raise unexpected_state(
                f"This PaymentIntent's status is {record.status}; it cannot be processed by a reader."
            )
        record.phase = IN_ACTION
        record.last_payment_error = None
        state.action = objects.process_action(record.id)
        state.intent_id = record.id
        state.presented = asyncio.Event()
        state.confirming = False
        with transaction(self._db):
            self._save(record)
            self._save_action(state)
        # runs once this task yields, so after the commit (of the endpoint's transaction, when inside one)
        state.task = asyncio.get_running_loop().create_task(self._run_action(state, record))
        return self.render_reader(state)

    def _simulated(self) -> Any:
        conn = self.terminal.connected_reader
        return conn if conn is not None and hasattr(conn, "present_card") else None

    def present(self, reader_id: str, card_number: str | None) -> dict[str, Any]:
        state = self.reader(reader_id)
        conn = self._simulated()
        if conn is None:
            raise ApiError(400, "present_payment_method works only with the simulated reader.", code="not_simulated")
        if state.task is None or state.task.done() or state.presented.is_set():
            raise ApiError(400, "The reader has no action waiting for a payment method.", code="terminal_reader_busy")
        try:
            conn.present_card(card_number or "visa")
        except ValueError:
            raise ApiError(
                400, "Unknown test card number.", code="parameter_invalid_string", param="card_present[number]"
            ) from None
        state.presented.set()
        return self.render_reader(state)

    async def cancel_action(self, reader_id: str) -> dict[str, Any]:
        state = self.reader(reader_id)
        if state.task is None or state.task.done():
            raise ApiError(400, "This reader has no action to cancel.", code="terminal_reader_busy", saved=True)
        if state.confirming:
            raise ApiError(
                400,
                "The card was read and the payment is being confirmed; it can no longer be canceled.",
                code="terminal_reader_busy",
                saved=True,
            )
        state.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.task
        return self.render_reader(state)

    async def _run_action(self, state: _ReaderState, record: IntentRecord) -> None:
        core = record.core
        assert core is not None
        try:
            conn = self.terminal.connected_reader
            if conn is None or conn.info.serial_number != state.info.serial_number:
                await self.terminal.connect_reader(state.info)
            if core.status is IntentStatus.REQUIRES_PAYMENT_METHOD:
                if self._simulated() is not None:
                    async with asyncio.timeout(self.settings.collect_timeout):
                        await state.presented.wait()
                core = await self.terminal.collect_payment_method(core, timeout=self.settings.collect_timeout)
            state.confirming = True
            # Not saved: after a restart CONFIRMING and IN_ACTION (on disk) are settled alike, from what the
            # Terminal knows, so a commit here would only delay the outcome.
            record.phase = CONFIRMING
            core = await self.terminal.confirm_payment_intent(core)
        except asyncio.CancelledError:
            with contextlib.suppress(OfftermError):
                conn = self.terminal.connected_reader
                if conn is not None:
                    await conn.cancel_collect()
            self._action_failed(state, record, "canceled", "The action was canceled.")
            raise
        except CardDeclined as exc:
            record.status = "requires_payment_method"
            record.last_payment_error = {
                "type": "card_error",
                "code": exc.code,
                "decline_code": exc.decline_code,
                "message": exc.message,
            }
            record.processor_intent_id = core.id or record.processor_intent_id
            with transaction(self._db):
                self._action_failed(state, record, exc.code, exc.message)
                self.outbox.append("payment_intent.payment_failed", record.render(), record.offline_id)
            return
        except OutcomeUnknown as exc:
            # The confirm may have reached the processor: the Terminal resends under the same keys when the
            # POS processes this PaymentIntent again, never charging twice.
            record.status = "requires_confirmation"
            self._action_failed(state, record, exc.code, exc.message)
            return
        except TimeoutError:
            self._action_failed(state, record, "reader_timeout", "No card was presented in time.")
            return
        except (OfftermError, ReaderError) as exc:
            record.status = core.status.value
            self._action_failed(state, record, exc.code, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - an action must end, and say so
            log.exception("action_crashed", offline_id=record.offline_id)
            self._action_failed(state, record, "api_error", f"internal error ({type(exc).__name__})")
            return
        self._confirmed(state, record, core)

    def _confirmed(self, state: _ReaderState, record: IntentRecord, core: PaymentIntent) -> None:
        record.core = core
        record.status = core.status.value
        record.phase = DONE
        record.processor_intent_id = core.id
        record.offline_details = objects.offline_details(core)
        record.forwarding = "stored" if core.requires_upload else None
        assert state.action is not None
        state.action = {**state.action, "status": "succeeded"}
        with transaction(self._db):  # one commit: the outcome is on disk, then the event streams hear of it
            self._save(record)
            self._save_action(state)
            self.outbox.append("terminal.reader.action_succeeded", self.render_reader(state), record.offline_id)
            if not core.requires_upload:
                self._announce_paid(record)

    def _announce_paid(self, record: IntentRecord) -> None:
        kind = (
            "payment_intent.succeeded" if record.status == "succeeded" else "payment_intent.amount_capturable_updated"
        )
        self.outbox.append(kind, record.render(), record.offline_id)

    def _action_failed(self, state: _ReaderState, record: IntentRecord, code: str, message: str) -> None:
        if record.phase != DONE:
            record.phase = CREATED if record.core is not None else DONE
        action = state.action or objects.process_action(record.id)
        state.action = {**action, "status": "failed", "failure_code": code, "failure_message": message}
        with transaction(self._db):
            self._save(record)
            self._save_action(state)
            self.outbox.append("terminal.reader.action_failed", self.render_reader(state), record.offline_id)

    # -- after forwarding, after a crash --------------------------------------------------------

    def forwarded(self, intent: PaymentIntent, error: Exception | None) -> None:
        rid = self._by_offline.get(intent.offline_id)
        record = self._records.get(rid) if rid else None
        if record is None:
            return  # a payment not taken through this service
        record.processor_intent_id = intent.id or record.processor_intent_id
        if record.offline_details is not None:
            record.offline_details = {**record.offline_details, "requires_upload": error is not None}
        if error is None:
            record.forwarding = "forwarded"
            record.status = (
                intent.status.value if intent.status is not IntentStatus.REQUIRES_PAYMENT_METHOD else "succeeded"
            )
            with transaction(self._db):
                self._save(record)
                self._announce_paid(record)
        elif isinstance(error, CardDeclined):
            record.forwarding = "declined"
            record.status = "requires_payment_method"
            record.last_payment_error = {
                "type": "card_error",
                "code": error.code,
                "decline_code": error.decline_code,
                "message": error.message,
            }
            with transaction(self._db):
                self._save(record)
                self.outbox.append("payment_intent.payment_failed", record.render(), record.offline_id)
        else:
            record.forwarding = "needs_attention"
            code = getattr(error, "code", type(error).__name__)
            record.last_payment_error = {"type": "api_error", "code": code, "message": str(error)[:500]}
            with transaction(self._db):
                self._save(record)
                self.outbox.append("offterm.payment.needs_attention", record.render(), record.offline_id)

    def recovered(self, payment: OnlineAttempt) -> None:
        rid = self._by_offline.get(payment.offline_id)
        record = self._records.get(rid) if rid else None
        if record is None or record.phase == DONE:
            return
        with transaction(self._db):
            self._settle(record, payment.resolution, payment.intent_id)

    def _settle(self, record: IntentRecord, resolution: str | None, intent_id: str | None) -> None:
        """A payment the service died during, now known: the record and its reader's action say so.

        Called inside a transaction: the record, the action and the events are committed together.
        """
        record.processor_intent_id = intent_id or record.processor_intent_id
        state = next((s for s in self._readers.values() if s.intent_id == record.id), None)
        record.phase = DONE
        if resolution == "charged":
            record.status = "requires_capture" if record.capture_method == "manual" else "succeeded"
            self._save(record)
            if state is not None and state.action:
                state.action = {**state.action, "status": "succeeded"}
                self._save_action(state)
                self.outbox.append("terminal.reader.action_succeeded", self.render_reader(state), record.offline_id)
            self._announce_paid(record)
            return
        if resolution == "declined":
            record.status = "requires_payment_method"
            record.last_payment_error = {"type": "card_error", "code": "card_declined", "message": "declined"}
        else:
            record.status, record.cancellation_reason, record.canceled_at = "canceled", "abandoned", objects.now()
        self._save(record)
        if state is not None:
            self._action_failed(state, record, "service_restarted", f"the service restarted mid-payment ({resolution})")

    async def _settle_after_restart(self) -> None:
        busy = [r for r in self._records.values() if r.phase in (IN_ACTION, CONFIRMING)]
        idle = [r for r in self._records.values() if r.phase == CREATED and r.core is None]
        if not busy and not idle:
            return
        stored = {p.offline_id: p for p in await self.terminal.list_stored_payments()}
        recovered = {a.offline_id: a for a in await self.terminal.recovered_payments()}
        unresolved = {a.offline_id for a in await self.terminal.store.online_attempts(resolved=False)}
        with transaction(self._db):  # every busy record settled in one commit
            for record in busy:
                payment = stored.get(record.offline_id)
                if payment is not None:
                    record.offline_details = {
                        "stored_at": int(payment.stored_at.timestamp()),
                        "requires_upload": True,
                        "card_present_details": None,
                    }
                    record.status = "requires_capture" if record.capture_method == "manual" else "succeeded"
                    record.forwarding = "stored"
                    if payment.state is PaymentState.FORWARDED:
                        record.offline_details["requires_upload"] = False
                        record.forwarding = "forwarded"
                    record.phase = DONE
                    self._save(record)
                    continue
                if record.offline_id in recovered:
                    attempt = recovered[record.offline_id]
                    self._settle(record, attempt.resolution, attempt.intent_id)
                elif record.offline_id in unresolved:
                    record.status = (
                        "processing"  # the journal's recovery will say (offterm_on_online_payment_recovered)
                    )
                    self._save(record)
                else:
                    self._settle(record, "not_charged", None)
        for record in idle:
            await self._cancel_core(record)
            record.status, record.phase = "canceled", DONE
            record.cancellation_reason, record.canceled_at = "abandoned", objects.now()
            self._save(record)

    # -- offterm extensions -----------------------------------------------------------------------

    def offline_status(self) -> dict[str, Any]:
        sdk = self.terminal.offline_status.sdk
        return {
            "object": "offterm.offline_status",
            "network_status": sdk.network_status.value,
            "offline_payments_count": sdk.offline_payments_count,
            "offline_payment_amounts_by_currency": dict(sdk.offline_payment_amounts_by_currency),
            "needs_attention_count": sdk.needs_attention_count,
            "oldest_stored_at": int(sdk.oldest_stored_at.timestamp()) if sdk.oldest_stored_at else None,
        }

    async def stored_payments(self, states: list[PaymentState] | None, limit: int) -> list[dict[str, Any]]:
        payments = await self.terminal.list_stored_payments(states, limit)
        out = []
        for p in payments:
            details = p.card_details
            out.append(
                {
                    "object": "offterm.stored_payment",
                    "offline_id": p.offline_id,
                    "payment_intent": self._by_offline.get(p.offline_id),
                    "processor_payment_intent": p.intent_id,
                    "amount": p.amount,
                    "currency": p.currency,
                    "state": p.state.value,
                    "stored_at": int(p.stored_at.timestamp()),
                    "attempts": p.attempts,
                    "last_error_code": p.last_error_code,
                    "decline_code": p.decline_code,
                    "card_present_details": None
                    if details is None
                    else {"brand": details.brand, "last4": details.last4},
                    "metadata": dict(p.metadata),
                }
            )
        return out

    async def forward(self, timeout: float) -> dict[str, Any]:
        remaining = await self.terminal.forward_now(timeout=timeout)
        return {"object": "offterm.forward_result", "remaining": remaining, "offline_status": self.offline_status()}


def behavior_for(metadata: dict[str, Any], header: str | None, default: OfflineBehavior) -> OfflineBehavior:
    """The header wins, then the metadata key, then ``[serve] offline_behavior``."""
    for where, value in (
        ("Offterm-Offline-Behavior", header),
        (f"metadata[{OFFLINE_BEHAVIOR_KEY}]", metadata.get(OFFLINE_BEHAVIOR_KEY)),
    ):
        if value:
            try:
                return OfflineBehavior(str(value).lower())
            except ValueError:
                choices = ", ".join(b.value for b in OfflineBehavior)
                raise ApiError(
                    400, f"{where} must be one of {choices}.", code="parameter_invalid_string", param=where
                ) from None
    return default
