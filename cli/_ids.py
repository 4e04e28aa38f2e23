"""Payment ids for people: shortened to what tells them apart, and found again from any unique part.

Offline ids are time-ordered (``offpi_`` + the creation time + random digits), so the heads of ids made
the same day look alike and only their tails tell them apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable

from offterm.core.contracts import StoredPayment
from offterm.core.errors import AmbiguousPaymentId, PaymentNotFound

#: Characters of the tail shown by default; more only when another id shares them.
TAIL = 8
#: What stands for the omitted middle of a shortened id (``offterm payments show`` accepts both).
ELLIPSES = ("…", "...")
_MATCHES_SHOWN = 10


def short_id(identifier: str | None, among: Collection[str] = ()) -> str:
    """Prefix and the last characters: offline ids start with their creation time, so heads look alike.

    With ``among`` (ids shown beside it), the tail grows until no other id there ends with it, so the short
    form still names one payment; an id that cannot be shortened is returned whole.
    """
    if not identifier:
        return "—"
    if len(identifier) <= 2 * TAIL:
        return identifier
    prefix = identifier.split("_", 1)[0] + "_" if "_" in identifier[:8] else ""
    others = [o for o in among if o != identifier]
    n = TAIL
    while any(o.endswith(identifier[-n:]) for o in others):
        n += 1
    if len(prefix) + 1 + n >= len(identifier):
        return identifier
    return f"{prefix}…{identifier[-n:]}"


def short_ids(identifiers: Iterable[str]) -> dict[str, str]:
    """``short_id`` of each, each distinct from the others (only ids sharing a tail are compared)."""
    ids = list(dict.fromkeys(identifiers))
    by_tail: dict[str, list[str]] = {}
    for i in ids:
        by_tail.setdefault(i[-TAIL:], []).append(i)
    shared = Counter(i[-TAIL:] for i in ids)
    return {i: short_id(i, by_tail[i[-TAIL:]] if shared[i[-TAIL:]] > 1 else ()) for i in ids}


def match_payment(given: str, payments: Iterable[StoredPayment]) -> StoredPayment:
    """The one payment whose id is ``given``, starts or ends with it, or fits its shortened form.

    :raises PaymentNotFound: no id fits.
    :raises AmbiguousPaymentId: several do; the error lists them.
    """
    text = given.strip()
    head, tail = text, None
    for mark in ELLIPSES:
        if mark in text:
            head, _, tail = text.partition(mark)
            break
    candidates = list(payments)
    exact = [p for p in candidates if p.offline_id == text]
    if exact:
        return exact[0]
    if not text:
        raise PaymentNotFound("no payment id given")
    if tail is not None:
        found = [p for p in candidates if p.offline_id.startswith(head) and p.offline_id.endswith(tail)]
    else:
        found = [p for p in candidates if p.offline_id.startswith(text) or p.offline_id.endswith(text)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise PaymentNotFound(f"no stored payment has the id {given!r}, or one that starts or ends with it")
    ids = [p.offline_id for p in found]
    listed = ", ".join(ids[:_MATCHES_SHOWN]) + (f" and {len(ids) - _MATCHES_SHOWN} more" if len(ids) > 10 else "")
    raise AmbiguousPaymentId(
        f"{given!r} matches {len(ids)} payments: {listed}; give more characters of the one you mean",
        matches=ids,
    )
