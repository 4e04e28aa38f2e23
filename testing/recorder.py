"""Record every event hook call, like pytester's HookRecorder, for asserting on events."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from offterm.core import hookspecs
from offterm.core.hookspecs import hookimpl

EVENT_PREFIX = "offterm_on_"

#: Every event hook, by full name.
EVENT_HOOKS: tuple[str, ...] = tuple(sorted(n for n in vars(hookspecs) if n.startswith(EVENT_PREFIX)))


def _full(name: str) -> str:
    full = name if name.startswith(EVENT_PREFIX) else EVENT_PREFIX + name
    if full not in EVENT_HOOKS:
        raise ValueError(f"no event hook named {name!r}; known: {', '.join(EVENT_HOOKS)}")
    return full


@dataclass(frozen=True)
class HookCall:
    """One event: ``name`` is the hook (``offterm_on_payment_stored``), ``kwargs`` its arguments.

    Arguments are also attributes: ``call.intent``, ``call.error``.
    """

    name: str
    kwargs: dict[str, Any]

    @property
    def event(self) -> str:
        """The short name used with ``PluginManager.emit`` (``payment_stored``)."""
        return self.name[len(EVENT_PREFIX) :]

    def __getattr__(self, key: str) -> Any:
        kwargs = self.__dict__.get("kwargs", {})
        if key in kwargs:
            return kwargs[key]
        raise AttributeError(f"{self.name} call has no argument {key!r}")


class HookRecorder:
    """A plugin implementing every event hook; it only remembers the calls.

    Names may be given in full (``offterm_on_payment_stored``) or short
    (``payment_stored``); several at once as a list or a space-separated string.
    """

    def __init__(self) -> None:
        self.calls: list[HookCall] = []
        self._cond = threading.Condition()
        for name in EVENT_HOOKS:
            setattr(self, name, self._impl(name))

    def _impl(self, name: str) -> Callable[..., None]:
        def record(**kwargs: Any) -> None:
            with self._cond:
                self.calls.append(HookCall(name, dict(kwargs)))
                self._cond.notify_all()

        # pluggy reads argument names through __wrapped__: the spec's own, so they always match.
        functools.update_wrapper(record, getattr(hookspecs, name))
        return hookimpl(record)

    def _names(self, names: str | Iterable[str]) -> set[str]:
        if isinstance(names, str):
            names = names.split()
        return {_full(n) for n in names}

    def getcalls(self, names: str | Iterable[str] | None = None) -> list[HookCall]:
        """Calls of the given hooks (all of them when None), in order."""
        with self._cond:
            if names is None:
                return list(self.calls)
            wanted = self._names(names)
            return [c for c in self.calls if c.name in wanted]

    def getcall(self, name: str) -> HookCall:
        """The one call of ``name``; fails if there were none or several."""
        calls = self.getcalls(name)
        assert len(calls) == 1, f"expected exactly one {_full(name)} call, got {len(calls)}: {calls}"
        return calls[0]

    def popcall(self, name: str) -> HookCall:
        """Remove and return the first call of ``name``; fails if there is none."""
        full = _full(name)
        with self._cond:
            for i, call in enumerate(self.calls):
                if call.name == full:
                    return self.calls.pop(i)
            seen = ", ".join(c.event for c in self.calls) or "none"
        raise AssertionError(f"no {full} call recorded (recorded: {seen})")

    def events(self) -> list[str]:
        """Short names of all recorded calls, in order."""
        return [c.event for c in self.getcalls()]

    def assert_called(self, name: str, times: int | None = None) -> list[HookCall]:
        calls = self.getcalls(name)
        if times is None:
            assert calls, f"{_full(name)} was never called (recorded: {self.events()})"
        else:
            assert len(calls) == times, f"{_full(name)} called {len(calls)} times, expected {times}"
        return calls

    def assert_not_called(self, name: str) -> None:
        calls = self.getcalls(name)
        assert not calls, f"{_full(name)} was called {len(calls)} times: {calls}"

    def clear(self) -> None:
        with self._cond:
            self.calls.clear()

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> list[HookCall]:
        """Block until ``name`` was called ``count`` times (events emitted from another thread).

        In an async test use :meth:`wait_for_async`: events are emitted on the
        event loop, which a blocking wait would stall.
        """
        full = _full(name)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                calls = [c for c in self.calls if c.name == full]
                if len(calls) >= count:
                    return calls
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {count} {full} call(s); got {len(calls)}")
                self._cond.wait(remaining)

    async def wait_for_async(self, name: str, count: int = 1, timeout: float = 10.0) -> list[HookCall]:
        """Like :meth:`wait_for`, yielding to the event loop while waiting."""
        full = _full(name)
        deadline = time.monotonic() + timeout
        while True:
            calls = self.getcalls(full)
            if len(calls) >= count:
                return calls
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} {full} call(s); got {len(calls)}")
            await asyncio.sleep(0.01)
