"""Helpers for the forwarding tests (also imported by forwarding_worker.py in child processes).

Everything is real: a SQLCipher store in a temporary directory, the
processor simulator on loopback, the Stripe transport.  The plugins here only
*observe* (or, where a test says so, hold back one named payment); they
delegate every request to the bundled Stripe transport and token provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from offterm.core import hookimpl
from offterm.core.contracts import (
    CardResult,
    ConnectionToken,
    ConnectionTokenProvider,
    ForwardingPolicy,
    ForwardingTransport,
    NewPayment,
    PaymentState,
    ProcessorSession,
    StoredPayment,
    TokenRequest,
)
from offterm.core.contracts.forwarding import IntentRequest, IntentSnapshot
from offterm.core.models import CaptureMethod, new_offline_id
from offterm.core.registrations import (
    ComponentContext,
    ForwardingPolicyRegistration,
    ForwardingTransportRegistration,
    OptionSpec,
    TokenProviderRegistration,
)
from offterm.plugins.policies import backoff
from offterm.plugins.storage.sqlcipher import new_idempotency_key
from offterm.plugins.transport import stripe
from offterm.plugins.transport.tokens import HttpTokenProvider
from offterm.sim.processor.testing import card_result
from offterm.testing import HookRecorder, make_plugin_manager, open_store, terminal_config

HERE = Path(__file__).parent
WORKER = HERE / "forwarding_worker.py"

APPROVED = "4242424242424242"
DECLINED = "4000000000000002"  # card_declined / generic_decline
INSUFFICIENT = "4000000000009995"  # card_declined / insufficient_funds
SIM_ACCOUNT = "acct_1SimulatedOfftrm"


@cache
def card(pan: str = APPROVED) -> CardResult:
    """A sealed test card (sealed once per number: the simulator decrypts each use)."""
    return card_result(pan)


def new_payment(
    i: int = 0,
    *,
    pan: str = APPROVED,
    account_id: str = SIM_ACCOUNT,
    livemode: bool = False,
    stored_at: datetime | None = None,
    metadata: dict[str, str] | None = None,
    card_override: CardResult | None = None,
) -> NewPayment:
    return NewPayment(
        offline_id=new_offline_id(),
        idempotency_key=new_idempotency_key(),
        amount=100 + i,
        currency="usd",
        capture_method=CaptureMethod.AUTOMATIC,
        metadata=metadata if metadata is not None else {"order": f"order-{i}"},
        account_id=account_id,
        livemode=livemode,
        stored_at=stored_at or datetime.now(UTC) - timedelta(seconds=10) + timedelta(microseconds=i),
        card=card_override or card(pan),
    )


def populate(data_dir: Path, payments: Iterable[NewPayment]) -> list[str]:
    """Store payments the way the Terminal's store holds them (same backend, same key file)."""
    store = open_store(make_plugin_manager(), data_dir)
    try:
        return [store.store(p).offline_id for p in payments]
    finally:
        store.close()


def read_store(data_dir: Path) -> dict[str, StoredPayment]:
    store = open_store(make_plugin_manager(), data_dir)
    try:
        return {p.offline_id: p for p in store.list_payments()}
    finally:
        store.close()


def config(
    data_dir: Path,
    url: str,
    *,
    terminal: dict[str, Any] | None = None,
    forwarding: dict[str, Any] | None = None,
    stripe_options: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    tokens: dict[str, Any] | None = None,
    transport: str = "stripe",
    sqlcipher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Terminal config against ``url`` (the simulator, or a FaultProxy in front of it), tuned for speed.

    ``sqlcipher``: options of the store.
    """
    target = SimpleNamespace(url=url, backend_url=url + "/backend/connection_token")
    base = terminal_config(target, data_dir)
    base["terminal"].update({"offline_timeout": 2.0, "probe_min_interval": 0.02, "probe_max_interval": 0.2})
    base["terminal"].update(terminal or {})
    wire = {"api_base": url, "timeout": 2.0, "connect_timeout": 1.0, "probe_timeout": 1.0}
    wire.update(stripe_options or {})
    fwd: dict[str, Any] = {
        "transport": transport,
        "interval": 30.0,
        "concurrency": 4,
        "rate_limit": 3000.0,
        "batch_size": 20,
        "close_timeout": 5.0,
        transport: wire,
    }
    fwd.update(forwarding or {})
    base["forwarding"] = fwd
    base["forwarding_policy"] = {"default": {"base_delay": 0.02, "max_delay": 0.2, "seed": 7, **(policy or {})}}
    base["acceptance"] = {"limits": {"max_amount": {"usd": 10_000_000}, "max_count": 100_000}}
    if tokens is not None:
        base["tokens"] = tokens
    if sqlcipher:
        base["storage"]["sqlcipher"] = dict(sqlcipher)
    return base


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'condition'}")
        await asyncio.sleep(0.02)


def forwarded_events(recorder: HookRecorder) -> dict[str, list[Any]]:
    """payment_intent_forwarded calls per offline_id."""
    out: dict[str, list[Any]] = {}
    for call in recorder.getcalls("payment_intent_forwarded"):
        out.setdefault(call.intent.offline_id, []).append(call)
    return out


def check_exactly_once(
    sim: Any, payments: dict[str, StoredPayment], online: Iterable[str] = ()
) -> dict[PaymentState, int]:
    """Every payment forwarded once, declined with a decline_code, or needing attention with a reason.

    Checked on the simulator's ledger: forwarded = exactly one successful
    charge; declined = none; needs_attention = at most one (a person looks).
    ``online`` payments (never stored) must have exactly one charge each.
    """
    counts = sim.successful_charges()
    states: dict[PaymentState, int] = {}
    for oid, p in payments.items():
        states[p.state] = states.get(p.state, 0) + 1
        if p.state is PaymentState.FORWARDED:
            assert counts.get(oid) == 1, f"{oid} forwarded but charged {counts.get(oid, 0)} times"
            assert p.intent_id and p.intent_id.startswith("pi_")
        elif p.state is PaymentState.DECLINED:
            assert counts.get(oid, 0) == 0, f"{oid} declined but charged"
            assert p.decline_code, f"{oid} declined without a decline_code"
        elif p.state is PaymentState.NEEDS_ATTENTION:
            assert counts.get(oid, 0) <= 1
            assert p.last_error_code and p.last_error_message, f"{oid} needs attention without a reason"
        else:
            raise AssertionError(f"{oid} left in non-final state {p.state.value}")
    for oid in online:
        assert counts.get(oid) == 1, f"online payment {oid} charged {counts.get(oid, 0)} times"
    unknown = set(counts) - set(payments) - set(online)
    assert not unknown, f"charges for payments that were never stored: {sorted(unknown)[:3]}"
    return states


# -- observing plugins --------------------------------------------------------------------------


@dataclass
class SubmitCall:
    at: float
    offline_id: str
    idempotency_key: str


@dataclass(frozen=True)
class Confirming:
    """What a ``hold`` hook is told: which payment is about to be confirmed, under which key."""

    offline_id: str
    idempotency_key: str


class ObservedTransport(ForwardingTransport):
    """The bundled Stripe transport, watched: in-flight confirmations, their keys, sessions.

    A payment's confirmation is its create-and-confirm request, or the
    confirm of an intent it already has.  ``hold`` maps an offline_id to an
    async callable run before that request (a test uses it to hang or fail
    one named payment).
    """

    def __init__(self, inner: ForwardingTransport) -> None:
        self.inner = inner
        self.search_delay = inner.search_delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[SubmitCall] = []
        self.session_secrets: list[str] = []
        self.hold: dict[str, Callable[[Confirming], Awaitable[None]]] = {}
        self.offline_ids: dict[str, str] = {}  # intent id -> offline id, as learned from answers

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def authenticate(self, token: ConnectionToken) -> ProcessorSession:
        session = await self.inner.authenticate(token)
        self.session_secrets.append(session.secret)
        return session

    def _learn(self, intent: IntentSnapshot | None) -> IntentSnapshot | None:
        if intent is not None and intent.offline_id:
            self.offline_ids[intent.id] = intent.offline_id
        return intent

    async def _confirming(
        self, offline_id: str, key: str, send: Callable[[], Awaitable[IntentSnapshot]]
    ) -> IntentSnapshot:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.calls.append(SubmitCall(asyncio.get_running_loop().time(), offline_id, key))
        try:
            hook = self.hold.get(offline_id)
            if hook is not None:
                await hook(Confirming(offline_id, key))
            answer = await send()
            self._learn(answer)
            return answer
        finally:
            self.in_flight -= 1

    async def create_intent(
        self,
        session: ProcessorSession,
        request: IntentRequest,
        *,
        idempotency_key: str,
        payment_method: str | None = None,
    ) -> IntentSnapshot:
        async def send() -> IntentSnapshot:
            return await self.inner.create_intent(
                session, request, idempotency_key=idempotency_key, payment_method=payment_method
            )

        if payment_method is None:
            made = await send()
            self._learn(made)
            return made
        return await self._confirming(request.offline_id, idempotency_key, send)

    async def create_payment_method(
        self, session: ProcessorSession, card: CardResult, *, idempotency_key: str, stored_at: datetime | None = None
    ) -> str:
        return await self.inner.create_payment_method(
            session, card, idempotency_key=idempotency_key, stored_at=stored_at
        )

    async def confirm_intent(
        self, session: ProcessorSession, intent_id: str, *, payment_method: str, idempotency_key: str
    ) -> IntentSnapshot:
        async def send() -> IntentSnapshot:
            return await self.inner.confirm_intent(
                session, intent_id, payment_method=payment_method, idempotency_key=idempotency_key
            )

        return await self._confirming(self.offline_ids.get(intent_id, intent_id), idempotency_key, send)

    async def retrieve_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        found = await self.inner.retrieve_intent(session, intent_id)
        self._learn(found)
        return found

    async def find_intent(self, session: ProcessorSession, offline_id: str) -> IntentSnapshot | None:
        return self._learn(await self.inner.find_intent(session, offline_id))

    async def cancel_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        return await self.inner.cancel_intent(session, intent_id)

    async def probe(self) -> bool:
        return await self.inner.probe()


class RecordingTokenProvider(ConnectionTokenProvider):
    """The bundled HTTP provider, remembering which secrets it handed out (to prove none is kept)."""

    def __init__(self, url: str) -> None:
        self.inner = HttpTokenProvider(url, timeout=2.0)
        self.secrets: list[str] = []
        self.fail_with: Exception | None = None

    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        if self.fail_with is not None:
            raise self.fail_with
        token = await self.inner.fetch(request)
        if token is not None:
            self.secrets.append(token.secret)
        return token


class SpyPolicy(ForwardingPolicy):
    """The bundled backoff policy, recording the retry delays it chose."""

    def __init__(self, inner: backoff.BackoffPolicy) -> None:
        self.inner = inner
        self.delays: list[tuple[int, float]] = []

    def order(self, payments: list[StoredPayment]) -> list[StoredPayment]:
        return self.inner.order(payments)

    def retry_delay(self, attempts: int) -> float:
        delay = self.inner.retry_delay(attempts)
        self.delays.append((attempts, delay))
        return delay

    def give_up_reason(self, payment: StoredPayment, now: datetime) -> str | None:
        return self.inner.give_up_reason(payment, now)


class KitPlugin:
    """Registers ``observed`` (transport), ``recording`` (tokens) and ``spy`` (policy)."""

    def __init__(self) -> None:
        self.transports: list[ObservedTransport] = []
        self.providers: list[RecordingTokenProvider] = []
        self.policies: list[SpyPolicy] = []

    @hookimpl
    def offterm_forwarding_transports(self) -> Iterator[ForwardingTransportRegistration]:
        def build(ctx: ComponentContext) -> ObservedTransport:
            transport = ObservedTransport(stripe.build(ctx))
            self.transports.append(transport)
            return transport

        yield ForwardingTransportRegistration(name="observed", factory=build, options=stripe.OPTIONS)

    @hookimpl
    def offterm_connection_token_providers(self) -> Iterator[TokenProviderRegistration]:
        def build(ctx: ComponentContext) -> RecordingTokenProvider:
            provider = RecordingTokenProvider(ctx.options["url"])
            self.providers.append(provider)
            return provider

        yield TokenProviderRegistration(
            name="recording", factory=build, options=(OptionSpec("url", str, "", "backend URL", required=True),)
        )

    @hookimpl
    def offterm_forwarding_policies(self) -> Iterator[ForwardingPolicyRegistration]:
        def build(ctx: ComponentContext) -> SpyPolicy:
            settings = backoff.parse_options(ctx.options, prefix="forwarding_policy.spy")
            policy = SpyPolicy(backoff.BackoffPolicy(settings))
            self.policies.append(policy)
            return policy

        yield ForwardingPolicyRegistration(name="spy", factory=build, options=backoff.OPTIONS)


def plugin_manager(recorder: HookRecorder, kit: KitPlugin | None = None) -> Any:
    plugins: dict[str, object] = {"recorder": recorder}
    if kit is not None:
        plugins["fwd-kit"] = kit
    return make_plugin_manager(plugins=plugins)


def ids_in_order(payments: Sequence[NewPayment]) -> list[str]:
    return [p.offline_id for p in sorted(payments, key=lambda p: p.stored_at)]


async def pay(terminal: Any, amount: int, card_name: str = "visa", behavior: Any = None) -> Any:
    """One payment through the public API with the simulated reader (the customer presents ``card_name``)."""
    kwargs = {} if behavior is None else {"offline_behavior": behavior}
    intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, **kwargs)
    terminal.connected_reader.present_card(card_name)
    intent = await terminal.collect_payment_method(intent)
    return await terminal.confirm_payment_intent(intent)


async def connect_online(terminal: Any) -> None:
    """Connect the simulated reader while online: authenticates, so the account is known."""
    [reader] = (await terminal.discover_readers())[:1]
    await terminal.connect_reader(reader)


class Worker:
    """forwarding_worker.py in a child process; its JSON lines collected as they come."""

    def __init__(self, config_path: Path, store: int = 0, online: int = 0) -> None:
        self.args = [str(WORKER), str(config_path)] + (["--store", str(store)] if store else [])
        self.args += ["--online", str(online)] if online else []
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Worker:
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        import json

        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if raw.startswith(b"{"):
                self.lines.append(json.loads(raw))

    def of(self, key: str) -> list[Any]:
        return [line[key] for line in self.lines if key in line]

    async def go(self) -> None:
        await wait_until(lambda: bool(self.of("ready")), timeout=30, what="worker start")
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout=timeout)
        if self._reader is not None:
            await self._reader
        return rc

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.finish()
