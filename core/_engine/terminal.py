"""The Terminal: the one object a POS app talks to.

Flow: create an intent -> collect a card on the reader -> confirm.  Online,
confirm goes to the processor; offline (or when the processor does not
answer in time under PREFER_ONLINE) the acceptance policies are asked and
the payment is committed to the encrypted store before confirm returns.
The forwarder sends stored payments later, exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from ..config import Config, load_config
from ..contracts import (
    AcceptanceRequest,
    CardResult,
    CollectRequest,
    ConnectionTokenProvider,
    ForwardingPolicy,
    ForwardingTransport,
    NewPayment,
    OfflineAcceptancePolicy,
    PaymentState,
    PaymentStore,
    ProcessorSession,
    ReaderConnection,
    ReaderInfo,
    ReaderTransport,
    StorageKeyProvider,
    StoredPayment,
    StoreSummary,
)
from ..contracts.forwarding import IntentRequest
from ..contracts.storage import PENDING_STATES, HistoryEntry, OnlineAttempt
from ..currency import normalize_currency, validate_amount
from ..errors import (
    AuthenticationFailed,
    CardDeclined,
    ComponentWrongType,
    ConfigError,
    ConnectionTokenError,
    NoLastSeenAccount,
    OfflineModeDisabled,
    OfflineRefused,
    OfftermError,
    OutcomeUnknown,
    PermanentProcessorError,
    ProcessorError,
    ReaderNotConnected,
    RequireOnlineWhileOffline,
    TransientProcessorError,
    UnexpectedIntentState,
)
from ..logs import payment_scoped
from ..manager import PluginManager, create_plugin_manager
from ..models import (
    IntentStatus,
    NetworkStatus,
    OfflineBehavior,
    OfflineDetails,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParams,
    new_offline_id,
    time_ordered_hex,
)
from ..paths import make_private_dir
from ..registrations import ComponentContext, Registration
from .exchange import Exchange, ExchangeSettings, Outcome, PaymentView, StepsSent
from .forwarder import Forwarder, ForwardingSettings, utcnow
from .intents import card_present_details, intent_from_stored
from .keys import Step, step_key
from .network import NetworkMonitor
from .owners import make_owner
from .replication import build_replication
from .session import SessionManager
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.terminal")

_ACCOUNT_META = "last_seen_account"
_READER_META = "reader_online:"
#: The contract each kind of component must implement; ``_build`` checks what a factory returns against it.
_CONTRACTS: dict[str, type] = {
    "reader": ReaderTransport,
    "storage": PaymentStore,
    "storage_key": StorageKeyProvider,
    "tokens": ConnectionTokenProvider,
    "forwarding": ForwardingTransport,
    "acceptance": OfflineAcceptancePolicy,
    "forwarding_policy": ForwardingPolicy,
}


@dataclass(frozen=True)
class WaitingPayment:
    """A payment still waiting for the processor, and why.

    :param offline_id: the payment's local id.
    :param state: its state in the store (``stored``, ``forwarding`` or ``outcome_unknown``).
    :param reason: why it is still waiting, in words ("not tried yet", "last attempt: <error code>"...).
    """

    offline_id: str
    state: PaymentState
    reason: str


@dataclass(frozen=True)
class CloseReport:
    """What ``close()`` left behind: payments still waiting for the processor, each with why.

    :param remaining: how many payments still wait to be forwarded.
    :param amounts_by_currency: their total per currency, in minor units.
    :param needs_attention: how many payments need a person (never retried on their own).
    :param waiting: each waiting payment with its state and reason.
    """

    remaining: int
    amounts_by_currency: dict[str, int]
    needs_attention: int
    waiting: tuple[WaitingPayment, ...] = ()

    @property
    def safe_to_shut_down(self) -> bool:
        """True when nothing waits: shutting down now delays no payment."""
        return self.remaining == 0


def _why_waiting(payment: StoredPayment) -> str:
    if payment.state is PaymentState.FORWARDING:
        return "being forwarded (claimed by a forwarder that may still run)"
    if payment.last_error_code:
        return f"last attempt: {payment.last_error_code}"
    if payment.attempts == 0:
        return "not tried yet"
    return "waiting for a retry"


@dataclass
class _Pending:
    """In-memory state of an intent between create and confirm.

    Its idempotency key is made once, when the intent is created, and is the
    one every request of the payment derives its key from: the online
    create and confirm, and the forwarder if it falls back offline.  Once an
    online confirm starts, what it sends is journaled in the store too.
    """

    idempotency_key: str
    card: CardResult | None = None
    steps_sent: StepsSent = field(default_factory=dict)


class _JournalLedger:
    """The exchange's ledger for an online confirm: the store's in-flight journal."""

    def __init__(self, terminal: Terminal, intent: PaymentIntent, pending: _Pending) -> None:
        self._terminal = terminal
        self._intent = intent
        self._pending = pending
        self.started_at = utcnow()

    async def _write(self, steps_sent: StepsSent) -> None:
        intent, pending = self._intent, self._pending
        await self._terminal.store.begin_online(
            OnlineAttempt(
                offline_id=intent.offline_id,
                idempotency_key=pending.idempotency_key,
                amount=intent.amount,
                currency=intent.currency,
                owner=self._terminal.owner,
                started_at=self.started_at,
                intent_id=intent.id,
                steps_sent=steps_sent,
            )
        )

    async def sending(self, steps: Collection[Step], now: datetime) -> None:
        sent = dict(self._pending.steps_sent)
        for step in steps:
            sent[step] = (sent.get(step, (now, now))[0], now)
        await self._write(sent)  # durable before the request goes out

    async def intent_known(self, intent_id: str, now: datetime) -> None:
        self._intent.id = intent_id
        await self._write(self._pending.steps_sent)

    async def new_generation(self, intent_id: str | None, now: datetime, generation: int) -> None:
        # An online confirm never spans the idempotency window: only the forwarder looks payments up.
        raise UnexpectedIntentState("an online confirm cannot start a new key generation")


class Terminal:
    """Async Terminal API.  Use ``async with Terminal.from_config(...) as terminal:``."""

    def __init__(
        self,
        config: Config,
        plugin_manager: PluginManager | None = None,
        *,
        background: bool = True,
        create_store: bool = True,
    ) -> None:
        self.config = config
        self._background = background
        self._create_store = create_store
        plugins = config.sections["plugins"]
        self.plugins = plugin_manager or create_plugin_manager(
            disabled=plugins["disable"], autoload=plugins["autoload"], strict=plugins["strict"], env=config.env
        )
        term = config.sections["terminal"]
        self.data_dir = config.data_dir
        self._merchant_country: str = term["merchant_country"]
        self._location_id: str | None = term["location_id"]
        self._offline_enabled: bool = term["offline_enabled"]
        self._offline_timeout: float = float(term["offline_timeout"])
        self._pending: dict[str, _Pending] = {}
        #: Online confirms answered and returned to the app; their journal entries go at the app's next call.
        self._answered: dict[str, None] = {}
        self._reader: ReaderConnection | None = None
        self._reader_transport: ReaderTransport | None = None
        self._summary = StoreSummary(0, {}, None, 0)
        self._last_status: OfflineStatus | None = None
        self._account: tuple[str, bool] | None = None
        self._reader_records: dict[str, tuple[datetime | None, str | None]] = {}
        self._opened = False
        #: Who this Terminal is in the store's in-flight journal and its claims: host, boot, pid and
        #: process start time, so a claim of a process provably gone is taken back at once.
        self.owner = make_owner("pos")

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: str | Path | Mapping[str, Any] | Config | None = None,
        *,
        plugin_manager: PluginManager | None = None,
        background: bool = True,
        create_store: bool = True,
    ) -> Terminal:
        """Build a Terminal from a TOML path, a dict, or a loaded Config (not yet open).

        ``background=False`` opens without the forwarding and probing tasks
        (for inspection tools); ``forward_now`` still works.  ``create_store=False``
        opens only an existing store: where there is none, ``open()`` raises
        ``StoreNotFound`` and creates nothing (no directory, store, key or reserve).
        """
        loaded = config if isinstance(config, Config) else load_config(config)
        return cls(loaded, plugin_manager, background=background, create_store=create_store)

    def _build(self, kind: str, registration: Registration[Any]) -> Any:
        options = self.config.component(kind, registration)
        built = registration.factory(ComponentContext(registration.name, options, self.data_dir))
        expected = _CONTRACTS.get(kind)
        if expected is not None and not isinstance(built, expected):
            plugin = self.plugins.available(kind).get(registration.name, "unknown")
            raise ComponentWrongType(
                f"plugin {plugin!r}: the {kind} component {registration.name!r} built a {type(built).__name__}, "
                f"not a {expected.__module__}.{expected.__qualname__}",
                plugin=plugin,
                component=registration.name,
                expected=expected.__qualname__,
            )
        return built

    async def __aenter__(self) -> Terminal:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Build components, open the store, recover crashed claims, start forwarding."""
        cfg = self.config.sections
        pm = self.plugins
        if self._create_store:  # an inspection Terminal creates nothing: the store finds its own directory
            make_private_dir(self.data_dir, lambda m: ConfigError("terminal.data_dir", m), "directory")
        self._check_component_tables()
        pm.apply_listener_settings(self.config)  # [plugins.<name>] tables, before any event
        store_reg = pm.storage_backend(cfg["storage"]["backend"])
        key_reg = pm.storage_key_provider(cfg["storage"]["key_provider"])
        transport_reg = pm.forwarding_transport(cfg["forwarding"]["transport"])
        policy_reg = pm.forwarding_policy(cfg["forwarding"]["policy"])
        token_regs = [pm.token_provider(n) for n in cfg["tokens"]["providers"]]
        self._acceptance: list[tuple[str, OfflineAcceptancePolicy]] = [
            (reg.name, self._build("acceptance", reg)) for reg in pm.acceptance_policies()
        ]
        self._reader_reg = pm.reader_transport(cfg["reader"]["transport"])
        self.transport: ForwardingTransport = self._build("forwarding", transport_reg)
        providers: list[tuple[str, ConnectionTokenProvider]] = [
            (reg.name, self._build("tokens", reg)) for reg in token_regs
        ]

        self.store = AsyncStore(self._build("storage", store_reg))
        await self.store.open(self._build("storage_key", key_reg), create=self._create_store)
        try:
            account = await self.store.get_meta(_ACCOUNT_META)
            if account:
                data = json.loads(account)
                self._account = (data["account_id"], bool(data["livemode"]))
            await self.transport.open()
            self.network = NetworkMonitor(
                self.transport.probe,
                self._network_changed,
                cfg["terminal"]["probe_min_interval"],
                cfg["terminal"]["probe_max_interval"],
            )
            self.sessions = SessionManager(providers, self.transport, self._location_id, self._authenticated)
            fwd = cfg["forwarding"]
            exchange_settings = ExchangeSettings(
                idempotency_window=float(fwd["idempotency_window"]),
                processing_checks=fwd["processing_checks"],
                processing_interval=float(fwd["processing_interval"]),
            )
            self._exchange = Exchange(self.transport, exchange_settings, utcnow)
            self.forwarder = Forwarder(
                self.store,
                self.transport,
                self.sessions,
                self._build("forwarding_policy", policy_reg),
                self.network,
                self.plugins.emit,
                ForwardingSettings(
                    interval=float(fwd["interval"]),
                    concurrency=fwd["concurrency"],
                    rate_limit=float(fwd["rate_limit"]),
                    batch_size=fwd["batch_size"],
                    lease_seconds=float(fwd["lease_seconds"]),
                    exchange=exchange_settings,
                ),
                on_progress=self._schedule_status_refresh,
            )
            # Claims of a forwarder that crashed on this device come back at once, not after their lease.
            recovered = await self.forwarder.recover_claims()
            if recovered:
                log.warning("recovered_claims_after_crash", count=recovered)
            # the store hub ([hub]): a no-op when none is configured; never connects here (docs/fleet.md)
            self.replication = build_replication(self.config, self.plugins, self._build, self.store)
        except BaseException:
            await self.store.close()
            raise
        self._opened = True
        await self._refresh_status(emit=False)
        if self._background:
            self.network.start()
            self.forwarder.start()
            self.forwarder.trigger()
            self.replication.start()
        log.info("terminal_opened", pending=self._summary.pending_count)

    def _check_component_tables(self) -> None:
        """A ``[kind.name]`` table must name a registered component: a typo is an error, not ignored."""
        for kind, name in self.config.component_options:
            available = self.plugins.available(kind)
            if name not in available:
                choices = ", ".join(sorted(available)) or "none registered"
                raise ConfigError(f"{kind}.{name}", f"no {kind} component named {name!r} (choose one of: {choices})")

    async def close(self, timeout: float | None = None) -> CloseReport:
        """Stop cleanly: try to forward what remains (bounded), then report it."""
        if not self._opened:
            return CloseReport(
                self._summary.pending_count,
                dict(self._summary.amounts_by_currency),
                self._summary.needs_attention_count,
            )
        await self._acknowledge()
        self._opened = False
        if timeout is None:  # inspection terminals (background=False) never forward on their own
            timeout = self.config.get("forwarding", "close_timeout") if self._background else 0.0
        self._summary = await self.store.summary()  # another process may have stored payments meanwhile
        if timeout > 0 and self._summary.pending_count and self.network.status is not NetworkStatus.OFFLINE:
            await self._drain(timeout)
        waiting: tuple[WaitingPayment, ...] = ()
        # Every step runs even if an earlier one fails (a full or read-only disk, a reader gone): a close that
        # stopped half-way would leave the store and the connections open.  Failures are logged, not raised.
        summary = self._summary
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("forwarder", self.forwarder.stop),
            ("replication", self.replication.stop),
            ("network", self.network.stop),
            ("reader", self.disconnect_reader),
        ]
        if self._reader_transport is not None:
            steps.append(("reader_transport", self._reader_transport.close))
        steps.append(("transport", self.transport.close))

        async def final_summary() -> None:  # after the forwarder gave its claims back
            nonlocal summary, waiting
            summary = await self.store.summary()
            left = await self.store.list_payments(PENDING_STATES)
            waiting = tuple(WaitingPayment(p.offline_id, p.state, _why_waiting(p)) for p in left)

        steps += [("summary", final_summary), ("store", self.store.close)]
        for what, step in steps:
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - logged with its type; close must go on
                code = getattr(exc, "code", None)
                log.warning("close_step_failed", step=what, error_type=type(exc).__name__, code=code)
        report = CloseReport(
            summary.pending_count, dict(summary.amounts_by_currency), summary.needs_attention_count, waiting
        )
        for payment in waiting:
            log.info("payment_still_waiting", offline_id=payment.offline_id, reason=payment.reason)
        log.info("terminal_closed", remaining=report.remaining, needs_attention=report.needs_attention)
        return report

    # -- status and events ------------------------------------------------------

    @property
    def offline_status(self) -> OfflineStatus:
        """Counts and amounts waiting to be forwarded, and the network status."""
        s = self._summary
        return OfflineStatus(
            sdk=OfflineStatusDetails(
                network_status=self.network.status if hasattr(self, "network") else NetworkStatus.UNKNOWN,
                offline_payments_count=s.pending_count,
                offline_payment_amounts_by_currency=dict(s.amounts_by_currency),
                needs_attention_count=s.needs_attention_count,
                oldest_stored_at=s.oldest_stored_at,
            )
        )

    @property
    def network_status(self) -> NetworkStatus:
        """Whether the processor is reachable: ``UNKNOWN`` until the first answer or failed probe."""
        return self.network.status

    @property
    def last_seen_account(self) -> tuple[str, bool] | None:
        """``(account_id, livemode)`` of the processor account last authenticated with; ``None`` before that.

        Kept in the store, so it is known offline after a restart: payments stored offline are taken for it.
        """
        return self._account

    async def _refresh_status(self, emit: bool = True) -> OfflineStatus:
        summary = await self.store.summary()
        if emit:
            self._publish_status(summary)
        else:
            self._summary = summary
            self._last_status = self.offline_status
        return self.offline_status

    def _publish_status(self, summary: StoreSummary) -> None:
        self._summary = summary
        status = self.offline_status
        if status != self._last_status:
            self.plugins.emit("offline_status_changed", status=status)
        self._last_status = status

    def _schedule_status_refresh(self) -> None:
        asyncio.get_running_loop().create_task(self._refresh_status())

    def _network_changed(self, status: NetworkStatus, previous: NetworkStatus) -> None:
        self.plugins.emit("network_status_changed", status=status, previous=previous)
        if self._opened:
            self._schedule_status_refresh()
            if status is NetworkStatus.ONLINE:
                # Payments that failed while the network was down go now, whatever their backoff.
                self.forwarder.trigger(ignore_backoff=previous is NetworkStatus.OFFLINE)

    def _authenticated(self, session: ProcessorSession) -> None:
        account = (session.account_id, session.livemode)
        if account != self._account:
            self._account = account
            value = json.dumps({"account_id": session.account_id, "livemode": session.livemode})
            asyncio.get_running_loop().create_task(self.store.set_meta(_ACCOUNT_META, value))

    # -- readers ----------------------------------------------------------------

    async def discover_readers(self, timeout: float = 5.0) -> list[ReaderInfo]:
        """Readers the configured reader transport (``[reader] transport``) finds within ``timeout`` seconds."""
        if self._reader_transport is None:
            self._reader_transport = self._build("reader", self._reader_reg)
        return await self._reader_transport.discover(timeout)

    async def connect_reader(self, reader: ReaderInfo) -> ReaderInfo:
        """Connect; when the processor is reachable, remember this as an online connection."""
        if self._reader_transport is None:
            self._reader_transport = self._build("reader", self._reader_reg)
        if self._reader is not None:
            await self.disconnect_reader()
        self._reader = await self._reader_transport.connect(reader)
        self._reader.set_listener(self._reader_event)
        if self.network.status is NetworkStatus.UNKNOWN:
            await self.network.check()
        if self.network.status is NetworkStatus.ONLINE and await self._authenticate_quietly():
            # An online connection: authenticated, so the account is known and the
            # reader may later be used offline (Stripe's 30-day rule).
            connected_at, location = utcnow(), reader.location_id or self._location_id
            record = {
                "at": connected_at.isoformat(),
                "location_id": location,
                "reader_type": reader.reader_type,
            }
            await self.store.set_meta(_READER_META + reader.serial_number, json.dumps(record))
            self._reader_records[reader.serial_number] = (connected_at, location)
        self.plugins.emit("reader_connected", reader=self._reader.info)
        return self._reader.info

    async def _authenticate_quietly(self) -> bool:
        try:
            await self._session("reader_connection")
        except (OfftermError, OSError) as exc:
            log.warning("authentication_failed_at_connect", error_type=type(exc).__name__)
            return False
        return True

    def _reader_event(self, event: str, reader: ReaderInfo, attempt: int, reason: str) -> None:
        if event == "reconnecting":
            self.plugins.emit("reader_reconnecting", reader=reader, attempt=attempt)
        elif event == "reconnected":
            self.plugins.emit("reader_connected", reader=reader)
        elif event == "disconnected":
            self.plugins.emit("reader_disconnected", reader=reader, reason=reason or "link lost")

    async def disconnect_reader(self) -> None:
        """Close the reader connection, if any (event ``offterm_on_reader_disconnected``, reason "requested")."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.set_listener(None)
            await reader.close()
            self.plugins.emit("reader_disconnected", reader=reader.info, reason="requested")

    @property
    def connected_reader(self) -> ReaderConnection | None:
        """The open reader connection (a simulated one accepts test cards through it)."""
        return self._reader

    # -- payment intents ----------------------------------------------------------

    async def create_payment_intent(
        self,
        params: PaymentIntentParams | dict[str, Any],
        offline_behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
    ) -> PaymentIntent:
        """Create an intent.  Online it gets a processor id; offline ``id`` stays None."""
        await self._acknowledge()
        p = PaymentIntentParams.coerce(params)
        currency = normalize_currency(p.currency)
        amount = validate_amount(p.amount)
        behavior = OfflineBehavior(offline_behavior)
        intent = PaymentIntent(
            offline_id=new_offline_id(),
            amount=amount,
            currency=currency,
            capture_method=p.capture_method,
            metadata=dict(p.metadata),
            description=p.description,
            offline_behavior=behavior,
            created_at=utcnow(),
        )
        # The payment's one idempotency key, made now: the online create, the confirm and, if it falls
        # back offline, the forwarder all derive their keys from it (offterm.core.keys).
        pending = _Pending(idempotency_key="offterm-" + time_ordered_hex())
        if behavior is OfflineBehavior.FORCE_OFFLINE:
            self._require_offline_enabled(forced=True)
        elif behavior is OfflineBehavior.REQUIRE_ONLINE or self.network.status is not NetworkStatus.OFFLINE:
            try:
                intent.id = await self._with_timeout(behavior, self._create_online(intent, pending))
            except (TransientProcessorError, ConnectionTokenError, TimeoutError) as exc:
                if behavior is OfflineBehavior.REQUIRE_ONLINE:
                    raise RequireOnlineWhileOffline("the processor is unreachable and REQUIRE_ONLINE is set") from exc
                log.info("create_offline", offline_id=intent.offline_id, reason=type(exc).__name__)
        self._pending[intent.offline_id] = pending
        return intent

    @payment_scoped
    async def _create_online(self, intent: PaymentIntent, pending: _Pending) -> str:
        session = await self._session("online_payment")
        now = utcnow()
        # Noted before it goes out: if its answer is lost, the confirm replays it and learns the intent.
        pending.steps_sent[Step.CREATE] = (pending.steps_sent.get(Step.CREATE, (now, now))[0], now)
        try:
            made = await self.transport.create_intent(
                session, _intent_request(intent), idempotency_key=step_key(pending.idempotency_key, Step.CREATE)
            )
        except TransientProcessorError:
            self.network.record_failure()
            raise
        self.network.record_success()
        return made.id

    async def _session(self, reason: str) -> ProcessorSession:
        try:
            return await self.sessions.get(reason)
        except TransientProcessorError:
            self.network.record_failure()
            raise
        except ConnectionTokenError as exc:
            self.plugins.emit("forwarding_failure", error=exc)
            raise

    async def _with_timeout(self, behavior: OfflineBehavior, coro: Any) -> Any:
        if behavior is OfflineBehavior.REQUIRE_ONLINE:
            return await coro
        try:
            # asyncio.timeout, never wait_for: on Python 3.11 wait_for can swallow a cancel that lands as the
            # inner call finishes, and a task that was told to stop would go on (CONTRIBUTING.md).
            async with asyncio.timeout(self._offline_timeout):
                return await coro
        except TimeoutError:
            self.network.record_failure()
            raise

    def _pending_for(self, intent: PaymentIntent) -> _Pending:
        pending = self._pending.get(intent.offline_id)
        if pending is None:
            raise UnexpectedIntentState(f"intent {intent.offline_id} was not created by this terminal or is finished")
        return pending

    @payment_scoped
    async def collect_payment_method(self, intent: PaymentIntent, timeout: float = 60.0) -> PaymentIntent:
        """Read a card on the connected reader.  Offline rules on the card apply here when offline."""
        if intent.status is not IntentStatus.REQUIRES_PAYMENT_METHOD:
            raise UnexpectedIntentState(f"cannot collect: intent is {intent.status.value}")
        pending = self._pending_for(intent)
        if self._reader is None or not self._reader.is_connected:
            raise ReaderNotConnected("no reader is connected")
        card = await self._reader.collect(CollectRequest(intent.amount, intent.currency, timeout=timeout))
        going_offline = intent.offline_behavior is OfflineBehavior.FORCE_OFFLINE or (
            intent.offline_behavior is OfflineBehavior.PREFER_ONLINE and self.network.status is NetworkStatus.OFFLINE
        )
        if going_offline and self._offline_enabled:
            await self._check_acceptance(intent, card)
        pending.card = card
        intent.status = IntentStatus.REQUIRES_CONFIRMATION
        return intent

    @payment_scoped
    async def confirm_payment_intent(
        self, intent: PaymentIntent, offline_behavior: OfflineBehavior | None = None
    ) -> PaymentIntent:
        """Authorise online, or store durably offline; returns only when one of them is done."""
        await self._acknowledge()
        if intent.status is not IntentStatus.REQUIRES_CONFIRMATION:
            raise UnexpectedIntentState(f"cannot confirm: intent is {intent.status.value}")
        pending = self._pending_for(intent)
        assert pending.card is not None
        behavior = OfflineBehavior(offline_behavior) if offline_behavior else intent.offline_behavior
        intent.offline_behavior = behavior
        if behavior is OfflineBehavior.FORCE_OFFLINE:
            self._require_offline_enabled(forced=True)
            return await self._store_offline(intent, pending)
        if behavior is OfflineBehavior.PREFER_ONLINE and self.network.status is NetworkStatus.OFFLINE:
            if self._offline_enabled:
                return await self._store_offline(intent, pending)
        try:
            confirmed: PaymentIntent = await self._with_timeout(behavior, self._confirm_online(intent, pending))
            return confirmed
        except CardDeclined:
            # Stripe's flow: collect another card and confirm again.  That is a new confirmation, so the
            # payment and confirm steps get a fresh key (the intent, if any, stays).
            self._answered[intent.offline_id] = None
            pending.card = None
            pending.idempotency_key = "offterm-" + time_ordered_hex()
            pending.steps_sent = {}
            intent.status = IntentStatus.REQUIRES_PAYMENT_METHOD
            raise
        except (TransientProcessorError, ConnectionTokenError, AuthenticationFailed, TimeoutError) as exc:
            # OutcomeUnknown: the confirm reached the processor and the answer was lost; a timeout may have
            # cut a request in flight.  The card may be charged: the app must never hear "unreachable" or
            # "refused" then, only "unknown, confirm again" (same key, so no second charge).
            maybe_charged = isinstance(exc, OutcomeUnknown | TimeoutError)
            if behavior is OfflineBehavior.REQUIRE_ONLINE:
                if maybe_charged:
                    raise _unknown_outcome(exc) from exc
                raise RequireOnlineWhileOffline("the processor is unreachable and REQUIRE_ONLINE is set") from exc
            if isinstance(exc, AuthenticationFailed):
                self.sessions.invalidate()
            try:
                self._require_offline_enabled(forced=False)
                log.info("confirm_fell_back_offline", offline_id=intent.offline_id, reason=type(exc).__name__)
                # Stored with the key the online attempt used: forwarding it cannot charge twice.
                return await self._store_offline(intent, pending)
            except OfftermError as refused:
                if maybe_charged:
                    raise _unknown_outcome(exc) from refused
                raise

    async def _confirm_online(self, intent: PaymentIntent, pending: _Pending) -> PaymentIntent:
        """The same exchange as the forwarder's, journaled: a crash mid-confirm is reconciled at the next open."""
        assert pending.card is not None
        session = await self._session("online_payment")
        view = PaymentView(
            offline_id=intent.offline_id,
            key=pending.idempotency_key,
            request=_intent_request(intent),
            card=pending.card,
            intent_id=intent.id,
            steps_sent=pending.steps_sent,  # the same dict: a second confirm resends under the same keys
        )
        try:
            result = await self._exchange.run(session, view, _JournalLedger(self, intent, pending))
        except TransientProcessorError as exc:
            if exc.http_status is None:
                self.network.record_failure()
            raise
        intent.id = view.intent_id
        self.network.record_success()
        if result.outcome is Outcome.PENDING:  # processing and still not final: the journal keeps it
            raise OutcomeUnknown(
                f"the processor has not finished the payment ({result.code}); call confirm_payment_intent again"
            )
        self._answered[intent.offline_id] = None
        if result.outcome is Outcome.DECLINED:
            raise CardDeclined(result.message or "the card was declined", decline_code=result.code)
        if result.outcome is Outcome.NEEDS_ATTENTION:
            self._pending.pop(intent.offline_id, None)
            raise PermanentProcessorError(result.message or "the payment cannot be completed", code=result.code)
        assert result.intent is not None
        intent.status = IntentStatus(result.intent.status)
        self._pending.pop(intent.offline_id, None)
        return intent

    async def _acknowledge(self) -> None:
        """The app called again, so it received every answer returned so far: their journal entries go.

        Not before: a process killed between removing an entry and the confirm's return would leave a
        charge nobody knows of.  Kept until the app's next call (or ``close()``), an entry whose process
        died is reconciled at the next open and announced (once more, at worst: never not at all).
        """
        while self._answered:
            offline_id = next(iter(self._answered))
            await self._end_journal(offline_id)
            self._answered.pop(offline_id, None)

    async def _end_journal(self, offline_id: str) -> None:
        """The processor answered: the journal entry goes.  Failing to remove it never fails the payment:
        the entry stays, and recovery later reports what the processor says (nothing is charged again)."""
        try:
            await self.store.end_online(offline_id)
        except OfftermError as exc:
            log.warning("journal_entry_not_removed", offline_id=offline_id, code=exc.code)

    def _require_offline_enabled(self, forced: bool) -> None:
        if not self._offline_enabled:
            if forced:
                raise OfflineModeDisabled("FORCE_OFFLINE needs [terminal] offline_enabled = true")
            raise RequireOnlineWhileOffline(
                "the processor is unreachable and offline payments are disabled ([terminal] offline_enabled)"
            )

    async def _reader_record(self, reader: ReaderInfo | None) -> tuple[datetime | None, str | None]:
        """When and where this reader last connected online (cached; the store keeps it across reboots)."""
        if reader is None:
            return None, None
        if reader.serial_number not in self._reader_records:
            raw = await self.store.get_meta(_READER_META + reader.serial_number)
            data = json.loads(raw) if raw else None
            self._reader_records[reader.serial_number] = (
                (datetime.fromisoformat(data["at"]), data.get("location_id")) if data else (None, None)
            )
        return self._reader_records[reader.serial_number]

    async def _acceptance_request(self, intent: PaymentIntent, card: CardResult | None) -> AcceptanceRequest:
        """Everything but a fresh store summary, which the caller adds."""
        reader = self._reader.info if self._reader else None
        last_at, last_location = await self._reader_record(reader)
        return AcceptanceRequest(
            amount=intent.amount,
            currency=intent.currency,
            card=card.details if card else None,
            summary=self._summary,
            now=utcnow(),
            merchant_country=self._merchant_country,
            reader=reader,
            reader_last_online_at=last_at,
            reader_last_online_location=last_location,
            location_id=self._location_id or (reader.location_id if reader else None),
            fleet=self.replication.fleet_snapshot(),  # the other lanes, for store-wide limits (docs/fleet.md)
        )

    def _evaluate(self, intent: PaymentIntent, request: AcceptanceRequest) -> None:
        """Ask every acceptance policy; any refusal rejects (reported in policy-name order)."""
        refusals: list[OfflineRefused] = []
        for name, policy in self._acceptance:
            refusal = policy.evaluate(request)
            if refusal is not None:
                refusal.policy = refusal.policy or name
                refusals.append(refusal)
        if refusals:
            first = refusals[0]
            first.details["all_refusals"] = [(r.policy, r.code) for r in refusals]
            log.info("offline_refused", offline_id=intent.offline_id, code=first.code, policy=first.policy)
            raise first

    async def _check_acceptance(self, intent: PaymentIntent, card: CardResult | None) -> None:
        request = await self._acceptance_request(intent, card)
        self._evaluate(intent, replace(request, summary=await self.store.summary()))

    async def _store_offline(self, intent: PaymentIntent, pending: _Pending) -> PaymentIntent:
        assert pending.card is not None
        if self._account is None:
            raise NoLastSeenAccount("this terminal has never authenticated online, so it cannot store payments yet")
        account_id, livemode = self._account
        request = await self._acceptance_request(intent, pending.card)
        payment = NewPayment(
            offline_id=intent.offline_id,
            idempotency_key=pending.idempotency_key,
            amount=intent.amount,
            currency=intent.currency,
            capture_method=intent.capture_method,
            metadata=dict(intent.metadata),
            account_id=account_id,
            livemode=livemode,
            stored_at=utcnow(),
            card=pending.card,
            intent_id=intent.id,
            description=intent.description,
            steps_sent=dict(pending.steps_sent),  # what the online attempt sent: the forwarder replays, never repeats
        )

        seen: list[StoreSummary] = []

        def check(summary: StoreSummary) -> None:
            # Inside the store's write transaction: the limits see the store as it is at the moment of
            # the insert, and no other confirm, of this process or another, can slip in between.
            seen.append(summary)
            self._evaluate(intent, replace(request, summary=summary, now=utcnow()))

        stored = await self.store.store(payment, check)
        before = seen[0] if seen else await self.store.summary()  # empty: it was already stored
        # Durable from here on: the forwarder owns it now, so an online attempt's journal entry goes.
        if pending.steps_sent:
            await self._end_journal(intent.offline_id)
        # sync mode: the hub's commit too, at most [hub] sync_timeout
        reached_hub = await self.replication.stored(stored)
        self._pending.pop(intent.offline_id, None)
        result = intent_from_stored(stored)
        intent.status = result.status
        intent.offline_details = OfflineDetails(
            stored_at=stored.stored_at,
            requires_upload=True,
            card_present_details=card_present_details(pending.card.details),
            replicated_to_hub=reached_hub if self.replication.enabled else None,
        )
        log.info("payment_stored", offline_id=intent.offline_id, amount=intent.amount, currency=intent.currency)
        self.plugins.emit("payment_stored", intent=replace(intent))
        self._publish_status(_plus(before, stored))
        if self.network.status is not NetworkStatus.OFFLINE:
            self.forwarder.trigger()
        return intent

    @payment_scoped
    async def cancel_payment_intent(self, intent: PaymentIntent) -> PaymentIntent:
        """Cancel an intent that has not been confirmed (stored payments cannot be)."""
        await self._acknowledge()
        if intent.requires_upload or intent.status in (IntentStatus.SUCCEEDED, IntentStatus.CANCELED):
            raise UnexpectedIntentState(f"cannot cancel: intent is {intent.status.value}")
        self._pending.pop(intent.offline_id, None)
        if self._reader is not None:
            await self._reader.cancel_collect()
        if intent.id is not None:
            try:
                session = await self._session("online_payment")
                await self.transport.cancel_intent(session, intent.id)
            except ProcessorError as exc:
                log.warning("cancel_online_failed", offline_id=intent.offline_id, code=exc.code)
        intent.status = IntentStatus.CANCELED
        return intent

    # -- stored payments ------------------------------------------------------------

    async def forward_now(self, timeout: float = 30.0) -> int:
        """Forward everything waiting, whatever its retry backoff, for up to ``timeout`` seconds.

        Keeps trying for the whole time while the processor answers (a payment that failed
        is tried again at once, then after a short pause); stops early once nothing waits
        or the processor cannot be reached.  Returns how many payments still wait
        (``list_stored_payments`` says why: each one's state and last error).
        """
        if self.network.status is not NetworkStatus.ONLINE:
            await self.network.check()
        await self._drain(timeout)
        status = await self._refresh_status()
        return status.sdk.offline_payments_count

    async def _drain(self, budget: float) -> None:
        """Rounds back to back for up to ``budget`` seconds, ignoring retry backoff, while the processor answers."""
        pause = 0.05
        try:
            async with asyncio.timeout(budget):
                while True:
                    await self.forwarder.run_round(ignore_backoff=True)
                    if not (await self.store.summary()).pending_count:
                        return
                    if self.forwarder.last_round_failure is not None:
                        return  # no session (token provider, authentication): reported once, retried later
                    if self.network.status is NetworkStatus.OFFLINE:
                        log.info("forwarding_stopped_offline")
                        return
                    await asyncio.sleep(pause)  # a payment failed again: a short pause, then the next round
                    pause = min(pause * 2, 1.0)
        except TimeoutError:
            log.info("forwarding_time_up", timeout=budget)
        except OfftermError as exc:
            log.warning("forwarding_incomplete", error_type=type(exc).__name__, code=exc.code)

    async def list_stored_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        """Payments in the store, oldest first: each with its state, attempts and last error.

        :param states: only payments in these states; None for all.
        :param limit: at most this many; None for all.
        """
        return await self.store.list_payments(states, limit)

    async def payment_history(self, offline_id: str) -> list[HistoryEntry]:
        """Every state change of one stored payment, oldest first (append-only).

        :raises PaymentNotFound: no such payment.
        """
        return await self.store.history(offline_id)

    async def recovered_payments(self) -> list[OnlineAttempt]:
        """Online confirms a crash interrupted, as reconciled with the processor (oldest first).

        Each has ``resolution`` "charged" (the processor has the money: do not take the card
        again), "declined" or "not_charged" (its intent was canceled so nothing can charge it
        later), and the intent id when there was one.  Each was also announced once through
        ``offterm_on_online_payment_recovered``.
        """
        return await self.store.online_attempts(resolved=True)

    async def refresh_offline_status(self) -> OfflineStatus:
        """Re-read the counts from the store (another process may share it) and return them.

        Emits ``offterm_on_offline_status_changed`` when they changed.
        """
        return await self._refresh_status()


def _intent_request(intent: PaymentIntent) -> IntentRequest:
    """What creating the intent asks the processor: the same bytes online and from the store."""
    return IntentRequest(
        offline_id=intent.offline_id,
        amount=intent.amount,
        currency=intent.currency,
        capture_method=intent.capture_method,
        metadata=dict(intent.metadata),
        description=intent.description,
    )


def _unknown_outcome(cause: BaseException) -> OutcomeUnknown:
    return OutcomeUnknown(
        "the confirm may have reached the processor but no answer came back "
        f"({type(cause).__name__}); call confirm_payment_intent again: it reuses the same idempotency key"
    )


def _plus(summary: StoreSummary, payment: StoredPayment) -> StoreSummary:
    """The summary after adding one stored payment (saves a query per confirm)."""
    amounts = dict(summary.amounts_by_currency)
    amounts[payment.currency] = amounts.get(payment.currency, 0) + payment.amount
    oldest = min(summary.oldest_stored_at or payment.stored_at, payment.stored_at)
    return StoreSummary(summary.pending_count + 1, amounts, oldest, summary.needs_attention_count)
