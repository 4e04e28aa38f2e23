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
from .policies import AcceptanceRequest, FleetExposure, ForwardingPolicy, OfflineAcceptancePolicy
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
    "FleetExposure",
    "ForwardingPolicy",
    "ForwardingTransport",
    "HistoryEntry",
    "HubError",
    "HubNotInitialised",
    "HubOutcome",
    "HubPermissionDenied",
    "HubSchemaTooNew",
    "HubUnavailable",
    "IntentRequest",
    "IntentSnapshot",
    "LaneStatus",
    "NewPayment",
    "OfflineAcceptancePolicy",
    "OnlineAttempt",
    "PaymentError",
    "PaymentState",
    "PaymentStore",
    "ProcessorSession",
    "ReaderConnection",
    "ReaderInfo",
    "ReaderTransport",
    "ReplicationRecord",
    "Replicator",
    "StateTotals",
    "StorageKeyProvider",
    "StoreSummary",
    "StoredPayment",
    "TokenRequest",
    "WrongHubKey",
]
