"""The offterm plugin contract: every hook a plugin may implement, with ``offterm.core.hookimpl``.

Two families:

* **Registration hooks** (``offterm_*``) return an iterable of typed registrations.  The core
  collects all of them and picks single components (storage, key provider, reader transport,
  forwarding transport, forwarding policy, replicator, token providers) by the *name the
  configuration gives*, never by hook order.  Offline acceptance policies are different: all apply.
* **Event hooks** (``offterm_on_*``) are notifications; their return value is ignored.  Each
  listener is called on its own: one that raises is logged with its plugin's name and never affects
  a payment or the other listeners.

No hook is ``firstresult``: every plugin's answer is used.  Hooks are synchronous (pluggy has no
async); components expose async methods where they do I/O.  Hooks are called with keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .contracts import ReaderInfo
    from .contracts.storage import OnlineAttempt
    from .errors import OfftermError
    from .models import NetworkStatus, OfflineStatus, PaymentIntent
    from .registrations import (
        AcceptancePolicyRegistration,
        ForwardingPolicyRegistration,
        ForwardingTransportRegistration,
        ListenerSettingsRegistration,
        ReaderTransportRegistration,
        ReplicatorRegistration,
        StorageBackendRegistration,
        StorageKeyProviderRegistration,
        TokenProviderRegistration,
    )

PROJECT_NAME = "offterm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- Registration hooks: components chosen by configured name ---------------------------------


@hookspec
def offterm_reader_transports() -> Iterable[ReaderTransportRegistration]:
    """Register ways of reaching card readers.

    A transport discovers readers and opens connections; a connection collects a card for an amount
    and returns a ``CardResult`` (card data encrypted for the processor, plus non-sensitive details).
    Selected by ``[reader] transport``.

    :return: an iterable of ``ReaderTransportRegistration``.

    Example::

        @hookimpl
        def offterm_reader_transports():
            yield ReaderTransportRegistration(name="ble", factory=BleTransport)
    """


@hookspec
def offterm_storage_backends() -> Iterable[StorageBackendRegistration]:
    """Register secure storage backends for offline payments.

    The backend must commit durably before ``store`` returns and keep a payment under exactly one
    claim at a time.  Selected by ``[storage] backend``.

    :return: an iterable of ``StorageBackendRegistration``.
    """


@hookspec
def offterm_storage_key_providers() -> Iterable[StorageKeyProviderRegistration]:
    """Register sources of the storage encryption key (OS keyring, file, env...).

    Selected by ``[storage] key_provider``.  A provider returns None from ``get_key`` for "no key
    here", and raises ``StorageKeyUnavailable`` when it has the key but cannot read it.

    :return: an iterable of ``StorageKeyProviderRegistration``.
    """


@hookspec
def offterm_connection_token_providers() -> Iterable[TokenProviderRegistration]:
    """Register connection-token providers (your backend, a callable...).

    The providers named in ``[tokens] providers`` are asked in that order: ``fetch`` returning None
    means "not mine" and the next one is asked; a raised ``ConnectionTokenError`` means "mine, but it
    failed" and stops the search.

    :return: an iterable of ``TokenProviderRegistration``.
    """


@hookspec
def offterm_forwarding_transports() -> Iterable[ForwardingTransportRegistration]:
    """Register processor transports (the bundled one speaks Stripe's API); selected by ``[forwarding] transport``.

    :return: an iterable of ``ForwardingTransportRegistration``.
    """


@hookspec
def offterm_offline_acceptance_policies() -> Iterable[AcceptancePolicyRegistration]:
    """Register offline acceptance policies.

    Unlike other components, *every* registered policy applies: a payment is stored offline only if
    all approve.  All are evaluated and refusals are reported sorted by policy name, so the outcome
    never depends on registration order.

    :return: an iterable of ``AcceptancePolicyRegistration``.
    """


@hookspec
def offterm_forwarding_policies() -> Iterable[ForwardingPolicyRegistration]:
    """Register forwarding policies (ordering, retry pacing, giving up); selected by ``[forwarding] policy``.

    :return: an iterable of ``ForwardingPolicyRegistration``.
    """


# --- Settings of event listeners: [plugins.<name>] in the configuration file ------------------


@hookspec
def offterm_listener_settings() -> Iterable[ListenerSettingsRegistration]:
    """Declare the settings a plugin reads from its ``[plugins.<name>]`` table.

    Called when a Terminal opens, before any event hook.  For each registration the table
    ``[plugins.<name>]`` is validated against its ``options`` (``OptionSpec`` objects, checked exactly
    as component options: a bad value is a ``ConfigError`` naming ``plugins.<name>.<key>``; a
    ``secret`` option may come from ``OFFTERM_PLUGINS_<NAME>_<KEY>``), then ``apply`` is called with
    the validated options, every declared key present (defaults included), even when the file has no
    such table.  A ``[plugins.<name>]`` table no plugin declares is a ``ConfigError`` (unless
    ``<name>`` is a disabled plugin).  Two plugins declaring one name fail loudly, naming both.

    Not ``firstresult``: every plugin's registrations are collected, like the component registration
    hooks.  ``apply`` may raise ``ConfigError`` for a value the option specs cannot express (it stops
    the Terminal); any other exception is reported as a failure of the plugin.

    :return: an iterable of ``ListenerSettingsRegistration``.

    Example::

        @hookimpl
        def offterm_listener_settings():
            yield ListenerSettingsRegistration(
                name="webhook",
                options=(OptionSpec("url", str, None, "Where to POST events."),),
                apply=lambda options: sender.configure(options["url"]),
            )
    """


# --- Event hooks: notifications, return value ignored, failures isolated ----------------------


@hookspec
def offterm_on_offline_status_changed(status: OfflineStatus) -> None:
    """The offline status changed (count or amounts stored, network status).

    :param status: the new ``OfflineStatus``.
    :return: ignored.
    """


@hookspec
def offterm_on_network_status_changed(status: NetworkStatus, previous: NetworkStatus) -> None:
    """The processor became reachable or unreachable.

    :param status: the new network status.
    :param previous: the status before the change.
    :return: ignored.
    """


@hookspec
def offterm_on_payment_stored(intent: PaymentIntent) -> None:
    """A payment was durably stored offline (already committed to disk).

    :param intent: the intent, with ``offline_details.requires_upload`` True.
    :return: ignored.
    """


@hookspec
def offterm_on_payment_intent_forwarded(intent: PaymentIntent, error: OfftermError | None) -> None:
    """All forwarding requests for one stored payment finished.

    Called once per payment per outcome.  ``error`` is None when the processor authorised it; a
    ``CardDeclined`` means "declined after forwarding" (the customer has already left); any other
    error means it now needs attention.

    :param intent: the intent; ``id`` is the processor's id when known.
    :param error: None on success, otherwise why it did not succeed.
    :return: ignored.
    """


@hookspec
def offterm_on_online_payment_recovered(payment: OnlineAttempt) -> None:
    """An online confirm that a crash interrupted was reconciled with the processor.

    Before an online confirm is sent, the Terminal journals it in the store; a process that dies
    before the answer leaves the entry behind.  Once that process is provably gone, a Terminal on the
    same store (normally the one started after the crash) looks the payment up at the processor and
    resolves the entry.  Called once per entry; ``Terminal.recovered_payments()`` lists the same.

    :param payment: the journal entry, resolved: ``resolution`` is ``"charged"`` (the processor has
        the money: the POS must not take the card again), ``"declined"`` or ``"not_charged"`` (its
        intent, if one was made, is canceled so nothing can charge it later); ``intent_id`` is the
        processor's intent when there was one.
    :return: ignored.
    """


@hookspec
def offterm_on_forwarding_failure(error: OfftermError) -> None:
    """Forwarding failed for a reason not tied to one payment.

    For example the connection-token provider failed, or authentication was refused.  Stored
    payments are untouched and will be retried.

    :param error: the typed error.
    :return: ignored.
    """


@hookspec
def offterm_on_reader_connected(reader: ReaderInfo) -> None:
    """A reader connected.

    :param reader: the connected reader.
    :return: ignored.
    """


@hookspec
def offterm_on_reader_disconnected(reader: ReaderInfo, reason: str) -> None:
    """A reader disconnected, on request or unexpectedly.

    :param reader: the reader.
    :param reason: "requested", or what went wrong.
    :return: ignored.
    """


@hookspec
def offterm_on_reader_reconnecting(reader: ReaderInfo, attempt: int) -> None:
    """The Terminal is trying to reconnect to a reader that went away.

    :param reader: the reader.
    :param attempt: 1 for the first attempt.
    :return: ignored.
    """


# --- Replication to a store hub (docs/fleet.md) -----------------------------------------------


@hookspec
def offterm_replicators() -> Iterable[ReplicatorRegistration]:
    """Register ways of replicating a lane's stored payments to a store hub.

    A ``Replicator`` copies every stored payment, its state changes and history to a hub the lanes of
    a store share, with the guarantees ``offterm.core.contracts.replication`` lists.  Selected by
    ``[hub] replicator`` (empty: no hub); its options live in ``[replicator.<name>]``.  Bundled:
    ``postgres``.

    :return: an iterable of ``ReplicatorRegistration``.
    """
