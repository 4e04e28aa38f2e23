"""What the emulated customer does: scripted presentations and the control language.

A control line (stdin of the emulator process, or ``--present`` on its command
line) chooses what happens at the next collection::

    present visa tap                 tap Stripe's Visa test card
    present visa_de insert pin       insert it and enter the PIN (EEA)
    present visa insert pin-fail     wrong PIN: the reader ends with pin_failed
    present interac tap
    present eftpos_visa insert       co-badged eftpos/Visa
    present visa_expired insert      printed expiry in the past
    present mastercard swipe
    present visa insert remove-early the card leaves before the read completes
    present visa insert disconnect=2 the link drops mid-read, back after 2 s
    present visa tap delay=0.5 name="JANE DOE"
    never                            nobody presents a card: the reader times out
    disconnect [SECONDS]             drop the link now (back after SECONDS, default 1)
    noise [BYTES]                    send line noise to the host (default 64 random bytes)
    clear | status | help | quit
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from offterm.plugins.readers import test_cards

METHODS = {
    "insert": "contact_emv",
    "tap": "contactless_emv",
    "swipe": "magnetic_stripe",
    "contact_emv": "contact_emv",
    "contactless_emv": "contactless_emv",
    "magnetic_stripe": "magnetic_stripe",
}

HELP = (__doc__ or "").split("::", 1)[-1].strip("\n")


class ScriptError(ValueError):
    """A control line the emulator does not understand (never echoes a card number)."""


@dataclass(frozen=True)
class Presentation:
    """One customer at one collection."""

    card: test_cards.CardProfile
    read_method: str = "contact_emv"
    #: None: no PIN entry (tap, swipe, or an inserted card without CVM); True/False: PIN outcome.
    pin: bool | None = None
    expired: bool = False
    cardholder_name: str | None = None
    remove_early: bool = False
    never: bool = False
    #: Drop the link mid-read; back after this many seconds.
    disconnect: float | None = None
    #: Seconds the customer takes before acting.
    delay: float = 0.0

    def describe(self) -> str:
        """Safe summary for the control channel (name and last four digits only)."""
        if self.never:
            return "never presents a card"
        parts = [self.card.name, self.card.last4, self.read_method]
        if self.pin is not None:
            parts.append("pin" if self.pin else "pin-fail")
        for flag, text in ((self.expired, "expired"), (self.remove_early, "remove-early")):
            if flag:
                parts.append(text)
        if self.disconnect is not None:
            parts.append(f"disconnect={self.disconnect:g}")
        return " ".join(parts)


NEVER = Presentation(card=test_cards.CARDS["visa"], never=True)


@dataclass(frozen=True)
class Command:
    name: str
    presentation: Presentation | None = None
    seconds: float = 1.0
    count: int = 0


def _show(word: str) -> str:
    """A word safe to echo: anything with digits might be a card number."""
    return "(a word with digits, not shown)" if any(ch.isdigit() for ch in word) else repr(word[:20])


def _seconds(value: str, what: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ScriptError(f"{what} must be a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise ScriptError(f"{what} must be from 0 to 3600 seconds")
    return seconds


def parse_presentation(words: list[str]) -> Presentation:
    """``CARD [insert|tap|swipe] [pin|nopin|pin-fail] [expired] [remove-early] [disconnect[=S]] [delay=S] [name=N]``."""
    if not words:
        raise ScriptError("present needs a card: a test card name or a card number")
    try:
        card = test_cards.resolve(words[0])
    except ValueError as exc:
        raise ScriptError(str(exc)) from None
    method = "contact_emv"
    pin: bool | None = None
    pin_given = False
    expired = card.expired
    remove_early = False
    disconnect: float | None = None
    delay = 0.0
    name: str | None = None
    for word in words[1:]:
        key, _, value = word.partition("=")
        if word in METHODS:
            method = METHODS[word]
        elif word in ("pin", "nopin", "pin-fail"):
            pin, pin_given = {"pin": True, "nopin": None, "pin-fail": False}[word], True
        elif word == "expired":
            expired = True
        elif word == "remove-early":
            remove_early = True
        elif key == "disconnect":
            disconnect = _seconds(value, "disconnect") if value else 1.0
        elif key == "delay" and value:
            delay = _seconds(value, "delay")
        elif key == "name" and value:
            name = value[:26]
        else:
            raise ScriptError(f"unknown word {_show(word)} after the card; try: help")
    if not pin_given:
        pin = True if method == "contact_emv" else None  # chip cards ask for the PIN by default
    if pin is not None and method != "contact_emv":
        raise ScriptError("PIN entry needs an inserted card (insert)")
    return Presentation(card, method, pin, expired, name, remove_early, False, disconnect, delay)


def parse_line(line: str) -> Command | None:
    """One control line; None for a blank line or a comment."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ScriptError(f"cannot parse the line: {exc}") from None
    if not words:
        return None
    verb, rest = words[0].lower(), words[1:]
    if verb == "present":
        return Command("present", parse_presentation(rest))
    if verb == "never":
        return Command("present", NEVER)
    if verb == "disconnect":
        return Command("disconnect", seconds=_seconds(rest[0], "disconnect") if rest else 1.0)
    if verb == "noise":
        count = rest[0] if rest else "64"
        if not count.isdigit() or not 1 <= int(count) <= 65536:
            raise ScriptError("noise takes a byte count from 1 to 65536")
        return Command("noise", count=int(count))
    if verb in ("clear", "status", "help", "quit") and not rest:
        return Command(verb)
    raise ScriptError(f"unknown command {_show(verb)}; try: help")
