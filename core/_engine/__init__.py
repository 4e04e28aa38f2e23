"""The engine that runs the contract: Terminal, forwarder, exchange, network monitor, sessions.

Also the machinery behind the plugin manager, the configuration loader and logging.  Private:
apps use ``offterm.core`` (``Terminal``, ``BlockingTerminal``); plugin authors read the contract
(``offterm.core.hookspecs``, ``registrations``, ``contracts``, ``models``, ``errors``,
``manager``, ``config``) and never import from here.  What apps and plugins use of the machinery
is re-exported by ``offterm.core.manager``, ``config``, ``logs``, ``paths`` and ``currency``.
"""

__all__: list[str] = []
