"""The engine that runs the contract: Terminal, forwarder, exchange, network monitor, sessions.

Private: apps use ``offterm.core`` (``Terminal``, ``BlockingTerminal``); plugin authors read
the contract (``offterm.core.hookspecs``, ``registrations``, ``contracts``, ``models``,
``errors``, ``manager``) and never import from here.
"""

__all__: list[str] = []
