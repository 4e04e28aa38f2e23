"""The simulated processor's books: tokens, sessions, intents, charges, refunds.

Every method is synchronous and runs under one lock, so the HTTP handlers
(on the server's loop) and a test reading the ledger (on its own thread)
never see half an update.  Card numbers are used to decide and then
dropped: payment methods keep only the decision and non-sensitive details.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offterm.plugins.readers.card_encryption import SCHEME, CardDecryptionError, decrypt

from .cards import TEST_PAYMENT_METHODS, Decision, decide
from .config import SimConfig
from .errors import SimError, bad_param, missing

OFFLINE_ID_KEY = "offterm_offline_id"
INTENT_STATUSES_CONFIRMABLE = ("requires_payment_method", "requires_confirmation")
CANCELABLE = ("requires_payment_method", "requires_confirmation", "requires_capture", "requires_action")
#: A charge's fields that a "processing" confirm keeps aside until the intent settles.
_OUTCOME_FIELDS = ("amount_captured", "captured", "failure_code", "failure_message", "outcome", "paid", "status")
#: Fields a search query may name besides ``metadata['KEY']``; values compare exactly.
SEARCH_FIELDS = ("status", "currency")
MAX_SEARCH_CLAUSES = 10
# One clause: metadata['KEY'] or a plain field, ':', a quoted value ('...' or "...", backslash escapes).
_CLAUSE = re.compile(
    r"""\s*(?:metadata\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq)).)*)(?P=kq)\]|(?P<field>[a-z_]+))"""
    r"""\s*:\s*(?P<vq>['"])(?P<value>(?:\\.|(?!(?P=vq)).)*)(?P=vq)\s*""",
    re.DOTALL,
)
_JOINER = re.compile(r"(AND|OR)\s+")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class _Token:
    location: str | None
    created: float
    redeemed: bool = False


@dataclass
class _Session:
    expires_at: float


@dataclass
class _PaymentMethod:
    obj: dict[str, Any]
    decision: Decision
    stored_at: int | None = None  # collected offline, stored then (unix seconds)


@dataclass
class _Processing:
    """A confirm answered "processing": its charge's real outcome, applied at ``due``."""

    due: float
    pm: _PaymentMethod
    charge_id: str
    outcome: dict[str, Any]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def parse_search_query(query: str) -> tuple[str, list[tuple[str, str | None, str]]]:
    """Parse a search query into ("AND" | "OR", [(field, metadata key or None, value)]).

    Understood: ``metadata['KEY']:'VALUE'``, ``metadata["KEY"]:"VALUE"``,
    ``status:'...'``, ``currency:'...'``, joined by ``AND`` or ``OR`` (not
    both; a bare space means AND), at most 10 clauses.  Raises SimError 400.
    """

    def invalid(why: str) -> SimError:
        return bad_param("query", f"Invalid search query: {why}.")

    clauses: list[tuple[str, str | None, str]] = []
    joiners: set[str] = set()
    pos = 0
    while True:
        match = _CLAUSE.match(query, pos)
        if match is None:
            raise invalid(f"expected a clause such as metadata['key']:'value' at character {pos}")
        field = match["field"]
        if field is not None and field not in SEARCH_FIELDS:
            raise invalid(f"the field {field!r} cannot be searched here")
        key = None if field is not None else _unescape(match["key"])
        clauses.append(("metadata" if field is None else field, key, _unescape(match["value"])))
        pos = match.end()
        if pos == len(query):
            break
        if not query[pos - 1].isspace():
            raise invalid(f"expected AND or OR at character {pos}")
        joiner = _JOINER.match(query, pos)
        joiners.add(joiner.group(1) if joiner else "AND")  # a bare space means AND
        if joiner:
            pos = joiner.end()
    if len(joiners) > 1:
        raise invalid("AND and OR cannot be combined in one query")
    if len(clauses) > MAX_SEARCH_CLAUSES:
        raise invalid(f"at most {MAX_SEARCH_CLAUSES} clauses are allowed")
    return (joiners.pop() if joiners else "AND"), clauses


def _next_action() -> dict[str, Any]:
    """What a confirm answered "requires_action" asks for (customer authentication, e.g. 3-D Secure)."""
    return {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}


def _int(params: dict[str, Any], name: str, *, required: bool = False, minimum: int = 0) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise SimError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise bad_param(name, f"Invalid integer: {raw}") from None
    if value < minimum:
        raise bad_param(name, f"This value must be greater than or equal to {minimum}.")
    return value


def _bool(params: dict[str, Any], name: str) -> bool:
    raw = params.get(name, "false")
    if raw not in ("true", "false", True, False):
        raise bad_param(name, f"Invalid boolean: {raw}")
    return raw in ("true", True)


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise bad_param("metadata", "Invalid hash")
    if len(raw) > 50:
        raise bad_param("metadata", "You can specify up to 50 keys.")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise bad_param(f"metadata[{k}]", "Invalid string")
        if len(k) > 40:
            raise bad_param("metadata", "Keys must be at most 40 characters long.")
        if len(v) > 500:
            raise bad_param(f"metadata[{k}]", "Values must be at most 500 characters long.")
        if v != "":
            out[k] = v
    return out


class Books:
    """All state of one simulated account."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self._base_key = bytes.fromhex(config.base_key_hex)
        self.tokens: dict[str, _Token] = {}
        self.sessions: dict[str, _Session] = {}
        self.payment_methods: dict[str, _PaymentMethod] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.charges_by_offline_id: dict[str, list[str]] = {}
        self.created_at: dict[str, float] = {}  # intent id -> creation time on the clock (search indexing)
        self.processing: dict[str, _Processing] = {}  # intents answered "processing", not yet settled

    # -- auth ---------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    def principal(self, bearer: str | None) -> str:
        """ "secret_key" or "session" for a valid bearer; SimError(401) otherwise."""
        if bearer and secrets.compare_digest(bearer, self.config.secret_key):
            return "secret_key"
        with self.lock:
            session = self.sessions.get(bearer or "")
            if session is not None:
                if self.clock() >= session.expires_at:
                    raise SimError(401, "The device session has expired.", code="session_expired")
                return "session"
        if not bearer:
            raise SimError(
                401,
                "You did not provide an API key. Provide it in the Authorization header (Bearer auth).",
            )
        raise SimError(401, "Invalid API Key provided.", code="api_key_invalid")

    def mint_connection_token(self, location: str | None) -> dict[str, Any]:
        secret = ("pst_live_" if self.config.livemode else "pst_test_") + secrets.token_urlsafe(24)
        location = location or self.config.location_id
        with self.lock:
            self.tokens[secret] = _Token(location=location, created=self.clock())
        obj: dict[str, Any] = {"object": "terminal.connection_token", "secret": secret}
        if location:
            obj["location"] = location
        return obj

    def redeem(self, token_secret: str | None) -> dict[str, Any]:
        """Turn a single-use connection token into a device session."""
        with self.lock:
            token = self.tokens.get(token_secret or "")
            if token is None:
                raise SimError(401, "Invalid connection token.", code="connection_token_invalid")
            if token.redeemed:
                raise SimError(
                    401, "This connection token has already been redeemed.", code="connection_token_already_redeemed"
                )
            if self.clock() - token.created > self.config.connection_token_ttl:
                raise SimError(401, "This connection token has expired.", code="connection_token_expired")
            token.redeemed = True
            secret = "dss_" + secrets.token_urlsafe(24)
            expires_at = self.clock() + self.config.session_ttl
            self.sessions[secret] = _Session(expires_at=expires_at)
        return {
            "object": "terminal.device_session",
            "secret": secret,
            "account": self.config.account_id,
            "livemode": self.config.livemode,
            "location": token.location,
            "expires_at": int(expires_at),
        }

    # -- payment methods ------------------------------------------------------------

    def create_card_present_method(self, params: dict[str, Any], *, stored_at: int | None = None) -> dict[str, Any]:
        if params.get("type") != "card_present":
            raise bad_param("type", "Only type=card_present is supported by the device API.")
        card = params.get("card_present")
        if not isinstance(card, dict):
            raise SimError(400, "Missing required param: card_present.", code="parameter_missing", param="card_present")
        scheme = card.get("encryption_scheme", SCHEME)
        if scheme != SCHEME:
            raise bad_param("card_present[encryption_scheme]", "Unsupported card data encryption scheme.")
        try:
            blob = base64.b64decode(str(card.get("encrypted_data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise bad_param("card_present[encrypted_data]", "Card data is not valid base64.") from None
        try:
            sensitive = decrypt(blob, str(card.get("key_serial", "")), self._base_key)
        except CardDecryptionError:
            raise SimError(
                400,
                "The card data could not be decrypted.",
                code="card_data_undecryptable",
                param="card_present[encrypted_data]",
            ) from None
        decision = decide(sensitive.pan)
        fingerprint = hashlib.sha256(b"offterm-sim" + sensitive.pan.encode()).hexdigest()[:16]
        pm_id = _id("pm")
        obj: dict[str, Any] = {
            "id": pm_id,
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card_present": {
                "brand": decision.brand,
                "cardholder_name": sensitive.cardholder_name,
                "country": decision.country,
                "exp_month": sensitive.exp_month,
                "exp_year": sensitive.exp_year,
                "fingerprint": fingerprint,
                "funding": decision.funding,
                "last4": sensitive.pan[-4:],
                "networks": {"available": [decision.brand], "preferred": None},
                "read_method": sensitive.read_method,
            },
            "created": self._now(),
            "customer": None,
            "livemode": self.config.livemode,
            "metadata": {},
            "type": "card_present",
        }
        with self.lock:
            self.payment_methods[pm_id] = _PaymentMethod(obj=obj, decision=decision, stored_at=stored_at)
        return obj

    def _test_card_method(self, name: str) -> _PaymentMethod:
        """A new ``card`` PaymentMethod from one of Stripe's test PaymentMethods (caller holds the lock)."""
        number = TEST_PAYMENT_METHODS[name]
        decision = decide(number)
        fingerprint = hashlib.sha256(b"offterm-sim" + number.encode()).hexdigest()[:16]
        pm_id = _id("pm")
        obj: dict[str, Any] = {
            "id": pm_id,
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": decision.brand,
                "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
                "country": decision.country,
                "exp_month": 12,
                "exp_year": time.gmtime(self.clock()).tm_year + 3,
                "fingerprint": fingerprint,
                "funding": decision.funding,
                "generated_from": None,
                "last4": number[-4:],
                "networks": {"available": [decision.brand], "preferred": None},
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": self._now(),
            "customer": None,
            "livemode": self.config.livemode,
            "metadata": {},
            "type": "card",
        }
        pm = _PaymentMethod(obj=obj, decision=decision)
        self.payment_methods[pm_id] = pm
        return pm

    def _payment_method(self, pm_id: str, param: str = "payment_method") -> _PaymentMethod:
        """A stored PaymentMethod, or a new one for a test PaymentMethod's name (caller holds the lock)."""
        if pm_id in TEST_PAYMENT_METHODS and not self.config.livemode:
            return self._test_card_method(pm_id)
        pm = self.payment_methods.get(pm_id)
        if pm is None:
            raise missing("PaymentMethod", pm_id, param)
        return pm

    def get_payment_method(self, pm_id: str) -> dict[str, Any]:
        with self.lock:
            return dict(self._payment_method(pm_id, "payment_method").obj)

    # -- payment intents --------------------------------------------------------------

    def create_intent(
        self,
        params: dict[str, Any],
        *,
        confirm_status: Callable[[], str | None] | None = None,
        processing_for: float = 1.0,
    ) -> dict[str, Any]:
        """Create an intent; with ``confirm=true`` confirm it too (``confirm_status`` as for :meth:`confirm`)."""
        amount = _int(params, "amount", required=True, minimum=1)
        currency = params.get("currency")
        if not currency:
            raise SimError(400, "Missing required param: currency.", code="parameter_missing", param="currency")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise bad_param("currency", f"Invalid currency: {currency}.")
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            raise bad_param("capture_method", f"Invalid capture_method: {capture_method}")
        types = params.get("payment_method_types", ["card"])
        if not isinstance(types, list) or not types:
            raise bad_param("payment_method_types", "Invalid array")
        description = params.get("description")
        metadata = _metadata(params)
        intent_id = _id("pi")
        intent: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": self._now(),
            "currency": currency.lower(),
            "customer": None,
            "description": description or None,
            "invoice": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": self.config.livemode,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_options": {
                "card_present": {
                    "request_extended_authorization": False,
                    "request_incremental_authorization_support": False,
                }
            }
            if "card_present" in types
            else {},
            "payment_method_types": list(types),
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
        pm = params.get("payment_method")
        with self.lock:
            if pm:
                if not isinstance(pm, str):
                    raise bad_param("payment_method", "Invalid string")
                intent["payment_method"] = self._payment_method(pm).obj["id"]
                intent["status"] = "requires_confirmation"
            self.intents[intent_id] = intent
            self.created_at[intent_id] = self.clock()
        if _bool(params, "confirm"):
            return self.confirm(intent_id, {}, confirm_status=confirm_status, processing_for=processing_for)
        return dict(intent)

    def get_intent(self, intent_id: str) -> dict[str, Any]:
        with self.lock:
            self._settle()
            intent = self.intents.get(intent_id)
            if intent is None:
                raise missing("payment_intent", intent_id, "intent")
            return dict(intent)

    def list_intents(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = _int(params, "limit", minimum=1) or 10
        limit = min(limit, 100)
        with self.lock:
            self._settle()
            items = list(reversed(self.intents.values()))  # newest first, as Stripe lists
            page, has_more = _page(items, params, limit, "payment_intent")
        return {"object": "list", "data": page, "has_more": has_more, "url": "/v1/payment_intents"}

    def search_intents(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's PaymentIntent search: matching intents, newest first, created at least ``search_delay`` ago."""
        query = params.get("query")
        if query is None or query == "":
            raise SimError(400, "Missing required param: query.", code="parameter_missing", param="query")
        if not isinstance(query, str):
            raise bad_param("query", "Invalid string")
        joiner, clauses = parse_search_query(query)
        limit = min(_int(params, "limit", minimum=1) or 10, 100)
        offset = _page_offset(params.get("page"))
        with self.lock:
            self._settle()
            indexed_before = self.clock() - self.config.search_delay
            hits = []
            for intent_id, intent in reversed(self.intents.items()):
                if self.created_at[intent_id] > indexed_before:
                    continue  # not in the search index yet
                found = [_clause_matches(intent, clause) for clause in clauses]
                if all(found) if joiner == "AND" else any(found):
                    hits.append(intent)
            page = [dict(i) for i in hits[offset : offset + limit]]
            has_more = len(hits) > offset + limit
        return {
            "object": "search_result",
            "data": page,
            "has_more": has_more,
            "next_page": _page_token(offset + limit) if has_more else None,
            "url": "/v1/payment_intents/search",
        }

    def _unexpected(self, intent: dict[str, Any], action: str) -> SimError:
        return SimError(
            400,
            f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}.",
            code="payment_intent_unexpected_state",
            extra={"payment_intent": dict(intent)},
            saved=True,
        )

    def confirm(
        self,
        intent_id: str,
        params: dict[str, Any],
        *,
        confirm_status: Callable[[], str | None] | None = None,
        processing_for: float = 1.0,
    ) -> dict[str, Any]:
        """Confirm: charge the payment method and answer the intent.

        ``confirm_status`` (the fault injector) is asked, once the confirm is
        about to charge, for a non-final status to answer with instead:
        "processing" (the charge's outcome applies ``processing_for`` seconds
        later on the clock) or "requires_action" (no charge is made).
        """
        with self.lock:
            self._settle()
            intent = self.intents.get(intent_id)
            if intent is None:
                raise missing("payment_intent", intent_id, "intent")
            if intent["status"] not in INTENT_STATUSES_CONFIRMABLE:
                raise self._unexpected(intent, "confirm")
            pm_id = params.get("payment_method") or intent["payment_method"]
            if not pm_id:
                raise SimError(
                    400,
                    "You cannot confirm this PaymentIntent because it's missing a payment method.",
                    code="payment_intent_unexpected_state",
                    param="payment_method",
                    saved=True,
                )
            pm = self._payment_method(str(pm_id))
            pm_id = pm.obj["id"]
            if pm.obj["type"] not in intent["payment_method_types"]:
                raise SimError(
                    400,
                    f"The PaymentMethod type {pm.obj['type']} is not allowed on this PaymentIntent.",
                    code="payment_intent_incompatible_payment_method",
                    param="payment_method",
                    saved=True,
                )
            if "capture_method" in params:
                if params["capture_method"] not in ("automatic", "automatic_async", "manual"):
                    raise bad_param("capture_method", "Invalid capture_method")
                intent["capture_method"] = params["capture_method"]
            intent["payment_method"] = pm_id
            forced = confirm_status() if confirm_status is not None else None
            if forced == "requires_action":
                intent.update(status="requires_action", next_action=_next_action(), last_payment_error=None)
                return dict(intent)
            charge = self._charge(intent, pm)
            if forced == "processing":
                outcome = {name: charge[name] for name in _OUTCOME_FIELDS}
                charge.update(
                    status="pending",
                    paid=False,
                    captured=False,
                    amount_captured=0,
                    failure_code=None,
                    failure_message=None,
                    outcome=None,
                )
                due = self.clock() + processing_for
                self.processing[intent_id] = _Processing(due=due, pm=pm, charge_id=charge["id"], outcome=outcome)
                intent.update(status="processing", last_payment_error=None)
                return dict(intent)
            self._apply_outcome(intent, pm, charge)
            if not pm.decision.approved:
                raise SimError(
                    402,
                    pm.decision.message,
                    type="card_error",
                    code=pm.decision.code,
                    decline_code=pm.decision.decline_code,
                    extra={"charge": charge["id"], "payment_intent": dict(intent), "payment_method": dict(pm.obj)},
                    saved=True,
                )
            return dict(intent)

    def _apply_outcome(self, intent: dict[str, Any], pm: _PaymentMethod, charge: dict[str, Any]) -> None:
        """Move a confirmed intent to the charge's outcome (caller holds the lock)."""
        if not pm.decision.approved:
            error = {
                "type": "card_error",
                "code": pm.decision.code,
                "message": pm.decision.message,
                "charge": charge["id"],
                "payment_method": dict(pm.obj),
            }
            if pm.decision.decline_code:
                error["decline_code"] = pm.decision.decline_code
            intent.update(status="requires_payment_method", last_payment_error=error, payment_method=None)
            return
        intent["last_payment_error"] = None
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
        else:
            intent.update(status="succeeded", amount_received=intent["amount"])

    def _settle(self) -> None:
        """Give intents answered "processing" their real outcome once due (caller holds the lock)."""
        if not self.processing:
            return
        now = self.clock()
        for intent_id, pending in list(self.processing.items()):
            if pending.due > now:
                continue
            del self.processing[intent_id]
            charge = self.charges[pending.charge_id]
            charge.update(pending.outcome)
            self._apply_outcome(self.intents[intent_id], pending.pm, charge)

    def settle(self) -> None:
        """Apply every "processing" outcome that is due now (reads do this themselves)."""
        with self.lock:
            self._settle()

    def _charge(self, intent: dict[str, Any], pm: _PaymentMethod) -> dict[str, Any]:
        """Record one authorisation attempt (caller holds the lock)."""
        ok = pm.decision.approved
        captured = ok and intent["capture_method"] != "manual"
        charge_id = _id("ch")
        charge: dict[str, Any] = {
            "id": charge_id,
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if captured else 0,
            "amount_refunded": 0,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "captured": captured,
            "created": self._now(),
            "currency": intent["currency"],
            "description": intent["description"],
            "disputed": False,
            "failure_code": None if ok else pm.decision.code,
            "failure_message": None if ok else pm.decision.message,
            "livemode": self.config.livemode,
            "metadata": dict(intent["metadata"]),
            "outcome": {
                "network_status": "approved_by_network" if ok else "declined_by_network",
                "reason": None if ok else pm.decision.decline_code,
                "risk_level": "normal",
                "seller_message": "Payment complete." if ok else "The bank did not return any further details.",
                "type": "authorized" if ok else "issuer_declined",
            },
            "paid": ok,
            "payment_intent": intent["id"],
            "payment_method": pm.obj["id"],
            "payment_method_details": self._charge_details(intent, pm),
            "refunded": False,
            "status": "succeeded" if ok else "failed",
        }
        self.charges[charge_id] = charge
        intent["latest_charge"] = charge_id
        offline_id = intent["metadata"].get(OFFLINE_ID_KEY)
        if offline_id:
            self.charges_by_offline_id.setdefault(offline_id, []).append(charge_id)
        return charge

    def _charge_details(self, intent: dict[str, Any], pm: _PaymentMethod) -> dict[str, Any]:
        """A charge's ``payment_method_details``: card present (a reader) or card (online)."""
        ok = pm.decision.approved
        kind = pm.obj["type"]
        card = pm.obj[kind]
        common = {
            "amount_authorized": intent["amount"] if ok else None,
            "brand": card["brand"],
            "country": card["country"],
            "exp_month": card["exp_month"],
            "exp_year": card["exp_year"],
            "fingerprint": card["fingerprint"],
            "funding": card["funding"],
            "last4": card["last4"],
            "network": card["brand"],
        }
        if kind == "card":
            details = {
                **common,
                "checks": dict(card["checks"]),
                "installments": None,
                "mandate": None,
                "three_d_secure": None,
                "wallet": None,
            }
            return {"type": "card", "card": details}
        details = {
            **common,
            "cardholder_name": card["cardholder_name"],
            "incremental_authorization_supported": False,
            "offline": None if pm.stored_at is None else {"stored_at": pm.stored_at, "type": "deferred"},
            "overcapture_supported": False,
            "read_method": card["read_method"],
        }
        return {"type": "card_present", "card_present": details}

    def get_charge(self, charge_id: str) -> dict[str, Any]:
        with self.lock:
            self._settle()
            charge = self.charges.get(charge_id)
            if charge is None:
                raise missing("charge", charge_id, "id")
            return dict(charge)

    def list_charges(self, params: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/charges``: newest first; ``payment_intent`` filters; paged like the intents list."""
        limit = min(_int(params, "limit", minimum=1) or 10, 100)
        with self.lock:
            self._settle()
            items = list(reversed(self.charges.values()))
            wanted = params.get("payment_intent")
            if wanted:
                items = [c for c in items if c["payment_intent"] == wanted]
            page, has_more = _page(items, params, limit, "charge")
        return {"object": "list", "data": page, "has_more": has_more, "url": "/v1/charges"}

    def capture(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._settle()
            intent = self.intents.get(intent_id)
            if intent is None:
                raise missing("payment_intent", intent_id, "intent")
            if intent["status"] != "requires_capture":
                raise self._unexpected(intent, "capture")
            amount = _int(params, "amount_to_capture", minimum=1) or intent["amount_capturable"]
            if amount > intent["amount_capturable"]:
                raise bad_param("amount_to_capture", "Amount to capture exceeds the amount capturable.")
            charge = self.charges[intent["latest_charge"]]
            charge.update(captured=True, amount_captured=amount)
            intent["metadata"].update(_metadata(params))
            intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
            return dict(intent)

    def cancel(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in ("abandoned", "duplicate", "fraudulent", "requested_by_customer"):
            raise bad_param("cancellation_reason", f"Invalid cancellation_reason: {reason}")
        with self.lock:
            self._settle()
            intent = self.intents.get(intent_id)
            if intent is None:
                raise missing("payment_intent", intent_id, "intent")
            if intent["status"] not in CANCELABLE:
                raise self._unexpected(intent, "cancel")
            if intent["status"] == "requires_capture":
                charge = self.charges[intent["latest_charge"]]
                charge.update(refunded=True, amount_refunded=charge["amount"])
            intent.update(
                status="canceled",
                canceled_at=self._now(),
                cancellation_reason=reason,
                amount_capturable=0,
                next_action=None,
            )
            return dict(intent)

    # -- refunds --------------------------------------------------------------------

    def refund(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._settle()
            charge_id = params.get("charge")
            pi_id = params.get("payment_intent")
            if pi_id:
                intent = self.intents.get(pi_id)
                if intent is None:
                    raise missing("payment_intent", pi_id, "payment_intent")
                charge_id = intent["latest_charge"]
            if not charge_id:
                raise SimError(
                    400, "One of `charge` or `payment_intent` is required.", code="parameter_missing", param="charge"
                )
            charge = self.charges.get(charge_id)
            if charge is None:
                raise missing("charge", charge_id, "charge")
            if charge["status"] != "succeeded" or not charge["captured"]:
                raise SimError(
                    400,
                    f"Charge {charge_id} has not been captured or did not succeed.",
                    code="charge_not_refundable",
                    saved=True,
                )
            remaining = charge["amount_captured"] - charge["amount_refunded"]
            amount = _int(params, "amount", minimum=1) or remaining
            if amount > remaining:
                raise SimError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
                    code="amount_too_large",
                    param="amount",
                    saved=True,
                )
            reason = params.get("reason")
            if reason is not None and reason not in ("duplicate", "fraudulent", "requested_by_customer"):
                raise bad_param("reason", f"Invalid reason: {reason}")
            refund_id = _id("re")
            refund = {
                "id": refund_id,
                "object": "refund",
                "amount": amount,
                "balance_transaction": None,
                "charge": charge_id,
                "created": self._now(),
                "currency": charge["currency"],
                "metadata": _metadata(params),
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded",
                "transfer_reversal": None,
            }
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
            self.refunds[refund_id] = refund
            return dict(refund)

    # -- the ledger -------------------------------------------------------------------

    def ledger(self) -> dict[str, list[dict[str, Any]]]:
        """Every authorisation attempt per offline id, oldest first ("pending" while processing)."""
        with self.lock:
            self._settle()
            out: dict[str, list[dict[str, Any]]] = {}
            for offline_id, charge_ids in self.charges_by_offline_id.items():
                entries = []
                for cid in charge_ids:
                    ch = self.charges[cid]
                    entries.append(
                        {
                            "charge": cid,
                            "payment_intent": ch["payment_intent"],
                            "amount": ch["amount"],
                            "currency": ch["currency"],
                            "status": ch["status"],
                            "captured": ch["captured"],
                            "amount_refunded": ch["amount_refunded"],
                            "decline_code": ch["outcome"]["reason"] if ch["outcome"] else None,
                            "offline": (ch["payment_method_details"].get("card_present") or {}).get("offline"),
                        }
                    )
                out[offline_id] = entries
            return out

    def successful_counts(self) -> dict[str, int]:
        """Successful charges per offline id: exactly-once means every value is 1."""
        with self.lock:
            self._settle()
            return {
                oid: sum(1 for cid in cids if self.charges[cid]["status"] == "succeeded")
                for oid, cids in self.charges_by_offline_id.items()
            }


def _page(
    items: list[dict[str, Any]], params: dict[str, Any], limit: int, kind: str
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a newest-first list, by ``starting_after`` / ``ending_before`` (Stripe's cursors)."""
    after = params.get("starting_after")
    before = params.get("ending_before")
    ids = [i["id"] for i in items]
    if after:
        if after not in ids:
            raise missing(kind, after, "starting_after")
        items = items[ids.index(after) + 1 :]
    elif before:
        if before not in ids:
            raise missing(kind, before, "ending_before")
        items = items[: ids.index(before)][-limit:]
    return [dict(i) for i in items[:limit]], len(items) > limit


def _clause_matches(intent: dict[str, Any], clause: tuple[str, str | None, str]) -> bool:
    field, key, value = clause
    if field == "metadata":
        return bool(intent["metadata"].get(key) == value)
    return bool(intent.get(field) == value)


def _page_token(offset: int) -> str:
    raw = json.dumps({"offset": offset}, separators=(",", ":")).encode()
    return "page_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_offset(page: Any) -> int:
    """The offset a ``next_page`` token stands for (0 without one); SimError 400 if it is not ours."""
    if page is None or page == "":
        return 0
    try:
        if not isinstance(page, str) or not page.startswith("page_"):
            raise ValueError(page)
        text = page[5:]
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        offset = data["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(page)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_param("page", "Invalid page token.") from None
    return offset
