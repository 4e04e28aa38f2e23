"""The Stripe forwarding transport: public PaymentIntent API plus the device steps.

Every method makes exactly one request, with the idempotency key it is
given, used as is:

=========================  ==========================================================  =====================
method                     request                                                     idempotency key
=========================  ==========================================================  =====================
``create_intent``          ``POST /v1/payment_intents`` (+ ``payment_method``,          the caller's
                           ``confirm=true`` when a payment method is given)
``create_payment_method``  device: ``POST /device/v1/payment_methods``                 the caller's
``confirm_intent``         ``POST /v1/payment_intents/{id}/confirm``                   the caller's
``retrieve_intent``        ``GET /v1/payment_intents/{id}``                            none (a GET)
``find_intent``            ``GET /v1/payment_intents/search`` on the offline id         none (a GET)
``cancel_intent``          ``POST /v1/payment_intents/{id}/cancel``                    ``{id}-cancel``
``capture_intent``         ``POST /v1/payment_intents/{id}/capture``                   the caller's
``refund``                 ``POST /v1/refunds``                                        the caller's
=========================  ==========================================================  =====================

Why the core, not the transport, chooses the keys and the order: exactly
once depends on things only the core knows.  It records each step durably
before the request goes out, keeps the intent id as soon as one comes
back (so a stored payment is confirmed, never created twice), and, when
the processor may have forgotten a key (Stripe prunes them after 24 h),
looks the payment up (``retrieve_intent`` / ``find_intent``) and moves to
a new key generation only once the lookup shows a new request is safe
(docs/forwarding.md, "One key per payment").  A transport that derived its own keys or chained
requests would hide those decisions where the store cannot record them.

Parameters depend only on the payment, never on whether it runs online
or from the store: an online attempt that fell back offline is finished
under the same keys, and Stripe refuses a key re-used with other
parameters.  (When a payment was stored travels with the device step as a
header, outside the compared parameters.)

A confirmation the processor answered about the intent (a card decline,
or ``payment_intent_unexpected_state`` because the intent is already
paid, canceled or processing) is returned as that intent's snapshot, not
raised: the core judges the status (docs/forwarding.md, "The status table").
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import httpx
import structlog

from offterm.core.contracts import CardResult, ConnectionToken, ForwardingTransport, ProcessorSession
from offterm.core.contracts.forwarding import IntentRequest, IntentSnapshot
from offterm.core.errors import (
    CardDeclined,
    InvalidRequest,
    OutcomeUnknown,
    PaymentNotFound,
    PermanentProcessorError,
    ProcessorError,
    TransientProcessorError,
)
from offterm.core.logs import bind_request
from offterm.core.models import CaptureMethod

from . import _intents as intents
from . import device
from ._defaults import DEFAULT_API_BASE, DEFAULT_SEARCH_DELAY, DEFAULT_STRIPE_VERSION
from ._http import Answer, ProcessorClient, StripeHttp, check_base_url

log = structlog.get_logger("offterm.transport.stripe")

OFFLINE_ID_KEY = intents.OFFLINE_ID_KEY
#: Matches asked of a search; one is expected, a few at most (one per key generation).
SEARCH_LIMIT = 100
#: The error code under which Stripe refuses a step the intent's status does not allow.
UNEXPECTED_STATE = "payment_intent_unexpected_state"
_INTENT_ID = re.compile(r"[A-Za-z0-9_]{1,255}")


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
        search_delay: float = DEFAULT_SEARCH_DELAY,
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
        self.search_delay = float(search_delay)

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

    # -- the contract ---------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.api_base + path

    def _intent_url(self, intent_id: str, action: str = "") -> str:
        _check_intent_id(intent_id)
        return self._url(f"/v1/payment_intents/{intent_id}" + (f"/{action}" if action else ""))

    async def create_intent(
        self,
        session: ProcessorSession,
        request: IntentRequest,
        *,
        idempotency_key: str,
        payment_method: str | None = None,
    ) -> IntentSnapshot:
        """One ``POST /v1/payment_intents``; with ``payment_method``, created and confirmed (``confirm=true``).

        A decline or an unexpected state that carries the intent returns its snapshot (see module docstring).
        """
        params = intent_params(request)
        if payment_method is not None:
            params["payment_method"] = payment_method
            params["confirm"] = True
        step = "create" if payment_method is None else "create_and_confirm"
        return await self._confirming(
            step, self._url("/v1/payment_intents"), session=session, params=params, idempotency_key=idempotency_key
        )

    async def create_payment_method(
        self,
        session: ProcessorSession,
        card: CardResult,
        *,
        idempotency_key: str,
        stored_at: datetime | None = None,
    ) -> str:
        """The device step: the reader's encrypted card data -> a card_present PaymentMethod id."""
        return await device.create_card_present_method(
            self.http, self.device_base, session, card, idempotency_key, stored_at=stored_at
        )

    async def confirm_intent(
        self, session: ProcessorSession, intent_id: str, *, payment_method: str, idempotency_key: str
    ) -> IntentSnapshot:
        """One ``POST /v1/payment_intents/{id}/confirm`` with ``payment_method``."""
        return await self._confirming(
            "confirm",
            self._intent_url(intent_id, "confirm"),
            session=session,
            params={"payment_method": payment_method},
            idempotency_key=idempotency_key,
        )

    async def retrieve_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        """One ``GET /v1/payment_intents/{id}``; PaymentNotFound when Stripe has no such intent."""
        try:
            answer = await self.http.request("GET", self._intent_url(intent_id), step="retrieve", bearer=session.secret)
        except PermanentProcessorError as exc:
            if exc.code == "resource_missing" and exc.http_status == 404:
                raise PaymentNotFound(
                    f"retrieve: the processor has no PaymentIntent {intent_id}",
                    intent_id=intent_id,
                    request_id=exc.request_id,
                ) from None
            raise
        return _snapshot(answer, "retrieve", method="GET")

    async def find_intent(self, session: ProcessorSession, offline_id: str) -> IntentSnapshot | None:
        """One ``GET /v1/payment_intents/search`` for ``metadata['offterm_offline_id']``.

        None when nothing matches (trusted only for intents older than
        :attr:`search_delay`).  Of several matches, a paid one
        (``succeeded`` / ``requires_capture``) comes first, else the newest;
        several are logged as a warning.  A match whose metadata does not
        carry ``offline_id`` is never returned.
        """
        if not intents.check_offline_id(offline_id):
            raise InvalidRequest(
                "find_intent: an offline id may hold only letters, digits, '_' and '-' "
                f"({len(offline_id) if isinstance(offline_id, str) else 0} characters given)"
            )
        answer = await self.http.request(
            "GET",
            self._url("/v1/payment_intents/search"),
            step="find",
            bearer=session.secret,
            params={"query": intents.search_query(offline_id), "limit": SEARCH_LIMIT},
        )
        data = answer.body.get("data")
        if answer.body.get("object") != "search_result" or not isinstance(data, list):
            raise _unreadable("find", answer.request_id, "GET", "not a search result")
        found: list[tuple[IntentSnapshot, int]] = []
        for item in data:
            snapshot = intents.parse(item, answer.request_id)
            if snapshot is None:
                raise _unreadable("find", answer.request_id, "GET", "a search match is not a PaymentIntent")
            if snapshot.offline_id == offline_id:
                found.append((snapshot, intents.created(item)))
        if len(found) < len(data):
            log.warning(
                "stripe_search_foreign_matches", ignored=len(data) - len(found), stripe_request_id=answer.request_id
            )
        if not found:
            return None
        # Stable sort: among equals (no ``created``), Stripe's own order (newest first) stands.
        found.sort(key=lambda pair: (pair[0].status in intents.PAID_STATUSES, pair[1]), reverse=True)
        chosen = found[0][0]
        if len(found) > 1 or answer.body.get("has_more") is True:
            log.warning(
                "stripe_search_several_intents",
                offline_id=offline_id,
                count=len(found),
                more=answer.body.get("has_more") is True,
                chosen=chosen.id,
                statuses=sorted(s.status for s, _ in found),
                stripe_request_id=answer.request_id,
            )
        return chosen

    async def cancel_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        """One ``POST /v1/payment_intents/{id}/cancel`` keyed ``{id}-cancel``; already canceled is returned."""
        try:
            answer = await self.http.request(
                "POST",
                self._intent_url(intent_id, "cancel"),
                step="cancel",
                bearer=session.secret,
                params={},
                idempotency_key=f"{intent_id}-cancel",
            )
        except PermanentProcessorError as exc:
            snapshot = _error_snapshot(exc)
            if exc.code == UNEXPECTED_STATE and snapshot is not None and snapshot.status == "canceled":
                return snapshot
            raise
        return _snapshot(answer, "cancel", method="POST")

    # -- beyond the contract (manual capture, refunds, reconciliation) ---------------

    async def capture_intent(
        self, session: ProcessorSession, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentSnapshot:
        """Capture a ``requires_capture`` intent; ``idempotency_key`` is used as given."""
        answer = await self.http.request(
            "POST",
            self._intent_url(intent_id, "capture"),
            step="capture",
            bearer=session.secret,
            params={"amount_to_capture": amount},
            idempotency_key=idempotency_key,
        )
        return _snapshot(answer, "capture", method="POST")

    async def refund(
        self, session: ProcessorSession, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> str:
        """Refund a captured intent; returns the refund id.  ``idempotency_key`` is used as given."""
        answer = await self.http.request(
            "POST",
            self._url("/v1/refunds"),
            step="refund",
            bearer=session.secret,
            params={"payment_intent": intent_id, "amount": amount},
            idempotency_key=idempotency_key,
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

    # -- helpers --------------------------------------------------------------------

    async def _confirming(
        self, step: str, url: str, *, session: ProcessorSession, params: dict[str, Any], idempotency_key: str
    ) -> IntentSnapshot:
        """A POST that may confirm: the processor's word about the intent is returned, not raised.

        A card decline carrying its intent (HTTP 402) and a
        ``payment_intent_unexpected_state`` carrying its intent (already
        paid, canceled, processing) both return that intent's snapshot.
        A decline without an intent stays ``CardDeclined``.
        """
        try:
            answer = await self.http.request(
                "POST", url, step=step, bearer=session.secret, params=params, idempotency_key=idempotency_key
            )
        except (CardDeclined, PermanentProcessorError) as exc:
            snapshot = _error_snapshot(exc)
            if snapshot is None or (isinstance(exc, PermanentProcessorError) and exc.code != UNEXPECTED_STATE):
                raise
            log.info("stripe_intent_in_error", step=step, code=exc.code, intent=snapshot.id, status=snapshot.status)
            return snapshot
        return _snapshot(answer, step, method="POST")


def intent_params(request: IntentRequest) -> dict[str, Any]:
    """The parameters creating ``request``'s intent: they depend on the request only (same bytes every time)."""
    return {
        "amount": request.amount,
        "currency": request.currency.lower(),
        "capture_method": CaptureMethod(request.capture_method).value,
        "payment_method_types": ["card_present"],
        # Sorted: the same payment always encodes to the same bytes, whatever order its metadata came in.
        "metadata": dict(sorted({**request.metadata, OFFLINE_ID_KEY: request.offline_id}.items())),
        "description": request.description,
    }


def _check_intent_id(intent_id: str) -> None:
    """An intent id goes into a URL path: letters, digits and ``_`` only (Stripe's ``pi_...``)."""
    if not isinstance(intent_id, str) or _INTENT_ID.fullmatch(intent_id) is None:
        raise InvalidRequest("a PaymentIntent id may hold only ASCII letters, digits and '_'")


def _error_snapshot(exc: ProcessorError) -> IntentSnapshot | None:
    snapshot = getattr(exc, "intent_snapshot", None)
    return snapshot if isinstance(snapshot, IntentSnapshot) else None


def _snapshot(answer: Answer, step: str, *, method: str) -> IntentSnapshot:
    snapshot = intents.parse(answer.body, answer.request_id)
    if snapshot is None:
        raise _unreadable(step, answer.request_id, method, "not a PaymentIntent")
    return snapshot


def _unreadable(step: str, request_id: str | None, method: str, what: str) -> ProcessorError:
    """A 2xx that is not what was asked for: a POST's outcome is unknown; a GET changed nothing."""
    text = f"{step}: the processor's answer is {what}"
    if method == "POST":
        return OutcomeUnknown(text + "; retry with the same idempotency key", request_id=request_id)
    return TransientProcessorError(text, code="unreadable_answer", request_id=request_id)
