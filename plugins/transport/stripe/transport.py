"""The Stripe forwarding transport: public PaymentIntent API plus the device steps.

``submit`` runs up to three requests, each with its own idempotency key
derived from the payment's persisted key, so any step can be retried (after
a timeout, a crash, a restart) without a second charge:

1. ``POST /v1/payment_intents`` (``{key}-create``) when the intent has no id yet;
2. the device step making a card_present PaymentMethod (``{key}-payment_method``);
3. ``POST /v1/payment_intents/{id}/confirm`` (``{key}-confirm``).

Each step's parameters depend only on the payment, never on whether it
runs online or from the store: an online attempt that fell back offline is
finished by the forwarder under the same keys, and Stripe refuses a key
re-used with other parameters.  (When a payment was stored travels with the
device step as a header, outside the compared parameters.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from offterm.core.contracts import (
    ConnectionToken,
    ForwardingTransport,
    ProcessorSession,
    Submission,
    SubmissionResult,
)
from offterm.core.errors import OutcomeUnknown, PermanentProcessorError
from offterm.core.logs import bind_request
from offterm.core.models import CaptureMethod, IntentStatus

from . import device
from .defaults import DEFAULT_API_BASE, DEFAULT_STRIPE_VERSION
from .http import ProcessorClient, StripeHttp, check_base_url

OFFLINE_ID_KEY = "offterm_offline_id"


def step_key(idempotency_key: str, step: str) -> str:
    """The idempotency key of one step of one payment."""
    return f"{idempotency_key}-{step}"


class StripeTransport(ForwardingTransport):
    """Speaks Stripe's wire conventions (form bodies, Bearer, Stripe-Version, Idempotency-Key)."""

    def __init__(
        self,
        api_base: str = DEFAULT_API_BASE,
        *,
        stripe_version: str = DEFAULT_STRIPE_VERSION,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_connections: int = 20,
        device_api_base: str | None = None,
        probe_path: str = "/healthcheck",
        probe_timeout: float = 5.0,
    ) -> None:
        self.http = StripeHttp(
            api_base,
            stripe_version=stripe_version,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
        self.api_base = self.http.api_base
        self.device_base = check_base_url("device_api_base", device_api_base) if device_api_base else self.api_base
        self.probe_path = probe_path if probe_path.startswith("/") else "/" + probe_path
        self._probe_deadline = probe_timeout
        self.probe_timeout = httpx.Timeout(probe_timeout, connect=min(probe_timeout, connect_timeout))
        self._probe_client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        await self.http.aclose()
        if self._probe_client is not None:
            await self._probe_client.aclose()
            self._probe_client = None

    # -- sessions -----------------------------------------------------------------

    async def authenticate(self, token: ConnectionToken) -> ProcessorSession:
        return await device.open_session(self.http, self.device_base, token)

    # -- public API ---------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.api_base + path

    async def create_intent(
        self,
        session: ProcessorSession,
        *,
        offline_id: str,
        amount: int,
        currency: str,
        capture_method: CaptureMethod,
        metadata: dict[str, str],
        description: str | None,
        idempotency_key: str,
    ) -> str:
        """Create a card_present PaymentIntent; ``idempotency_key`` is used exactly as given."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "capture_method": CaptureMethod(capture_method).value,
            "payment_method_types": ["card_present"],
            # Sorted: the same payment always encodes to the same bytes, whatever order its metadata came in.
            "metadata": dict(sorted({**metadata, OFFLINE_ID_KEY: offline_id}.items())),
            "description": description,
        }
        answer = await self.http.request(
            "POST",
            self._url("/v1/payment_intents"),
            step="create",
            bearer=session.secret,
            params=params,
            idempotency_key=idempotency_key,
        )
        return _intent_id(answer.body, answer.request_id, "create")

    async def submit(self, session: ProcessorSession, submission: Submission) -> SubmissionResult:
        key = submission.idempotency_key
        intent_id = submission.intent_id
        if intent_id is None:
            intent_id = await self.create_intent(
                session,
                offline_id=submission.offline_id,
                amount=submission.amount,
                currency=submission.currency,
                capture_method=submission.capture_method,
                metadata=dict(submission.metadata),
                description=submission.description,
                idempotency_key=step_key(key, "create"),
            )
        pm_id = await device.create_card_present_method(
            self.http,
            self.device_base,
            session,
            submission.card,
            step_key(key, "payment_method"),
            stored_at=submission.stored_at,
        )
        try:
            answer = await self.http.request(
                "POST",
                self._url(f"/v1/payment_intents/{intent_id}/confirm"),
                step="confirm",
                bearer=session.secret,
                params={"payment_method": pm_id},
                idempotency_key=step_key(key, "confirm"),
            )
        except PermanentProcessorError as exc:
            done = _already_done(exc)
            if done is not None:
                return SubmissionResult(intent_id=intent_id, status=done, replayed=True)
            raise
        status = _status(answer.body, answer.request_id)
        return SubmissionResult(
            intent_id=_intent_id(answer.body, answer.request_id, "confirm"), status=status, replayed=answer.replayed
        )

    async def cancel_intent(self, session: ProcessorSession, intent_id: str) -> None:
        try:
            await self.http.request(
                "POST",
                self._url(f"/v1/payment_intents/{intent_id}/cancel"),
                step="cancel",
                bearer=session.secret,
                params={},
                idempotency_key=f"{intent_id}-cancel",
            )
        except PermanentProcessorError as exc:
            if _error_intent_status(exc) == IntentStatus.CANCELED.value:
                return
            raise

    async def capture_intent(
        self, session: ProcessorSession, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentStatus:
        """Capture a ``requires_capture`` intent (not part of the contract; for manual capture)."""
        answer = await self.http.request(
            "POST",
            self._url(f"/v1/payment_intents/{intent_id}/capture"),
            step="capture",
            bearer=session.secret,
            params={"amount_to_capture": amount},
            idempotency_key=step_key(idempotency_key, "capture"),
        )
        return _status(answer.body, answer.request_id)

    async def retrieve_intent(self, session: ProcessorSession, intent_id: str) -> dict[str, Any]:
        """The processor's PaymentIntent object (for reconciliation)."""
        answer = await self.http.request(
            "GET", self._url(f"/v1/payment_intents/{intent_id}"), step="retrieve", bearer=session.secret
        )
        return answer.body

    async def refund(
        self, session: ProcessorSession, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> str:
        """Refund a captured intent; returns the refund id."""
        answer = await self.http.request(
            "POST",
            self._url("/v1/refunds"),
            step="refund",
            bearer=session.secret,
            params={"payment_intent": intent_id, "amount": amount},
            idempotency_key=step_key(idempotency_key, "refund"),
        )
        refund_id = answer.body.get("id")
        if not isinstance(refund_id, str):
            raise OutcomeUnknown("refund: the processor's answer has no id", request_id=answer.request_id)
        return refund_id

    async def probe(self) -> bool:
        """Any HTTP answer but a redirect means the processor is reachable.

        A redirect is what a captive portal answers in the processor's
        place.  Only the status line and headers are read, all within
        ``probe_timeout``.  Probes use their own connection, so a pool busy
        with forwarding never makes the processor look down.
        """
        if self._probe_client is None or self._probe_client.is_closed:
            self._probe_client = ProcessorClient(
                timeout=self.probe_timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
                verify=True,
                trust_env=False,
                follow_redirects=False,
            )
        with bind_request():
            try:
                async with (
                    asyncio.timeout(self._probe_deadline),
                    self._probe_client.stream("GET", self._url(self.probe_path)) as resp,
                ):
                    return not 300 <= resp.status_code < 400
            except (httpx.HTTPError, TimeoutError):
                return False


def _intent_id(body: dict[str, Any], request_id: str | None, step: str) -> str:
    intent_id = body.get("id")
    if not isinstance(intent_id, str) or body.get("object") != "payment_intent":
        raise OutcomeUnknown(f"{step}: the processor's answer is not a PaymentIntent", request_id=request_id)
    return intent_id


def _status(body: dict[str, Any], request_id: str | None) -> IntentStatus:
    try:
        return IntentStatus(body.get("status"))
    except ValueError:
        raise PermanentProcessorError(
            f"the PaymentIntent is in state {body.get('status')!r}, which offterm does not handle",
            code="unexpected_intent_status",
            request_id=request_id,
        ) from None


def _error_intent_status(exc: PermanentProcessorError) -> str | None:
    intent = getattr(exc, "payment_intent", None)
    return intent.get("status") if isinstance(intent, dict) else None


def _already_done(exc: PermanentProcessorError) -> IntentStatus | None:
    """A confirm refused because the intent is already authorised (by an earlier attempt) counts as done."""
    if exc.code != "payment_intent_unexpected_state":
        return None
    status = _error_intent_status(exc)
    if status in (IntentStatus.SUCCEEDED.value, IntentStatus.REQUIRES_CAPTURE.value):
        return IntentStatus(status)
    return None
