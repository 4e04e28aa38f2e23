"""Typed errors, each with a stable ``code`` string.

Codes follow Stripe Terminal's offline error codes where one exists, so an
integrator who knows Stripe recognises them.  Messages never contain card
data, keys or tokens: build them from non-sensitive values only.
"""

from __future__ import annotations

from typing import Any


class OfftermError(Exception):
    """Base of every error offterm raises on purpose."""

    code: str = "offterm_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its attributes, not by calling __init__ again (subclasses take other arguments):
        # an error crossing to another process (the store's writer) arrives whole.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[OfftermError], args: tuple[Any, ...], state: dict[str, Any]) -> OfftermError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


# --- configuration and plugins -------------------------------------------------


class ConfigError(OfftermError):
    """The configuration is invalid; ``key`` names the offending setting."""

    code = "invalid_config"

    def __init__(self, key: str, message: str, value: Any = None) -> None:
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{key}: {message}{shown}", key=key)
        self.key = key


class PluginError(OfftermError):
    """A plugin could not be loaded, or registered something invalid."""

    code = "plugin_error"


class ComponentNotFound(PluginError):
    """A configured component name matches no registered provider."""

    code = "component_not_found"


class ComponentConflict(PluginError):
    """Two plugins registered a component under the same name."""

    code = "component_conflict"


class ComponentWrongType(PluginError):
    """A plugin's factory built something that is not the contract of its kind (names plugin, component, type)."""

    code = "component_wrong_type"


# --- payment intents and amounts -----------------------------------------------


class InvalidRequest(OfftermError):
    """The caller passed something the API cannot accept."""

    code = "invalid_request"


class UnknownCurrency(InvalidRequest):
    code = "unknown_currency"


class InvalidAmount(InvalidRequest):
    code = "invalid_amount"


class UnexpectedIntentState(InvalidRequest):
    """The intent is not in a state that allows the requested step."""

    code = "unexpected_sdk_call"


# --- offline acceptance (Stripe's offline error codes) --------------------------


class OfflineRefused(OfftermError):
    """A payment may not be taken offline; ``code`` says why.

    The refusals of one acceptance policy live with it: the bundled limits policy's
    (``AmountExceedsOfflineMaximum``...) in ``offterm.plugins.policies.limits``.
    """

    code = "offline_refused"

    def __init__(self, message: str, *, policy: str = "", **details: Any) -> None:
        super().__init__(message, policy=policy, **details)
        self.policy = policy


class NoLastSeenAccount(OfflineRefused):
    """Nothing can be stored before the terminal has been online once."""

    code = "no_last_seen_account"


class OfflineModeDisabled(OfflineRefused):
    code = "force_offline_with_feature_disabled"


class RequireOnlineWhileOffline(OfftermError):
    code = "not_connected_to_internet_and_require_online_set"


# --- storage -------------------------------------------------------------------


class StorageError(OfftermError):
    code = "storage_error"


class OfflineStorageFull(StorageError):
    """The disk is full: the payment was NOT stored; earlier ones are intact."""

    code = "offline_storage_full"


class WrongStorageKey(StorageError):
    """The database exists but the key does not open it. Nothing was changed."""

    code = "wrong_storage_key"


class StorageKeyUnavailable(StorageError):
    code = "storage_key_unavailable"


class StorageDamaged(StorageError):
    """The database file is damaged. It is preserved untouched."""

    code = "storage_damaged"


class EncryptionUnavailable(StorageError):
    """Encryption is configured but the cipher library is missing."""

    code = "encryption_unavailable"


class StoreNotFound(StorageError):
    """No store where the configuration points, and opening was told not to create one.  Nothing was written."""

    code = "storage_not_found"


class PaymentNotFound(StorageError):
    code = "payment_not_found"


class AmbiguousPaymentId(InvalidRequest):
    """A shortened payment id matches more than one payment; ``matches`` lists them."""

    code = "ambiguous_payment_id"


class InvalidTransition(StorageError):
    code = "invalid_transition"


# --- readers -------------------------------------------------------------------


class ReaderError(OfftermError):
    code = "reader_error"


class ReaderNotConnected(ReaderError):
    code = "not_connected_to_reader"


class ReaderDisconnected(ReaderError):
    """The reader went away during a collection; nothing was stored."""

    code = "bluetooth_disconnected"


class ReaderTimeout(ReaderError):
    code = "reader_timeout"


class CollectionCanceled(ReaderError):
    code = "canceled"


class ReaderProtocolError(ReaderError):
    """A frame from the reader was malformed."""

    code = "reader_protocol_error"


class CardReadError(ReaderError):
    code = "card_read_failed"


# --- processor and forwarding ----------------------------------------------------


class ProcessorError(OfftermError):
    """An error reported by, or on the way to, the payment processor."""

    code = "processor_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        if code:
            self.code = code
        self.decline_code = decline_code
        self.request_id = request_id
        self.http_status = http_status
        self.should_retry = should_retry


class CardDeclined(ProcessorError):
    """The processor declined the card; ``decline_code`` says why."""

    code = "card_declined"


class TransientProcessorError(ProcessorError):
    """Worth retrying: network failure, timeout, 5xx, 429, lock timeout."""

    code = "transient_processor_error"


class OutcomeUnknown(TransientProcessorError):
    """The request was sent but no answer came back. Retry with the SAME key."""

    code = "outcome_unknown"


class PermanentProcessorError(ProcessorError):
    """The processor rejected the request in a way retrying will not fix."""

    code = "invalid_request_error"


class AuthenticationFailed(ProcessorError):
    """The connection token or session was refused (expired, redeemed, wrong)."""

    code = "authentication_failed"


class AccountMismatch(ProcessorError):
    """A payment stored under one account or mode may not go to another."""

    code = "account_id_mismatch_while_forwarding"


class ConnectionTokenError(OfftermError):
    """The token provider owned the request but could not provide a token."""

    code = "connection_token_provider_error"
