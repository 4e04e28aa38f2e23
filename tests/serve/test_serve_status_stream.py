"""The event stream carries the offline status live: first thing, and whenever it changes.

What a browser POS shows as "offline, 1 payment waiting" without polling (examples/web-pos).  The
status frames have no ``id:``: they are not outbox events, so no webhook gets them and
``Last-Event-ID`` still counts only events.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import httpx
from serve_kit import Receiver, Served, pay, wait_until


def _frames(served: Served, out: queue.Queue[dict[str, Any]], stop: threading.Event) -> None:
    url = f"{served.service.url}/v1/offterm/events?access_token={served.service.key}"
    with httpx.stream("GET", url, timeout=60) as response:
        frame: dict[str, Any] = {}
        for line in response.iter_lines():
            if stop.is_set():
                return
            if not line:
                if "data" in frame:
                    out.put(frame)
                frame = {}
            elif not line.startswith(":") and ": " in line:
                name, value = line.split(": ", 1)
                frame[name] = value


def test_the_stream_shows_the_offline_status_change_live(served: Served, receiver: Receiver) -> None:
    pay(1000)  # online once
    frames: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_frames, args=(served, frames, stop), daemon=True)
    reader.start()
    try:

        def next_status(match: Any) -> dict[str, Any]:
            while True:
                frame = frames.get(timeout=30)
                if frame.get("event") == "offterm.offline_status":
                    assert "id" not in frame, "a status frame is not an outbox event"
                    status = json.loads(frame["data"])
                    if match(status):
                        return status

        first = next_status(lambda s: True)
        assert first["object"] == "offterm.offline_status" and first["offline_payments_count"] == 0

        served.proxy.set_mode("down")
        pay(2500)
        stored = next_status(lambda s: s["offline_payments_count"] == 1)
        assert stored["network_status"] == "offline" and stored["offline_payment_amounts_by_currency"] == {"usd": 2500}

        served.proxy.set_mode("pass")
        drained = next_status(lambda s: s["offline_payments_count"] == 0)
        assert drained["network_status"] == "online"
    finally:
        stop.set()
        served.proxy.set_mode("pass")
    wait_until(lambda: receiver.types().count("payment_intent.succeeded") == 2, what="the forwarded webhook")
    assert "offterm.offline_status" not in receiver.types(), "status frames are the stream's, not webhooks"


def test_stopping_the_service_ends_open_streams_instead_of_waiting_them_out(served: Served) -> None:
    url = f"{served.service.url}/v1/offterm/events?access_token={served.service.key}"
    ended = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", url, timeout=60) as response:
            for _ in response.iter_lines():
                pass
        ended.set()  # the server ended the response

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: "event_stream_opened" in served.service.log(), what="the stream")
    served.service.stop()
    listener.join(timeout=30)
    assert ended.is_set(), "the stream was cut, not ended"
    log = served.service.log()
    assert "graceful shutdown exceeded" not in log and "Exception in ASGI application" not in log
