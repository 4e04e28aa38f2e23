"""Structured logging: a console renderer for people, JSON for machines, secrets always masked.

Nothing is configured at import time: until an application (or the ``offterm``
CLI) calls :func:`configure_logging`, structlog's own defaults apply, and a
library user is free to build a pipeline of their own.  Whoever builds one
should include :func:`redact_processor` just before the renderer: it masks
card numbers, track data, hex keys and tokens wherever they appear.

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

from .errors import ConfigError

__all__ = [
    "LEVELS",
    "REDACTED",
    "bind_payment",
    "bind_request",
    "configure_logging",
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
    """Undo :func:`configure_logging`: remove its handler and restore structlog's defaults."""
    _remove_handlers(logging.getLogger())
    structlog.reset_defaults()
