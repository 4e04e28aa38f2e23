"""The behaviour each kind of plugin component must provide (ABCs).

Hooks return registrations (``offterm.core.registrations``) whose factories
build objects implementing these contracts.
"""

from .forwarding import (
    ForwardingTransport,
    IntentRequest,
    IntentSnapshot,
    PaymentError,
    ProcessorSession,
)
from .policies import AcceptanceRequest, ForwardingPolicy, OfflineAcceptancePolicy
from .readers import CardDetails, CardResult, CollectRequest, ReaderConnection, ReaderInfo, ReaderTransport
from .replication import (
    HubError,
    HubNotInitialised,
    HubOutcome,
    HubPermissionDenied,
    HubSchemaTooNew,
    HubUnavailable,
    LaneStatus,
    ReplicationRecord,
    Replicator,
    StateTotals,
    WrongHubKey,
)
from .storage import (
    HistoryEntry,
    NewPayment,
    OnlineAttempt,
    PaymentState,
    PaymentStore,
    StorageKeyProvider,
    StoredPayment,
    StoreSummary,
)
from .tokens import ConnectionToken, ConnectionTokenProvider, TokenRequest

__all__ = [
    "AcceptanceRequest",
    "CardDetails",
    "CardResult",
    "CollectRequest",
    "ConnectionToken",
    "ConnectionTokenProvider",
    "ForwardingPolicy",
    "ForwardingTransport",
    "HistoryEntry",
    "IntentRequest",
    "IntentSnapshot",
    "NewPayment",
    "OfflineAcceptancePolicy",
    "PaymentError",
    "OnlineAttempt",
    "PaymentState",
    "PaymentStore",
    "ProcessorSession",
    "ReaderConnection",
    "ReaderInfo",
    "ReaderTransport",
    "StorageKeyProvider",
    "StoreSummary",
    "StoredPayment",
    "TokenRequest",
    # replication to a store hub (issue #15)
    "HubError",
    "HubNotInitialised",
    "HubOutcome",
    "HubPermissionDenied",
    "HubSchemaTooNew",
    "HubUnavailable",
    "LaneStatus",
    "ReplicationRecord",
    "Replicator",
    "StateTotals",
    "WrongHubKey",
]
