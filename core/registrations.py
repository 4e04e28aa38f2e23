"""Typed registrations that plugins yield from the ``offterm_*`` hooks.

Each has a validated ``name`` (what the config selects) and a ``factory``
that builds the component from its validated options.  Behaviour lives in
the ABCs of ``offterm.core.contracts``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from .contracts import (
    ConnectionTokenProvider,
    ForwardingPolicy,
    ForwardingTransport,
    OfflineAcceptancePolicy,
    PaymentStore,
    ReaderTransport,
    Replicator,
    StorageKeyProvider,
)
from .errors import PluginError

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

T = TypeVar("T")


@dataclass(frozen=True)
class OptionSpec:
    """One configuration key of a component, with its default and meaning.

    ``secret`` options can also come from the environment variable
    ``OFFTERM_<KIND>_<NAME>_<KEY>`` and are never logged.
    """

    key: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    secret: bool = False
    required: bool = False
    #: inclusive bounds for numbers (a number is also always finite and, unless ``minimum`` says
    #: otherwise, not negative); a value outside them is a ConfigError naming the key
    minimum: float | None = None
    maximum: float | None = None
    #: ``minimum`` itself is refused: a number must be more than it (a timeout of 0 waits for nothing)
    exclusive_minimum: bool = False
    #: the allowed values (for a list, of each item); anything else is a ConfigError listing them
    choices: tuple[Any, ...] | None = None
    #: string choices match whatever their case; the value becomes the choice as listed
    ignore_case: bool = False
    #: a regular expression a string (for a list, each item, which must be a string) matches in full
    pattern: str | None = None
    #: what ``pattern`` stands for, in errors and docs ("a 128-bit UUID"); default: the pattern itself
    pattern_help: str = ""
    #: bounds on the length of a string (``min_length=1``: not empty)
    min_length: int | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise PluginError(
                    f"option {self.key!r}: pattern {self.pattern!r} is not a regular expression: {exc}"
                ) from None
        if self.choices is not None and not isinstance(self.choices, tuple):
            raise PluginError(f"option {self.key!r}: choices must be a tuple")


@dataclass(frozen=True)
class ComponentContext:
    """What a factory receives: its own validated options and where to keep files."""

    name: str
    options: Mapping[str, Any]
    data_dir: Path


def _check(what: str, name: object, function: object, called: str, options: tuple[OptionSpec, ...]) -> None:
    """What every registration is checked for: a valid name, a callable, no option key twice."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"invalid {what} name {name!r}: use 1-40 of a-z, 0-9, '_' or '-', starting with a letter")
    if not callable(function):
        raise PluginError(f"{what} {name!r}: {called} is not callable")
    keys = [o.key for o in options]
    if len(keys) != len(set(keys)):
        raise PluginError(f"{what} {name!r}: duplicate option keys")


@dataclass(frozen=True)
class Registration(Generic[T]):
    """A component a plugin offers: the name the configuration selects it by, and how to build it.

    :param name: 1-40 of ``a-z``, ``0-9``, ``_`` or ``-``, starting with a letter.
    :param factory: builds the component from its ``ComponentContext``; what it returns must
        implement the contract of the registration's kind (checked when the Terminal builds it).
    :param description: shown in the configuration reference (``docs/configuration.md``).
    :param options: every option the component reads from ``[<kind>.<name>]``.
    :raises PluginError: an invalid name, a factory that is not callable, or two options with one key.
    """

    name: str
    factory: Callable[[ComponentContext], T]
    description: str = ""
    options: tuple[OptionSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        _check("component", self.name, self.factory, "factory", self.options)


class ReaderTransportRegistration(Registration[ReaderTransport]):
    """A ``ReaderTransport``, selected by ``[reader] transport``."""

    kind = "reader"


class StorageBackendRegistration(Registration[PaymentStore]):
    """A ``PaymentStore``, selected by ``[storage] backend``."""

    kind = "storage"


class StorageKeyProviderRegistration(Registration[StorageKeyProvider]):
    """A ``StorageKeyProvider``, selected by ``[storage] key_provider``."""

    kind = "storage_key"


class TokenProviderRegistration(Registration[ConnectionTokenProvider]):
    """A ``ConnectionTokenProvider``; ``[tokens] providers`` lists the ones asked, in order."""

    kind = "tokens"


class ForwardingTransportRegistration(Registration[ForwardingTransport]):
    """A ``ForwardingTransport`` (the processor's API), selected by ``[forwarding] transport``."""

    kind = "forwarding"


class AcceptancePolicyRegistration(Registration[OfflineAcceptancePolicy]):
    """An ``OfflineAcceptancePolicy``: every registered one applies."""

    kind = "acceptance"


class ForwardingPolicyRegistration(Registration[ForwardingPolicy]):
    """A ``ForwardingPolicy``, selected by ``[forwarding] policy``."""

    kind = "forwarding_policy"


@dataclass(frozen=True)
class ListenerSettingsRegistration:
    """The settings an event-listener plugin reads from its ``[plugins.<name>]`` table.

    Yielded from ``offterm_listener_settings``, which says when the table is checked against
    ``options`` and ``apply`` is called.  By convention ``name`` is the plugin's own (entry-point)
    name, so ``[plugins] disable`` and ``[plugins.<name>]`` say the same thing.
    """

    kind: ClassVar[str] = "listener settings"

    name: str
    apply: Callable[[Mapping[str, Any]], None]
    options: tuple[OptionSpec, ...] = field(default=())
    description: str = ""

    def __post_init__(self) -> None:
        _check("settings", self.name, self.apply, "apply", self.options)


class ReplicatorRegistration(Registration[Replicator]):
    """A way of replicating a lane's payments to a store hub; selected by ``[hub] replicator``."""

    kind = "replicator"
