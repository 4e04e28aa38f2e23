"""Structured logging: a console renderer for people, JSON for machines, secrets always masked.

offterm is a library, so it never writes to standard output and never adds a
handler.  Its modules log through ``structlog``; importing this module makes
sure those lines end up in the standard :mod:`logging` machinery, under
loggers named ``offterm...`` (``offterm.terminal``, ``offterm.forwarder``,
``offterm.plugins``...), already redacted.  What happens to them then is the
application's choice, exactly as with any library that uses :mod:`logging`:

* Nothing configured: the records meet no handler, so Python's *last resort*
  handler writes WARNING and above to standard error (``storage_key_created``,
  ``plugin_load_failed``, ``recovered_claims_after_crash``...) and INFO and
  DEBUG go nowhere.  We deliberately add no ``NullHandler``: it would also
  swallow those warnings, and a payment library whose "back up this key" or
  "a plugin did not load" disappears silently in an app that never set up
  logging is worse than one stderr line.  (``NullHandler`` is the advice from
  before Python 3.2, when an unconfigured library printed "No handlers could
  be found" instead.)  An app that wants silence sets the ``offterm`` logger's
  level, or configures logging at all.
* The app configures :mod:`logging` (``basicConfig``, ``dictConfig``, its own
  handlers): offterm's records arrive like any other library's.  A record's
  ``msg`` is the event dict; ``getMessage()`` renders it as
  ``"payment_stored amount=1250 currency='usd' offline_id='offpi_...'"``,
  and a structlog ``ProcessorFormatter`` sees the fields one by one.
* The app calls :func:`configure_logging`: one redacting pipeline for
  structlog and :mod:`logging`, console or JSON, to standard error by default.
  The ``offterm`` CLI does this for its own output (``--log-json``, ``--log-level``).
* The app configures structlog itself (``structlog.configure``): offterm's
  loggers follow that configuration, which is then the app's to keep
  redacting (put :func:`redact_processor` just before the renderer).

How: structlog decides where a logger writes only through its global
configuration.  When this module is imported and nobody has configured
structlog yet, it installs structlog's own defaults with one difference:
loggers whose name starts with ``offterm`` are handed to :mod:`logging`
(redacted, filtered by the stdlib level before any processing) instead of
being printed.  Every other structlog logger in the process still prints as
structlog's defaults do.  The one visible trace is that
``structlog.is_configured()`` is True afterwards, so an app should use
``structlog.configure`` rather than ``configure_once`` (which would warn and
keep ours).  :func:`reset_logging` returns to this state.

Correlation ids travel in ``structlog.contextvars``: :func:`bind_payment`
binds ``offline_id`` for the work on one payment, :func:`bind_request` binds a
``request_id`` for one processor request.  Both show up on every log line
written inside them, including lines from third-party libraries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import functools
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import IO, Any, ParamSpec, TypeVar

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from ..errors import ConfigError

__all__ = [
    "LEVELS",
    "REDACTED",
    "bind_payment",
    "bind_request",
    "LogEvent",
    "configure_logging",
    "install_library_default",
    "is_offterm_logger",
    "is_sensitive_key",
    "new_request_id",
    "payment_scoped",
    "redact_processor",
    "redact_text",
    "redact_value",
    "reset_logging",
]

REDACTED = "[REDACTED]"

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# ---------------------------------------------------------------------------
# Redaction of text
# ---------------------------------------------------------------------------

# Track 1: %B<PAN>^<NAME>^<YYMM><service code><discretionary>?  (sentinels optional)
_TRACK1 = re.compile(r"(?:%B|(?<![A-Za-z0-9])B)\d{12,19}\^[^^\r\n]{0,26}\^(?:[^?\r\n]{0,79}\?|[^?\s]{0,79})")
# Track 2: ;<PAN>=<YYMM><service code><discretionary>?  ('D' is the separator in EMV tag 57)
_TRACK2 = re.compile(r";?(?<!\d)\d{12,19}[=D]\d{4}[0-9A-Fa-f]{0,40}\??")
# Raw keys: 64 or more hex digits (a 256-bit key, a BDK, an encrypted blob).
_HEX_KEY = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64,}(?![0-9A-Fa-f])")
# Stripe-style secrets: secret and restricted keys, connection tokens, session secrets, webhook secrets.
_PREFIXED_SECRET = re.compile(r"\b(sk|rk|pst|dss|whsec)_[A-Za-z0-9_\-]{6,}")
# Client secrets of intents, setup intents...: pi_123_secret_abc
_CLIENT_SECRET = re.compile(r"\b([a-z]{2,6}_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+")
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token)\s+)?(?!\[REDACTED)[^\s'\",;]+"
)
_BEARER = re.compile(r"\b(Bearer)\s+(?!\[REDACTED)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
# key=value / key: value pairs inside free text (query strings, headers, reprs).
_TEXT_PAIR = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_\-])*(?:password|passwd|passphrase|secret|token|api[_\-]?key|"
    r"card[_\-]?data|card[_\-]?number|cvc|cvv))(['\"]?\s*[:=]\s*['\"]?)(?!\[REDACTED)([^\s'\",;&)}\]]+)"
)
# A run of digits in groups separated by single spaces or dashes: a card number may hide in it.
_DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*")
# Our own correlation ids; never card data, and kept whole so they stay searchable.
_OWN_ID = re.compile(r"\b(?:offpi|req)_[0-9a-f]{32}(?![0-9A-Za-z])")

_PAN_MIN, _PAN_MAX = 13, 19


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_digit_run(match: re.Match[str]) -> str:
    """Mask every Luhn-valid 13-19 digit card number inside one run, keeping its last 4 digits."""
    run = match.group(0)
    groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", run)]
    masked: list[tuple[int, int]] = []  # (start, end) spans in `run` that are card numbers
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += run[groups[j][0] : groups[j][1]]
            if len(digits) > _PAN_MAX:
                break
            if len(digits) >= _PAN_MIN and _luhn_ok(digits):
                masked.append((groups[i][0], groups[j][1]))
    if not masked:
        return run
    masked.sort()
    merged: list[tuple[int, int]] = []
    for start, end in masked:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    out: list[str] = []
    pos = 0
    for start, end in merged:
        out.append(run[pos:start])
        digits = re.sub(r"\D", "", run[start:end])
        out.append("****" + digits[-4:])
        pos = end
    out.append(run[pos:])
    return "".join(out)


def _redact_segment(text: str) -> str:
    text = _TRACK1.sub("[REDACTED track data]", text)
    text = _TRACK2.sub("[REDACTED track data]", text)
    text = _HEX_KEY.sub("[REDACTED key]", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _TEXT_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _CLIENT_SECRET.sub(lambda m: f"{m.group(1)}_secret_{REDACTED}", text)
    text = _PREFIXED_SECRET.sub(lambda m: f"{m.group(1)}_{REDACTED}", text)
    return _DIGIT_RUN.sub(_mask_digit_run, text)


def redact_text(text: str) -> str:
    """Mask card numbers (keeping the last 4), track data, hex keys, tokens and bearer credentials."""
    if not text:
        return text
    pieces: list[str] = []
    pos = 0
    for m in _OWN_ID.finditer(text):
        pieces.append(_redact_segment(text[pos : m.start()]))
        pieces.append(m.group(0))
        pos = m.end()
    pieces.append(_redact_segment(text[pos:]))
    return "".join(pieces)


# ---------------------------------------------------------------------------
# Redaction of structured values
# ---------------------------------------------------------------------------

_SENSITIVE_WORDS = frozenset(
    {
        "secret",
        "secrets",
        "token",
        "tokens",
        "key",
        "keys",
        "apikey",
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "pan",
        "track",
        "track1",
        "track2",
        "cvc",
        "cvv",
        "cvv2",
        "pin",
        "bdk",
    }
)
_SENSITIVE_PAIRS = frozenset({("card", "data"), ("card", "number"), ("card", "blob"), ("encrypted", "card")})
#: Names that contain a sensitive word but hold nothing secret.
_SAFE_KEYS = frozenset({"idempotency_key", "key_provider", "token_provider", "token_providers"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SKIP_KEYS = frozenset({"_record", "_from_structlog"})  # ProcessorFormatter's bookkeeping
_PLAIN_TYPES = (float, _dt.datetime, _dt.date, _dt.time, _dt.timedelta, decimal.Decimal, uuid.UUID)
_MAX_DEPTH = 12


def is_sensitive_key(key: object) -> bool:
    """Whether a mapping key names a secret (``auth_token``, ``card_data``, ``pan``, ``clientSecret``...)."""
    if not isinstance(key, str):
        return False
    if key.lower() in _SAFE_KEYS:
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", key).lower()) if w]
    if any(w in _SENSITIVE_WORDS for w in words):
        return True
    return any(pair in _SENSITIVE_PAIRS for pair in zip(words, words[1:], strict=False))


def _redact_int(value: int) -> int | str:
    digits = str(abs(value))
    if _PAN_MIN <= len(digits) <= _PAN_MAX and _luhn_ok(digits):
        return "****" + digits[-4:]
    return value


def redact_value(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with everything sensitive masked; mappings, lists and tuples are walked."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, int):
        return _redact_int(value)
    if isinstance(value, _PLAIN_TYPES):
        return value
    if _depth >= _MAX_DEPTH:
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        return {(redact_text(k) if isinstance(k, str) else k): _redact_item(k, v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_value(v, _depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, bytes | bytearray):
        return redact_text(repr(bytes(value)))
    text = repr(value)
    cleaned = redact_text(text)
    return value if cleaned == text else cleaned


def _redact_item(key: object, value: Any, depth: int) -> Any:
    if is_sensitive_key(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    return redact_value(value, depth)


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in the message, every value, and rendered exceptions.

    An ``exc_info`` still in the event is rendered to text first (as
    ``format_exc_info`` does) so the traceback is masked too; place this
    processor last before the renderer.
    """
    if event_dict.get("exc_info"):
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    for key in list(event_dict):
        if key in _SKIP_KEYS:
            continue
        event_dict[key] = _redact_item(key, event_dict[key], 0)
    return event_dict


# ---------------------------------------------------------------------------
# Correlation ids
# ---------------------------------------------------------------------------


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@contextlib.contextmanager
def bind_payment(offline_id: str) -> Iterator[None]:
    """Every log line inside carries ``offline_id`` (per asyncio task / thread, restored on exit)."""
    with structlog.contextvars.bound_contextvars(offline_id=offline_id):
        yield


@contextlib.contextmanager
def bind_request(request_id: str | None = None) -> Iterator[str]:
    """Every log line inside carries ``request_id`` (a new ``req_...`` id unless given); yields it."""
    rid = request_id or new_request_id()
    with structlog.contextvars.bound_contextvars(request_id=rid):
        yield rid


P = ParamSpec("P")
T = TypeVar("T")


def payment_scoped(func: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run an async method inside :func:`bind_payment` for the first argument that has an ``offline_id``."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        offline_id = next(
            (
                oid
                for arg in (*args, *kwargs.values())
                if isinstance(oid := getattr(arg, "offline_id", None), str) and oid
            ),
            None,
        )
        if offline_id is None:
            return await func(*args, **kwargs)
        with bind_payment(offline_id):
            return await func(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------

_HANDLER_MARK = "_offterm_log_handler"


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(n for n in LEVELS if n != 'warn')}", level)
    return LEVELS[name]


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def configure_logging(*, json: bool = False, level: str = "info", stream: IO[str] | None = None) -> None:
    """Send structlog and stdlib logging through one pipeline that always redacts.

    :param json: one JSON object per line (for machines) instead of the console renderer.
    :param level: debug, info, warning, error or critical.
    :param stream: where to write (default: standard error at call time).

    Calling it again replaces the previous configuration (idempotent).

    This configures the process, not just offterm: structlog's global
    configuration, and one handler on the root logger (level ``level``), which
    renders every record, offterm's and other libraries', through the same
    redaction.  An app with its own logging setup need not call it: offterm's
    records reach the app's handlers anyway (see the module docstring).
    """
    numeric = _level(level)
    out = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    _remove_handlers(root)
    root.addHandler(handler)
    root.setLevel(numeric)


def _remove_handlers(root: logging.Logger) -> None:
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)


def reset_logging() -> None:
    """Undo :func:`configure_logging`: remove its handler and return to the state after import.

    That is structlog's defaults with offterm's loggers handed to :mod:`logging`
    (see :func:`install_library_default`).
    """
    _remove_handlers(logging.getLogger())
    structlog.reset_defaults()
    install_library_default()


# ---------------------------------------------------------------------------
# The library default: offterm's loggers go to the standard logging module
# ---------------------------------------------------------------------------

_METHOD_LEVELS: dict[str, int] = {**LEVELS, "exception": logging.ERROR, "fatal": logging.CRITICAL}
#: Fields a stdlib record already carries; left out of the rendered message.
_NOT_IN_MESSAGE = frozenset({"event", "logger", "level", "exception"})


def is_offterm_logger(name: object) -> bool:
    """Whether a logger name belongs to offterm or one of its plugins (``offterm``, ``offterm.x``, ``offterm_x``)."""
    return isinstance(name, str) and name.split(".", 1)[0].startswith("offterm")


class LogEvent(dict[str, Any]):
    """The ``msg`` of a stdlib record that offterm wrote: the (already redacted) event dict.

    A structlog ``ProcessorFormatter`` reads its fields one by one; any other
    formatter calls ``getMessage()``, which renders ``event key=value ...``
    (and the traceback, if any, on the following lines).
    """

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v!r}" for k, v in sorted(self.items()) if k not in _NOT_IN_MESSAGE)
        text = f"{self.get('event', '')} {fields}".rstrip()
        exception = self.get("exception")
        return f"{text}\n{exception}" if exception else text


class _LibraryLoggerFactory:
    """``offterm...`` names get the stdlib logger of that name; every other name gets ``fallback``'s logger."""

    def __init__(self, fallback: Callable[..., WrappedLogger]) -> None:
        self.fallback = fallback

    def __call__(self, *args: Any) -> WrappedLogger:
        if args and is_offterm_logger(args[0]):
            return logging.getLogger(args[0])
        return self.fallback(*args)


class _LibraryRouter:
    """The one processor of the library default: stdlib loggers get offterm's chain, others ``fallback``."""

    def __init__(self, fallback: list[Processor]) -> None:
        self.fallback = fallback

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        if isinstance(logger, logging.Logger):
            return _to_stdlib(logger, method_name, event_dict)
        result: Any = event_dict
        for processor in self.fallback:
            result = processor(logger, method_name, result)
        return result


def _to_stdlib(logger: logging.Logger, method_name: str, event_dict: EventDict) -> Any:
    level = _METHOD_LEVELS.get(method_name, logging.INFO)
    if not logger.isEnabledFor(level):  # the app's levels decide, before any work is done
        raise structlog.DropEvent
    event_dict = structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
    event_dict["logger"] = logger.name
    event_dict["level"] = logging.getLevelName(level).lower()
    event_dict = redact_processor(logger, method_name, event_dict)  # renders exc_info into "exception"
    # As ProcessorFormatter.wrap_for_formatter does, so a ProcessorFormatter treats it as structlog's own.
    return (LogEvent(event_dict),), {"extra": {"_logger": logger, "_name": method_name}}


def install_library_default() -> bool:
    """Hand ``offterm...`` structlog loggers to :mod:`logging`, unless structlog is configured already.

    Runs once when this module is imported (and from :func:`reset_logging`);
    returns whether it installed anything.  Every non-offterm logger keeps
    structlog's behaviour as it was (its processors and logger factory).
    """
    if structlog.is_configured():
        return False
    config = structlog.get_config()
    structlog.configure(
        processors=[_LibraryRouter(list(config["processors"]))],
        logger_factory=_LibraryLoggerFactory(config["logger_factory"]),
    )
    return True


install_library_default()
