"""offterm core: the Terminal API, the plugin contract, models and errors.

Public API::

    from offterm.core import Terminal, OfflineBehavior, hookimpl

Heavy dependencies (SQLCipher, bleak, httpx) are imported by the plugins
that need them, when a Terminal is built, not by importing this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from .hookspecs import hookimpl
from .models import (
    CaptureMethod,
    CardPresentDetails,
    IntentStatus,
    NetworkStatus,
    OfflineBehavior,
    OfflineDetails,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParams,
    ReadMethod,
)

if TYPE_CHECKING:
    from ._engine.blocking import BlockingTerminal
    from ._engine.terminal import CloseReport, Terminal, WaitingPayment
    from .config import Config, load_config
    from .manager import PluginManager, create_plugin_manager

_LAZY = {
    "Terminal": "_engine.terminal",
    "CloseReport": "_engine.terminal",
    "WaitingPayment": "_engine.terminal",
    "BlockingTerminal": "_engine.blocking",
    "Config": "config",
    "load_config": "config",
    "PluginManager": "manager",
    "create_plugin_manager": "manager",
}


def __getattr__(name: str) -> Any:
    """Import the Terminal machinery on first use, keeping ``import offterm.core`` cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'offterm.core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "BlockingTerminal",
    "CaptureMethod",
    "CardPresentDetails",
    "CloseReport",
    "Config",
    "IntentStatus",
    "NetworkStatus",
    "OfflineBehavior",
    "OfflineDetails",
    "OfflineStatus",
    "OfflineStatusDetails",
    "PaymentIntent",
    "PaymentIntentParams",
    "PluginManager",
    "ReadMethod",
    "Terminal",
    "WaitingPayment",
    "create_plugin_manager",
    "errors",
    "hookimpl",
    "load_config",
]
