"""offterm-webhook: POST offterm's forwarding events as JSON to a webhook URL.

An example of a separately packaged third-party plugin.  The entry point
``webhook = "offterm_webhook:plugin"`` in the ``offterm`` group makes every
Terminal load :data:`plugin`, configured from the ``[plugins.webhook]`` table
of the offterm configuration file, or else from ``OFFTERM_WEBHOOK_*``
environment variables.
"""

from __future__ import annotations

from .payloads import build_event
from .plugin import OPTIONS, WebhookPlugin, WebhookSettings
from .sender import Delivery, WebhookSender

#: The instance the entry point loads (settings from ``[plugins.webhook]`` when a Terminal opens,
#: else read from the environment at each event).
plugin = WebhookPlugin()

__all__ = ["OPTIONS", "Delivery", "WebhookPlugin", "WebhookSender", "WebhookSettings", "build_event", "plugin"]
