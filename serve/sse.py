"""The event stream for browsers: Server-Sent Events of the outbox, resumable with ``Last-Event-ID``.

Each event is ``id: <seq>`` / ``event: <type>`` / ``data: <the event JSON, as webhooks get it>``.  A
client that reconnects (EventSource does so by itself, sending ``Last-Event-ID``) gets every event after
the one it saw, from the durable outbox, then the live ones.  Without ``Last-Event-ID`` (or
``?last_event_id=``) the stream starts with the next event.  A comment line every 15 s keeps proxies
from closing an idle stream.

Besides the outbox's events, the stream carries the offline status (``event: offterm.offline_status``,
``data:`` what ``GET /v1/offterm/offline_status`` answers) first thing and whenever it changes, so a
browser POS shows "offline, 2 payments waiting" live.  Those frames have no ``id:`` (they are not
outbox events: no webhook gets them, and ``Last-Event-ID`` still counts only events); a reconnecting
client gets the current status first again.

As the server shuts down every stream ends (``Outbox.close_streams``): uvicorn waits for open
responses before the app's shutdown, and an endless stream would hold every stop for the whole grace
period, then be cancelled with an error.  EventSource reconnects by itself once the service is back.

Hand-written (thirty lines) rather than sse-starlette: the format is four fields, and the resume
logic is the outbox's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from .outbox import Outbox

KEEPALIVE = 15.0
STATUS_EVENT = b"offterm.offline_status"


def frame(seq: int, type: str, body: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type.encode(), body)


async def stream(
    outbox: Outbox,
    after: int | None,
    keepalive: float = KEEPALIVE,
    status: Callable[[], dict[str, Any]] | None = None,
) -> AsyncIterator[bytes]:
    seq = outbox.last_seq() if after is None else after
    yield b"retry: 1000\n\n"
    shown: dict[str, Any] | None = None
    while not outbox.closing:
        changed = outbox.waiter()
        if status is not None and (current := status()) != shown:
            shown = current
            yield b"event: %s\ndata: %s\n\n" % (STATUS_EVENT, json.dumps(current, separators=(",", ":")).encode())
        batch = outbox.after(seq, 100)
        for event in batch:
            yield frame(event.seq, event.type, event.body)
            seq = event.seq
        if not batch:
            await outbox.wait(changed, keepalive)
            if not changed.is_set():
                yield b": keepalive\n\n"
