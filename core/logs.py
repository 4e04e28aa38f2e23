"""Logging: what an app calls to set it up, and the redaction and correlation helpers plugins use.

Not part of the plugin contract: the pipeline lives in ``offterm.core._engine.logs`` (its module
docstring says how offterm's log lines reach an app); this module re-exports its public names
(``configure_logging``, ``reset_logging``, ``redact_processor``, ``redact_text``, ``redact_value``,
``bind_request``, ``bind_payment``...), listed in ``__all__``.
"""

from ._engine.logs import *  # noqa: F403
from ._engine.logs import __all__ as __all__
