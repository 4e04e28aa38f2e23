"""The event stream for browsers: Server-Sent Events of the outbox, resumable with ``Last-Event-ID``.

Each event is ``id: <seq>`` / ``event: <type>`` / ``data: <the event JSON, as webhooks get it>``.  A
client that reconnects (EventSource does so by itself, sending ``Last-Event-ID``) gets every event after
the one it saw, from the durable outbox, then the live ones.  Without ``Last-Event-ID`` (or
``?last_event_id=``) the stream starts with the next event.  A comment line every 15 s keeps proxies
from closing an idle stream.  Hand-written (twenty lines) rather than sse-starlette: the format is
four fields, and the resume logic is the outbox's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .outbox import Outbox

KEEPALIVE = 15.0


def frame(seq: int, type: str, body: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type.encode(), body)


async def stream(outbox: Outbox, after: int | None, keepalive: float = KEEPALIVE) -> AsyncIterator[bytes]:
    seq = outbox.last_seq() if after is None else after
    yield b"retry: 1000\n\n"
    while True:
        changed = outbox.waiter()
        batch = outbox.after(seq, 100)
        for event in batch:
            yield frame(event.seq, event.type, event.body)
            seq = event.seq
        if not batch:
            await outbox.wait(changed, keepalive)
            if not changed.is_set():
                yield b": keepalive\n\n"
