"""The hub forwarder: takes over a silent lane's replicated payments and forwards each exactly once.

Lanes forward their own payments.  A lane whose last heartbeat is older than ``[hub]
lane_silent_after`` (a device lost, broken, or cut off from the hub) has its waiting payments taken
over here (``offterm hub forward``): leased on the hub (``HubQueue``: ``FOR UPDATE SKIP LOCKED``, so
several hub forwarders split the work), and sent through the very ``Exchange`` a lane uses, with
a ledger on the hub's lease rows instead of the lane's store.

Why it cannot charge twice, even against a lane still reaching the processor: the payment is
sent under the idempotency key the lane stored, with the steps either side last recorded (the hub
merges its own ledger with the lane's replicated view), at the key generation both compute from the
payment's stored time (``offterm.core._engine.exchange``), so the processor replays the lane's
requests instead of making a second intent, and each looks the payment up before its first request
in a new generation.  Every step is durable on the hub before it is
sent.  The outcome is written on the hub row (``hub_state``), where the lane reads it back
(``Replicator.outcomes``) and records it in its own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from ..config import Config
from ..contracts import ForwardingPolicy, ForwardingTransport, ProcessorSession, StoredPayment
from ..contracts.replication import HubClaim, HubError, HubLeaseLost, HubQueue, Replicator
from ..contracts.storage import StorageKeyProvider
from ..errors import (
    AuthenticationFailed,
    CardDeclined,
    ConfigError,
    OfftermError,
    PermanentProcessorError,
    ProcessorError,
    StorageKeyUnavailable,
    TransientProcessorError,
)
from ..manager import PluginManager
from ..registrations import ComponentContext, Registration
from .exchange import Exchange, ExchangeSettings, Outcome, PaymentView, Result
from .forwarder import utcnow
from .keys import Step
from .owners import make_owner
from .replication import HUB_KEY_ID
from .session import SessionManager

log = structlog.get_logger("offterm.hub.forwarder")

T = TypeVar("T")


@dataclass(frozen=True)
class HubForwardingSettings:
    #: a lane whose last heartbeat is older than this many seconds is silent: its payments are taken over
    lane_silent_after: float
    lease_seconds: float
    batch_size: int
    interval: float
    exchange: ExchangeSettings = ExchangeSettings()


@dataclass
class HubRound:
    """What one pass did (``offterm hub forward --once --json``)."""

    taken: int = 0
    forwarded: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    needs_attention: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    failure: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken": self.taken,
            "forwarded": len(self.forwarded),
            "declined": len(self.declined),
            "needs_attention": len(self.needs_attention),
            "retrying": len(self.retrying),
            "lease_lost": len(self.lost),
            "failure": self.failure,
        }


class _HubLedger:
    """The exchange's ledger for a payment the hub forwarder leased: the hub row, under the lease."""

    def __init__(self, forwarder: HubForwarder, view: PaymentView) -> None:
        self._fwd = forwarder
        self._view = view

    async def _save(
        self,
        now: datetime,
        *,
        generation: int,
        steps: dict[str, tuple[datetime, datetime]],
        intent: str | None,
        attempt: bool,
    ) -> None:
        await self._fwd._call(
            functools.partial(
                self._fwd.queue.save_ledger,
                self._view.offline_id,
                self._fwd.owner,
                now,
                key_generation=generation,
                steps_sent=steps,
                intent_id=intent,
                attempt=attempt,
                lease_seconds=self._fwd.settings.lease_seconds,
            )
        )

    async def sending(self, steps: Collection[Step], now: datetime) -> None:
        sent = dict(self._view.steps_sent)
        for step in steps:
            sent[step] = (sent.get(step, (now, now))[0], now)
        await self._save(now, generation=self._view.generation, steps=sent, intent=self._view.intent_id, attempt=True)

    async def intent_known(self, intent_id: str, now: datetime) -> None:
        view = self._view
        await self._save(now, generation=view.generation, steps=dict(view.steps_sent), intent=intent_id, attempt=False)

    async def new_generation(self, intent_id: str | None, now: datetime, generation: int) -> None:
        await self._save(now, generation=generation, steps={}, intent=intent_id, attempt=False)


class HubForwarder:
    """Leases silent lanes' payments on the hub and forwards them (see the module docstring)."""

    def __init__(
        self,
        queue: HubQueue,
        keys: StorageKeyProvider,
        transport: ForwardingTransport,
        sessions: SessionManager,
        policy: ForwardingPolicy,
        settings: HubForwardingSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self._keys = keys
        self._transport = transport
        self._sessions = sessions
        self._policy = policy
        self._clock = clock
        self.owner = make_owner("hub")
        self._exchange = Exchange(transport, settings.exchange, clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offterm-hub-forwarder")
        self._open = False

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        key = self._keys.get_key(HUB_KEY_ID, create=False)
        if key is None:
            raise StorageKeyUnavailable("the hub key provider ([hub] key_provider) has no hub key")
        await self._call(functools.partial(self.queue.open, key))
        await self._transport.open()
        self._open = True

    async def close(self) -> None:
        try:
            if self._open:
                with contextlib.suppress(HubError):
                    await self._call(functools.partial(self.queue.release, self.owner))
                await self._call(self.queue.close)
                await self._transport.close()
        finally:
            self._open = False
            self._executor.shutdown(wait=True)

    async def run_once(self) -> HubRound:
        """One pass: take over every due payment of every silent lane, a batch at a time."""
        report = HubRound()
        session: ProcessorSession | None = None
        seen: set[str] = set()
        while True:
            now = self._clock()
            silent_before = now - timedelta(seconds=self.settings.lane_silent_after)
            claims = await self._call(
                functools.partial(
                    self.queue.take_over,
                    self.owner,
                    self.settings.batch_size,
                    self.settings.lease_seconds,
                    silent_before,
                    now,
                )
            )
            claims = [c for c in claims if c.payment.offline_id not in seen]
            if not claims:
                return report
            report.taken += len(claims)
            if session is None:
                try:
                    session = await self._sessions.get("hub_forwarding")
                except Exception as exc:  # a token provider or the processor: give the leases back untouched
                    report.failure = getattr(exc, "code", type(exc).__name__)
                    log.warning("hub_forwarding_failure", code=report.failure)
                    await self._call(functools.partial(self.queue.release, self.owner))
                    return report
            for claim in claims:
                seen.add(claim.payment.offline_id)
                try:
                    session = await self._forward_one(claim, session, report)
                except AuthenticationFailed as exc:
                    report.failure = exc.code
                    await self._call(functools.partial(self.queue.release, self.owner))
                    return report

    async def run_forever(self) -> None:
        """``offterm hub forward`` as a service: a pass every ``interval`` seconds until cancelled."""
        while True:
            try:
                report = await self.run_once()
                if report.taken:
                    log.info("hub_forwarding_round", **report.as_dict())
            except OfftermError as exc:
                log.warning("hub_forwarding_round_failed", code=exc.code)
            await asyncio.sleep(self.settings.interval)

    # -- one payment ------------------------------------------------------------------

    def _refusal(self, payment: StoredPayment, session: ProcessorSession) -> OfftermError | None:
        if payment.account_id != session.account_id or payment.livemode != session.livemode:
            return PermanentProcessorError(
                f"payment was stored for account {payment.account_id} but the hub forwarder's session is for "
                f"{session.account_id}; kept, not forwarded",
                code="account_id_mismatch_while_forwarding",
            )
        reason = self._policy.give_up_reason(payment, self._clock())
        if reason:
            return PermanentProcessorError(reason, code="forwarding_gave_up")
        if payment.card is None:
            return PermanentProcessorError("the replicated card data is unavailable", code="card_data_unavailable")
        return None

    async def _forward_one(self, claim: HubClaim, session: ProcessorSession, report: HubRound) -> ProcessorSession:
        payment = claim.payment
        refusal = self._refusal(payment, session)
        if refusal is not None:
            await self._decide(claim, "needs_attention", report.needs_attention, None, refusal.code)
            return session
        view = PaymentView.of(payment)
        ledger = _HubLedger(self, view)
        renewed = False
        while True:
            try:
                result = await self._exchange.run(session, view, ledger)
            except HubLeaseLost:
                log.warning("hub_lease_lost", offline_id=payment.offline_id, lane=claim.lane)
                report.lost.append(payment.offline_id)
                return session
            except AuthenticationFailed:
                if renewed:
                    raise
                renewed = True
                self._sessions.invalidate(session)
                session = await self._sessions.get("hub_forwarding")
                continue
            except CardDeclined as exc:
                await self._decide(claim, "declined", report.declined, view.intent_id, exc.decline_code or exc.code)
                return session
            except TransientProcessorError as exc:
                await self._retry(claim, report, exc.code, None)
                return session
            except (PermanentProcessorError, ProcessorError) as exc:
                await self._decide(claim, "needs_attention", report.needs_attention, view.intent_id, exc.code)
                return session
            await self._settled(claim, view, result, report)
            return session

    async def _settled(self, claim: HubClaim, view: PaymentView, result: Result, report: HubRound) -> None:
        if result.outcome is Outcome.FORWARDED:
            await self._decide(claim, "forwarded", report.forwarded, result.intent_id, None)
        elif result.outcome is Outcome.DECLINED:
            await self._decide(claim, "declined", report.declined, result.intent_id, result.code)
        elif result.outcome is Outcome.NEEDS_ATTENTION:
            await self._decide(claim, "needs_attention", report.needs_attention, view.intent_id, result.code)
        else:
            await self._retry(claim, report, result.code, result.retry_in)

    async def _decide(
        self, claim: HubClaim, state: str, into: list[str], intent_id: str | None, code: str | None
    ) -> None:
        offline_id = claim.payment.offline_id
        done = await self._call(
            functools.partial(
                self.queue.decide, offline_id, self.owner, state, self._clock(), intent_id=intent_id, error_code=code
            )
        )
        if done:
            into.append(offline_id)
            log.info("hub_payment_decided", offline_id=offline_id, lane=claim.lane, state=state, code=code)
        else:
            log.warning("hub_lease_lost", offline_id=offline_id, lane=claim.lane)

    async def _retry(self, claim: HubClaim, report: HubRound, code: str | None, delay: float | None) -> None:
        if delay is None:
            delay = self._policy.retry_delay(max(1, claim.payment.attempts + 1))
        not_before = self._clock() + timedelta(seconds=delay)
        offline_id = claim.payment.offline_id
        await self._call(functools.partial(self.queue.retry_later, offline_id, self.owner, not_before, code))
        report.retrying.append(offline_id)
        log.info("hub_forward_retry_scheduled", offline_id=offline_id, code=code, delay=round(delay, 3))


def build_hub_forwarder(config: Config, plugins: PluginManager) -> HubForwarder:
    """The hub forwarder of ``offterm hub forward``: the replicator's queue, the lane's transport and tokens.

    ``[replicator.<name>] url`` is the hub forwarder's role (a member of ``offterm_forwarder``).
    """
    from ..registrations import ReplicatorRegistration

    sections = config.sections
    hub = sections.get("hub") or {}
    name = hub.get("replicator") or ""
    if not name:
        raise ConfigError("hub.replicator", "is required to forward from the hub (the hub's replicator component)")

    def build(kind: str, registration: Registration[Any]) -> Any:
        options = config.component(kind, registration)
        return registration.factory(ComponentContext(registration.name, options, config.data_dir))

    replicator = build("replicator", plugins._select("offterm_replicators", ReplicatorRegistration, name))
    if not isinstance(replicator, Replicator):
        raise ConfigError("hub.replicator", f"component {name!r} built a {type(replicator).__name__}, not a Replicator")
    try:
        queue = replicator.hub_queue()
    except HubError as exc:
        raise ConfigError("hub.replicator", str(exc), name) from None
    keys = build("storage_key", plugins.storage_key_provider(hub["key_provider"]))
    fwd = sections["forwarding"]
    transport = build("forwarding", plugins.forwarding_transport(fwd["transport"]))
    providers = [(n, build("tokens", plugins.token_provider(n))) for n in sections["tokens"]["providers"]]
    sessions = SessionManager(providers, transport, sections["terminal"]["location_id"], lambda _session: None)
    policy = build("forwarding_policy", plugins.forwarding_policy(fwd["policy"]))
    settings = HubForwardingSettings(
        lane_silent_after=float(hub["lane_silent_after"]),
        lease_seconds=float(fwd["lease_seconds"]),
        batch_size=int(fwd["batch_size"]),
        interval=float(hub["forward_interval"]),
        exchange=ExchangeSettings(
            idempotency_window=float(fwd["idempotency_window"]),
            processing_checks=fwd["processing_checks"],
            processing_interval=float(fwd["processing_interval"]),
        ),
    )
    return HubForwarder(queue, keys, transport, sessions, policy, settings)
