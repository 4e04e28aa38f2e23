"""Build the plugin manager and pick components by configured name.

A factory, never an import-time global: every Terminal (and every test) gets
its own manager.  Order of work, as in pytest and conda:

1. add the hookspecs;
2. block disabled names (before anything is imported);
3. register the bundled plugins from ``BUNDLED_PLUGINS``;
4. load third-party plugins from the ``offterm`` entry-point group, each in
   isolation: a broken one is a warning naming it (fatal in strict mode);
5. ``check_pending``: a hook name that matches no spec is a typo, and the
   plugin carrying it is rejected.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, cast

import pluggy
import structlog

from . import hookspecs
from .errors import ComponentConflict, ComponentNotFound, PluginError
from .registrations import (
    AcceptancePolicyRegistration,
    ForwardingPolicyRegistration,
    ForwardingTransportRegistration,
    ReaderTransportRegistration,
    Registration,
    StorageBackendRegistration,
    StorageKeyProviderRegistration,
    TokenProviderRegistration,
)

log = structlog.get_logger("offterm.plugins")

ENTRY_POINT_GROUP = "offterm"

#: Bundled plugins: (name, module).  The names are also their entry-point names.
BUNDLED_PLUGINS: tuple[tuple[str, str], ...] = (
    ("simulated-reader", "offterm.plugins.readers.simulated"),
    ("serial-reader", "offterm.plugins.readers.serial"),
    ("ble-reader", "offterm.plugins.readers.ble"),
    ("sqlcipher", "offterm.plugins.storage.sqlcipher"),
    ("memory-store", "offterm.plugins.storage.memory"),
    ("storage-keys", "offterm.plugins.storage.keys"),
    ("stripe", "offterm.plugins.transport.stripe"),
    ("token-providers", "offterm.plugins.transport.tokens"),
    ("offline-limits", "offterm.plugins.policies.limits"),
    ("forwarding-policy", "offterm.plugins.policies.backoff"),
)

ENV_DISABLE = "OFFTERM_DISABLE_PLUGINS"  # comma-separated plugin names
ENV_NO_AUTOLOAD = "OFFTERM_DISABLE_PLUGIN_AUTOLOAD"  # "1": skip entry points
ENV_STRICT = "OFFTERM_STRICT_PLUGINS"  # "1": a broken plugin is fatal
ENV_TRACE = "OFFTERM_TRACE_HOOKS"  # "1": log every hook call

R = TypeVar("R", bound=Registration[Any])


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from (for ``offterm plugins`` / doctor)."""

    name: str
    source: str  # "bundled" | "entry point <dist> <version>" | "registered"
    module: str


@dataclass(frozen=True)
class _Provided:
    registration: Registration[Any]
    plugin: str


class PluginManager:
    """Typed front of the pluggy manager: one method per hook."""

    def __init__(self, pm: pluggy.PluginManager, strict: bool) -> None:
        self.pm = pm
        self.strict = strict
        self.info: dict[str, PluginInfo] = {}
        self.load_failures: dict[str, str] = {}

    # -- registration ---------------------------------------------------------

    def register(self, plugin: object, name: str, source: str = "registered") -> None:
        """Register a plugin object (module or instance); rejects misspelled hooks."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f'plugin "{name}" implements an unknown hook: {exc}') from exc
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.info[name] = PluginInfo(name=name, source=source, module=module)

    def _fail(self, name: str, message: str, exc: BaseException) -> None:
        self.load_failures[name] = message
        if self.strict:
            raise PluginError(f"{message} (strict mode: set {ENV_STRICT}=0 to only warn)") from exc
        log.warning("plugin_load_failed", plugin=name, error=message)
        warnings.warn(f"offterm: {message}; the plugin is skipped", RuntimeWarning, stacklevel=3)

    # -- components -------------------------------------------------------------

    def _collect(self, hook_name: str, expected: type[R]) -> dict[str, _Provided]:
        """Call one registration hook per plugin, isolating failures, and index by name."""
        hook = getattr(self.pm.hook, hook_name)
        found: dict[str, _Provided] = {}
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            try:
                items = list(impl.function() or ())
                for item in items:
                    if not isinstance(item, expected):
                        raise PluginError(f"{hook_name} yielded {type(item).__name__}, expected {expected.__name__}")
            except Exception as exc:
                self._fail(plugin, f'plugin "{plugin}" failed in {hook_name}: {exc}', exc)
                continue
            for item in items:
                if item.name in found:
                    other = found[item.name].plugin
                    raise ComponentConflict(
                        f"two plugins provide {expected.kind} component {item.name!r}: "  # type: ignore[attr-defined]
                        f'"{other}" and "{plugin}"; disable one of them'
                    )
                found[item.name] = _Provided(item, plugin)
        return found

    def _select(self, hook_name: str, expected: type[R], name: str) -> R:
        found = self._collect(hook_name, expected)
        if name not in found:
            kind = expected.kind  # type: ignore[attr-defined]
            choices = ", ".join(sorted(found)) or "none registered"
            raise ComponentNotFound(f"no {kind} component named {name!r}. Choose one of: {choices}")
        return cast(R, found[name].registration)

    def provider_of(self, hook_name: str, expected: type[R], name: str) -> str:
        """Name of the plugin that provides component ``name`` (for doctor output)."""
        return self._collect(hook_name, expected)[name].plugin

    def available(self, kind: str) -> dict[str, str]:
        """Component name -> providing plugin, for one kind."""
        hook_name, expected = COMPONENT_KINDS[kind]
        return {n: p.plugin for n, p in self._collect(hook_name, expected).items()}

    def reader_transport(self, name: str) -> ReaderTransportRegistration:
        return self._select("offterm_reader_transports", ReaderTransportRegistration, name)

    def storage_backend(self, name: str) -> StorageBackendRegistration:
        return self._select("offterm_storage_backends", StorageBackendRegistration, name)

    def storage_key_provider(self, name: str) -> StorageKeyProviderRegistration:
        return self._select("offterm_storage_key_providers", StorageKeyProviderRegistration, name)

    def token_provider(self, name: str) -> TokenProviderRegistration:
        return self._select("offterm_connection_token_providers", TokenProviderRegistration, name)

    def forwarding_transport(self, name: str) -> ForwardingTransportRegistration:
        return self._select("offterm_forwarding_transports", ForwardingTransportRegistration, name)

    def forwarding_policy(self, name: str) -> ForwardingPolicyRegistration:
        return self._select("offterm_forwarding_policies", ForwardingPolicyRegistration, name)

    def acceptance_policies(self) -> list[AcceptancePolicyRegistration]:
        """All offline acceptance policies, sorted by name (order-independent)."""
        found = self._collect("offterm_offline_acceptance_policies", AcceptancePolicyRegistration)
        return [cast(AcceptancePolicyRegistration, found[n].registration) for n in sorted(found)]

    # -- events -------------------------------------------------------------------

    def emit(self, event: str, **kwargs: Any) -> None:
        """Call every listener of ``offterm_on_<event>``; one failing never stops the others."""
        hook = getattr(self.pm.hook, f"offterm_on_{event}")
        for impl in hook.get_hookimpls():  # registration order
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:  # a listener must never break a payment
                log.error(
                    "event_listener_failed",
                    plugin=impl.plugin_name,
                    hook=f"offterm_on_{event}",
                    error_type=type(exc).__name__,
                    error=str(exc),
                )


#: kind -> (hook name, registration class)
COMPONENT_KINDS: dict[str, tuple[str, type[Registration[Any]]]] = {
    "reader": ("offterm_reader_transports", ReaderTransportRegistration),
    "storage": ("offterm_storage_backends", StorageBackendRegistration),
    "storage_key": ("offterm_storage_key_providers", StorageKeyProviderRegistration),
    "tokens": ("offterm_connection_token_providers", TokenProviderRegistration),
    "forwarding": ("offterm_forwarding_transports", ForwardingTransportRegistration),
    "acceptance": ("offterm_offline_acceptance_policies", AcceptancePolicyRegistration),
    "forwarding_policy": ("offterm_forwarding_policies", ForwardingPolicyRegistration),
}


def _env_names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def create_plugin_manager(
    *,
    disabled: Iterable[str] = (),
    autoload: bool = True,
    strict: bool = False,
    plugins: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None,
    bundled: Iterable[tuple[str, str]] = BUNDLED_PLUGINS,
) -> PluginManager:
    """Create a fresh manager.

    :param disabled: plugin names (bundled or entry-point names) never to load.
    :param autoload: load third-party plugins from entry points.
    :param strict: a plugin that fails to load is fatal instead of a warning.
    :param plugins: extra plugin objects to register by name (tests, apps).
    :param env: environment to read the OFFTERM_* switches from (default os.environ).
    :param entry_points: where entry points come from (default importlib.metadata).
    :param bundled: (name, module) of built-in plugins (default BUNDLED_PLUGINS).
    """
    env = os.environ if env is None else env
    blocked = set(disabled) | _env_names(env.get(ENV_DISABLE))
    if _truthy(env.get(ENV_NO_AUTOLOAD)):
        autoload = False
    strict = strict or _truthy(env.get(ENV_STRICT))

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    manager = PluginManager(pm, strict=strict)
    if _truthy(env.get(ENV_TRACE)):
        pm.trace.root.setwriter(lambda msg: log.debug("hook_trace", msg=msg.rstrip()))
        pm.enable_tracing()

    bundled = tuple(bundled)
    bundled_modules = {module for _, module in bundled}
    for name, module_name in bundled:
        if pm.is_blocked(name) or pm.is_blocked(module_name):
            continue
        module: ModuleType = importlib.import_module(module_name)  # bundled: a failure is a bug, fail loudly
        manager.register(module, name, source="bundled")

    if autoload:
        eps = entry_points() if entry_points else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in eps:
            if ep.value in bundled_modules or pm.is_blocked(ep.name):
                continue
            if pm.get_plugin(ep.name) is not None:
                manager._fail(
                    ep.name,
                    f'plugin "{ep.name}" ({ep.value}) clashes with an already registered plugin of that name',
                    PluginError(ep.name),
                )
                continue
            try:
                loaded = ep.load()
            except Exception as exc:
                manager._fail(ep.name, f'error importing plugin "{ep.name}" ({ep.value}): {exc}', exc)
                continue
            dist = getattr(ep, "dist", None)
            source = f"entry point {dist.name} {dist.version}" if dist else "entry point"
            try:
                manager.register(loaded, ep.name, source=source)
            except PluginError as exc:
                manager._fail(ep.name, str(exc), exc)

    for name, plugin in (plugins or {}).items():
        if not pm.is_blocked(name):
            manager.register(plugin, name)
    return manager
