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

Every hook is called through pluggy (``pm.hook.<name>(...)``), so wrappers
(``wrapper=True`` and old-style ``hookwrapper=True``), ``tryfirst`` /
``trylast`` and pluggy's tracing behave as pluggy documents.  Isolation comes
from :class:`GuardedPluggy`: when a plugin is registered, each of its hook
functions is replaced by a guard that knows the plugin's name.  A failing
event listener or wrapper is logged and skipped; a failing registration
function hands its error back, tagged with the plugin, to the manager.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, cast

import pluggy
import structlog

from .. import hookspecs
from ..errors import ComponentConflict, ComponentNotFound, ConfigError, PluginError
from ..registrations import (
    AcceptancePolicyRegistration,
    ForwardingPolicyRegistration,
    ForwardingTransportRegistration,
    ListenerSettingsRegistration,
    ReaderTransportRegistration,
    Registration,
    ReplicatorRegistration,
    StorageBackendRegistration,
    StorageKeyProviderRegistration,
    TokenProviderRegistration,
)

# logs is imported for its side effect: offterm's structlog loggers go to the logging module (redacted,
# stderr at worst), never structlog's default of printing to stdout, even when an app builds a
# manager before anything imports the Terminal.
from . import logs  # noqa: F401
from .config import CORE_OPTIONS, Config, closest

log = structlog.get_logger("offterm.plugins")
#: pluggy's hook trace (``OFFTERM_TRACE_HOOKS``) goes through stdlib logging at
#: DEBUG: ``configure_logging`` renders (and redacts) it; unconfigured, it is
#: dropped.  Never stdout.
trace_log = logging.getLogger("offterm.plugins.trace")

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
    ("hub-limits", "offterm.plugins.policies.hub_limits"),
    ("forwarding-policy", "offterm.plugins.policies.backoff"),
    ("postgres-hub", "offterm.plugins.storage.postgres"),
)

ENV_DISABLE = "OFFTERM_DISABLE_PLUGINS"  # comma-separated plugin names
ENV_NO_AUTOLOAD = "OFFTERM_DISABLE_PLUGIN_AUTOLOAD"  # "1": skip entry points
ENV_STRICT = "OFFTERM_STRICT_PLUGINS"  # "1": a broken plugin is fatal
ENV_TRACE = "OFFTERM_TRACE_HOOKS"  # "1": log every hook call

EVENT_HOOK_PREFIX = "offterm_on_"

R = TypeVar("R", bound=Registration[Any])
#: anything ``_collect`` indexes by name: a component registration or a listener's settings
N = TypeVar("N", bound=Registration[Any] | ListenerSettingsRegistration)


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


class PluginItems(list[Any]):
    """What one plugin's registration function returned, tagged with the plugin.

    A plain list of registrations (wrappers and other callers can iterate it
    as the hookspec says), plus who made it and, if it raised, the error.
    """

    def __init__(self, plugin: str, items: Iterable[Any] = (), error: Exception | None = None) -> None:
        super().__init__(items)
        self.plugin = plugin
        self.error = error


def _log_listener_failure(plugin: str, hook_name: str, exc: Exception, *, wrapper: bool = False) -> None:
    log.error(
        "event_listener_failed",
        plugin=plugin,
        hook=hook_name,
        wrapper=wrapper,
        error_type=type(exc).__name__,
        error=str(exc),
    )


def _with_failure(result: object, plugin: str, exc: Exception) -> object:
    """A registration wrapper failed: keep the result, add the failure for ``_collect`` to report."""
    results = list(result) if isinstance(result, list) else []
    return [*results, PluginItems(plugin, error=exc)]


def _guard_wrapper(
    function: Callable[..., Any], on_error: Callable[[Exception, object], object]
) -> Callable[..., Generator[None, Any, object]]:
    """A new-style (``wrapper=True``) wrapper that can fail without failing the call.

    If the plugin's generator raises before or after its ``yield`` (or does not
    yield exactly once), ``on_error(exc, result)`` reports it and gives the
    result to pass on.  An exception from inside the call is thrown into the
    plugin's generator exactly as pluggy does.
    """

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, Any, object]:
        gen = function(*args, **kwargs)
        try:
            next(gen)
        except Exception as exc:  # raised (or returned) before its yield
            return on_error(exc, (yield))
        try:
            result = yield
        except BaseException as exc:
            try:
                gen.throw(exc)
            except StopIteration as stop:
                return stop.value
            gen.close()
            raise
        try:
            gen.send(result)
        except StopIteration as stop:
            return stop.value
        except Exception as exc:
            return on_error(exc, result)
        gen.close()
        return on_error(RuntimeError(f"wrapper {function.__name__} yielded more than once"), result)

    return guarded


def _guard_old_style_wrapper(
    function: Callable[..., Any], on_error: Callable[[Exception, object], object]
) -> Callable[..., Generator[None, pluggy.Result[Any], None]]:
    """An old-style (``hookwrapper=True``) wrapper that can fail without failing the call."""

    def failed(exc: Exception, outcome: pluggy.Result[Any]) -> None:
        if outcome.exception is None:
            outcome.force_result(on_error(exc, outcome.get_result()))
        else:
            on_error(exc, None)

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, pluggy.Result[Any], None]:
        gen = function(*args, **kwargs)
        try:
            next(gen)
        except Exception as exc:
            failed(exc, (yield))
            return
        outcome = yield
        try:
            gen.send(outcome)
        except StopIteration:
            return
        except Exception as exc:
            failed(exc, outcome)
            return
        gen.close()
        failed(RuntimeError(f"hookwrapper {function.__name__} yielded more than once"), outcome)

    return guarded


def _guard_listener(function: Callable[..., Any], plugin: str, hook_name: str) -> Callable[..., None]:
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except Exception as exc:  # a listener must never break a payment
            _log_listener_failure(plugin, hook_name, exc)

    return guarded


def _guard_registration(function: Callable[..., Any], plugin: str) -> Callable[..., PluginItems]:
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> PluginItems:
        try:  # consume here: a generator raises while it is iterated
            return PluginItems(plugin, list(function(*args, **kwargs) or ()))
        except Exception as exc:
            return PluginItems(plugin, error=exc)

    return guarded


def _by_keyword(function: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Any]:
    """Call ``function`` with keyword arguments, as the hookspecs promise (pluggy passes them by position)."""
    if not argnames:
        return function

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(**dict(zip(argnames, args, strict=True)), **kwargs)

    return call


def _guard(impl: pluggy.HookImpl, hook_name: str) -> Callable[..., Any]:
    plugin = impl.plugin_name
    function = _by_keyword(impl.function, impl.argnames)
    on_error: Callable[[Exception, object], object]
    if hook_name.startswith(EVENT_HOOK_PREFIX):
        if not (impl.wrapper or impl.hookwrapper):
            return _guard_listener(function, plugin, hook_name)

        def on_error(exc: Exception, result: object) -> object:
            _log_listener_failure(plugin, hook_name, exc, wrapper=True)
            return result

    else:
        if not (impl.wrapper or impl.hookwrapper):
            return _guard_registration(function, plugin)

        def on_error(exc: Exception, result: object) -> object:
            return _with_failure(result, plugin, exc)

    if impl.hookwrapper:
        return _guard_old_style_wrapper(function, on_error)
    return _guard_wrapper(function, on_error)


class GuardedPluggy(pluggy.PluginManager):
    """pluggy's manager, with every hook function of a plugin guarded at registration.

    Calls still go through pluggy (ordering, wrappers, tracing); only the
    function each ``HookImpl`` calls is swapped for one that isolates and
    names failures (the argument names pluggy passes were already taken
    from the original function).
    """

    def register(self, plugin: object, name: str | None = None) -> str | None:
        plugin_name = super().register(plugin, name)
        if plugin_name is None:
            return None
        for caller in self.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    # HookImpl.function is Final to type checkers only; this is
                    # the one place offterm changes it.
                    setattr(impl, "function", _guard(impl, caller.name))  # noqa: B010
        return plugin_name


class PluginManager:
    """Typed front of the pluggy manager: one method per hook."""

    def __init__(self, pm: pluggy.PluginManager, strict: bool) -> None:
        self.pm = pm
        self.strict = strict
        self.info: dict[str, PluginInfo] = {}
        self.load_failures: dict[str, str] = {}
        #: (plugin, message) already reported: each failure is one log line per manager, however
        #: often the Terminal looks the same kind up again
        self._reported: set[tuple[str, str]] = set()

    # -- registration ---------------------------------------------------------

    def register(self, plugin: object, name: str, source: str = "registered") -> None:
        """Register a plugin object (module or instance); rejects misspelled hooks.

        A hook name that matches no hookspec is named, with the closest real
        hook: ``plugin "x" implements an unknown hook "offterm_on_payment_stord"
        (did you mean offterm_on_payment_stored?)``.
        """
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # e.g. an argument the hookspec does not have
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(f'plugin "{name}" is not a valid offterm plugin: {detail}') from exc
        unknown = self._unknown_hooks(plugin)
        try:
            if unknown:
                raise pluggy.PluginValidationError(plugin, f"unknown hooks {unknown}")
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(_unknown_hooks_message(name, unknown) if unknown else f'plugin "{name}": {exc}') from exc
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.info[name] = PluginInfo(name=name, source=source, module=module)

    def _unknown_hooks(self, plugin: object) -> list[str]:
        """Names of ``plugin``'s hook functions that match no hookspec (pluggy's ``optionalhook`` aside)."""
        return sorted(
            caller.name
            for caller in self.pm.get_hookcallers(plugin) or ()
            if not caller.has_spec()
            and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
        )

    def _fail(self, name: str, message: str, exc: BaseException) -> None:
        """A plugin failed: fatal in strict mode, else one log line per manager (never a Python warning).

        Logging only: ``warnings.warn`` would bypass redaction and, with the
        Terminal looking each kind up several times, repeat itself.
        """
        self.load_failures[name] = message
        if self.strict:
            raise PluginError(f"{message} (strict mode: set {ENV_STRICT}=0 to only warn)") from exc
        if (name, message) in self._reported:
            return
        self._reported.add((name, message))
        log.warning("plugin_load_failed", plugin=name, error=message)

    # -- components -------------------------------------------------------------

    def _collect(self, hook_name: str, expected: type[N]) -> dict[str, _Provided]:
        """Call one registration hook through pluggy and index its components by name.

        Each plugin's answer comes back tagged (``PluginItems``), so a failure
        is attributed to its plugin and two providers of one name are both named.
        """
        found: dict[str, _Provided] = {}
        for answer in getattr(self.pm.hook, hook_name)():
            if isinstance(answer, PluginItems):
                plugin, error, items = answer.plugin, answer.error, list(answer)
            else:  # a hook wrapper replaced an answer with something of its own
                plugin, error, items = "(a hook wrapper)", None, []
                try:
                    items = list(answer or ())
                except Exception as exc:
                    error = exc
            if error is None:
                wrong = [item for item in items if not isinstance(item, expected)]
                if wrong:
                    error = PluginError(f"{hook_name} yielded {type(wrong[0]).__name__}, expected {expected.__name__}")
            if error is not None:
                self._fail(plugin, f'plugin "{plugin}" failed in {hook_name}: {error}', error)
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
            raise ComponentNotFound(self._not_found_message(f"no {kind} component named {name!r}", name, found))
        return cast(R, found[name].registration)

    def _not_found_message(self, what: str, name: str, found: Mapping[str, object]) -> str:
        """``what``, the closest name, the choices, and every plugin that failed to load (it may be the one)."""
        guess = closest(name, found)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        choices = ", ".join(sorted(found)) or "none registered"
        failed = "".join(
            f'; plugin "{plugin}" failed to load: {message}' for plugin, message in sorted(self.load_failures.items())
        )
        return f"{what}{hint}. Choose one of: {choices}{failed}"

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

    # -- listener settings ---------------------------------------------------------

    def listener_settings(self) -> dict[str, ListenerSettingsRegistration]:
        """Every ``[plugins.<name>]`` settings declaration, by name (``offterm_listener_settings``)."""
        found = self._collect("offterm_listener_settings", ListenerSettingsRegistration)
        reserved = {spec.key for spec in CORE_OPTIONS["plugins"]}
        settings: dict[str, ListenerSettingsRegistration] = {}
        for name, provided in found.items():
            if name in reserved:  # [plugins] <name> is a core key, never a table
                error = PluginError(f"settings name {name!r} is a core [plugins] key")
                self._fail(
                    provided.plugin, f'plugin "{provided.plugin}" failed in offterm_listener_settings: {error}', error
                )
                continue
            settings[name] = cast(ListenerSettingsRegistration, provided.registration)
        return settings

    def apply_listener_settings(self, config: Config) -> None:
        """Validate each listener's ``[plugins.<name>]`` table and hand the options to its ``apply``.

        Called by the Terminal when it opens, before any event.  Options are
        validated by the same code as component options (``plugins.<name>.<key>``
        names a bad value; ``secret`` ones may come from
        ``OFFTERM_PLUGINS_<NAME>_<KEY>``); ``apply`` gets every declared key,
        defaults included, even with no table in the file.  A table that no
        plugin declares is a ConfigError, unless its name is a disabled plugin
        or one that failed to load.  ``apply`` raising ConfigError stops the
        Terminal; any other exception is a plugin failure (logged once, fatal
        in strict mode).
        """
        settings = self.listener_settings()
        for name in config.plugin_options:
            if name in settings or self.pm.is_blocked(name) or name in self.load_failures:
                continue
            guess = closest(name, settings)
            hint = f" (did you mean [plugins.{guess}]?)" if guess else ""
            choices = ", ".join(sorted(settings)) or "none"
            raise ConfigError(
                f"plugins.{name}", f"no plugin reads these settings{hint}; plugins with settings: {choices}"
            )
        for name, registration in sorted(settings.items()):
            options = config.plugin_settings(name, registration.options)
            try:
                registration.apply(options)
            except ConfigError:
                raise
            except Exception as exc:
                plugin = self.listener_settings_provider(name)
                self._fail(plugin, f'plugin "{plugin}" failed to apply [plugins.{name}]: {exc}', exc)

    def listener_settings_provider(self, name: str) -> str:
        """Name of the plugin that declared the settings ``[plugins.<name>]``."""
        return self._collect("offterm_listener_settings", ListenerSettingsRegistration)[name].plugin

    # -- events -------------------------------------------------------------------

    def emit(self, event: str, **kwargs: Any) -> None:
        """Call ``offterm_on_<event>`` through pluggy; one failing listener never stops the others.

        Listeners and wrappers run in pluggy's order (``tryfirst``, then the
        most recently registered first, then ``trylast``).  Each was guarded
        when its plugin was registered: one that raises is logged
        (``event_listener_failed``, with its plugin's name) and skipped.
        """
        getattr(self.pm.hook, f"{EVENT_HOOK_PREFIX}{event}")(**kwargs)


#: kind -> (hook name, registration class)
COMPONENT_KINDS: dict[str, tuple[str, type[Registration[Any]]]] = {
    "reader": ("offterm_reader_transports", ReaderTransportRegistration),
    "storage": ("offterm_storage_backends", StorageBackendRegistration),
    "storage_key": ("offterm_storage_key_providers", StorageKeyProviderRegistration),
    "tokens": ("offterm_connection_token_providers", TokenProviderRegistration),
    "forwarding": ("offterm_forwarding_transports", ForwardingTransportRegistration),
    "acceptance": ("offterm_offline_acceptance_policies", AcceptancePolicyRegistration),
    "forwarding_policy": ("offterm_forwarding_policies", ForwardingPolicyRegistration),
    "replicator": ("offterm_replicators", ReplicatorRegistration),
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

    pm = GuardedPluggy(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    manager = PluginManager(pm, strict=strict)
    if _truthy(env.get(ENV_TRACE)):
        pm.trace.root.setwriter(lambda msg: trace_log.debug("hook_trace: %s", msg.rstrip()))
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
                manager._fail(ep.name, exc.message, exc)

    for name, plugin in (plugins or {}).items():
        if not pm.is_blocked(name):
            manager.register(plugin, name)
    _warn_unknown_disabled(blocked, bundled, plugins or {}, entry_points)
    return manager


def _warn_unknown_disabled(
    blocked: set[str],
    bundled: tuple[tuple[str, str], ...],
    plugins: Mapping[str, object],
    entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None,
) -> None:
    """A ``disable`` entry that names no installed plugin is a typo: one warning, with the closest name."""
    known = {name for name, _ in bundled} | {module for _, module in bundled} | set(plugins)
    unknown = blocked - known
    if not unknown:
        return
    # installed entry points count even with autoload off: their names are listed, nothing is imported
    eps = entry_points() if entry_points else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    installed = {name for name, _ in bundled} | set(plugins) | {ep.name for ep in eps}
    for name in sorted(unknown - installed):
        guess = closest(name, installed)
        log.warning(
            "plugin_disable_unknown",
            plugin=name,
            error=f'"{name}" in [plugins] disable / {ENV_DISABLE} names no installed plugin'
            + (f" (did you mean {guess}?)" if guess else ""),
        )


def _unknown_hooks_message(plugin: str, unknown: list[str]) -> str:
    """``plugin "x" implements an unknown hook "offterm_on_payment_stord" (did you mean offterm_on_payment_stored?)``.

    pluggy's own error for this ("unknown hook ... in plugin <object repr>") names neither the plugin nor the fix.
    """
    specs = [name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT_NAME}_")]
    named = []
    for hook in unknown:
        guess = closest(hook, specs)
        named.append(f'"{hook}"' + (f" (did you mean {guess}?)" if guess else ""))
    return f'plugin "{plugin}" implements an unknown hook{"s" if len(named) > 1 else ""} {", ".join(named)}'
