"""What every ``offterm`` command shares: exit codes, the JSON writer, the click context object.

Its own module so command groups in other modules (``offterm hub``) use them without importing
``offterm.cli.main``, which registers those groups: no import cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from offterm.core import Terminal, load_config
from offterm.core.config import Config
from offterm.core.errors import (
    AmbiguousPaymentId,
    ConfigError,
    InvalidTransition,
    OfftermError,
    PaymentNotFound,
    PluginError,
    StorageError,
    StoreNotFound,
)

from ._inspection import inspection_terminal

if TYPE_CHECKING:
    from offterm.core._engine.terminal import CloseReport

EXIT_OK, EXIT_ATTENTION, EXIT_CONFIG, EXIT_STORAGE, EXIT_PLUGIN, EXIT_NO_STORE = 0, 1, 2, 3, 4, 5

T = TypeVar("T")

_USAGE = (EXIT_CONFIG, "usage or configuration error")
_STORE = (EXIT_STORAGE, "the payment store could not be opened (wrong key, damaged, read-only or unavailable)")
_PLUGIN = (EXIT_PLUGIN, "a plugin failed to load, a component is unknown, or a plugin built the wrong type")
_NO_STORE = (EXIT_NO_STORE, "no payment store where the configuration points (nothing was created)")


def exit_codes_help(*codes: tuple[int, str]) -> str:
    """A ``--help`` epilog listing exit codes (``\\b`` keeps click from rewrapping it)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in codes)


def store_exit_codes(ok: str, *more: tuple[int, str]) -> str:
    """The epilog of a command that opens the store: ``ok``, ``more``, then the codes they all share."""
    return exit_codes_help((EXIT_OK, ok), *more, _USAGE, _STORE, _PLUGIN, _NO_STORE)


EXIT_CODES_HELP = exit_codes_help(
    (EXIT_OK, "done"),
    (EXIT_ATTENTION, "done, but something needs a person (payments remain, doctor found a problem)"),
    _USAGE,
    _STORE,
    _PLUGIN,
    _NO_STORE,
)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return None
    return value


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))


class Context:
    def __init__(self, config_path: str | None, log_json: bool, log_level: str) -> None:
        self.config_path = config_path
        self.console = Console()
        self.err = Console(stderr=True)
        self.log_json = log_json
        self.log_level = log_level

    def config(self) -> Config:
        return load_config(self.config_path)

    def run(
        self,
        fn: Callable[[Terminal], Awaitable[T]],
        *,
        tokens: bool = False,
        listeners: Mapping[str, object] | None = None,
    ) -> T:
        """Open the configured store (never creating one), run ``fn``, close; map errors to exit codes."""
        return self.run_with_report(fn, tokens=tokens, listeners=listeners)[0]

    def run_with_report(
        self,
        fn: Callable[[Terminal], Awaitable[T]],
        *,
        tokens: bool = False,
        listeners: Mapping[str, object] | None = None,
    ) -> tuple[T, CloseReport]:
        """``run``, also returning what ``close()`` reported (the payments still waiting, and why).

        :param tokens: build the configured connection-token providers (only ``forward`` talks to the
            processor for payments); otherwise no token backend is needed, nor asked.
        :param listeners: plugin objects whose hook implementations receive the Terminal's events.
        """

        async def main() -> tuple[T, CloseReport]:
            terminal = inspection_terminal(self.config(), tokens=tokens, listeners=listeners)
            await terminal.open()
            try:
                result = await fn(terminal)
            finally:
                report = await terminal.close()
            return result, report

        return self.guard(lambda: asyncio.run(main()))

    def guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ConfigError as exc:
            self.fail(EXIT_CONFIG, exc)
        except StoreNotFound as exc:
            self.fail(EXIT_NO_STORE, exc)
        except (PaymentNotFound, InvalidTransition) as exc:  # the store opened: not an exit-3 failure
            self.fail(EXIT_ATTENTION, exc)
        except AmbiguousPaymentId as exc:
            self.fail(EXIT_CONFIG, exc)
        except StorageError as exc:
            self.fail(EXIT_STORAGE, exc)
        except PluginError as exc:
            self.fail(EXIT_PLUGIN, exc)
        except OfftermError as exc:
            self.fail(EXIT_ATTENTION, exc)
        except OSError as exc:  # nothing below should let one through; if it does, no traceback either
            where = f": {exc.filename}" if exc.filename else ""
            self.fail(EXIT_STORAGE, f"[os_error] {exc.strerror or type(exc).__name__}{where}")
        raise AssertionError("unreachable")

    def fail(self, code: int, exc: OfftermError | str) -> None:
        self.err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(code)


pass_ctx = click.make_pass_decorator(Context)
