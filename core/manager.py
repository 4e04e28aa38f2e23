"""The plugin manager: loads plugins and picks each component by the name the configuration gives.

``create_plugin_manager()`` builds a fresh one per Terminal (never an import-time global): it adds
the hookspecs, blocks disabled names before anything is imported, registers ``BUNDLED_PLUGINS``,
then the ``offterm`` entry points, each in isolation (a broken plugin is a warning naming it, fatal
in strict mode), and rejects a hook name that matches no hookspec.  Hooks are called through pluggy;
a failing listener is logged and skipped.  docs/plugins.md, "How plugins are loaded", tells it in
full; the machinery lives in ``offterm.core._engine.manager``.
"""

from ._engine import manager as _manager
from ._engine.manager import PluginInfo, PluginManager, create_plugin_manager

#: The entry-point group third-party plugins register their module in.
ENTRY_POINT_GROUP = _manager.ENTRY_POINT_GROUP
#: Bundled plugins, ``(name, module)``, registered before entry points; the names are their entry-point names.
BUNDLED_PLUGINS = _manager.BUNDLED_PLUGINS
#: Component kind (its config section) -> (registration hook, registration class).
COMPONENT_KINDS = _manager.COMPONENT_KINDS

__all__ = [
    "BUNDLED_PLUGINS",
    "COMPONENT_KINDS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "create_plugin_manager",
]
