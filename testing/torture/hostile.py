"""A hostile payment processor: an HTTP front for the simulator that lies, stalls and floods on cue.

Requests go to the real simulator unless a hostile *act* is armed for their
path; then the next ``count`` matching requests get the act instead.  Acts
come in two kinds: ``before`` acts answer without forwarding (the processor
never saw the request), ``after`` acts forward it first (the charge happened)
and then mangle or withhold the answer — the case that must never turn into
a lost or doubled payment.

It speaks just enough HTTP/1.1 by hand (a test server must be free to send
what a real server never would) and runs its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

#: Paths a payment's forwarding touches (create, card step, confirm).
PAYMENT_PATHS = ("/v1/payment_intents", "/device/v1/payment_methods")

Writer = asyncio.StreamWriter


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: Writer, data: bytes, *, close: bool = True) -> None:
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()


def _json_response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return _head(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))]) + body


class Acts:
    """The hostile answers.  Each takes the writer, the honest answer (``after`` acts) and an rng."""

    def __init__(self, huge_bytes: int, bomb_bytes: int, endless_cap: int) -> None:
        self.huge_bytes = huge_bytes
        self.bomb_bytes = bomb_bytes
        self.endless_cap = endless_cap
        self.drip_interval = 0.02
        #: body bytes the client accepted before it hung up, per act
        self.sent: Counter[str] = Counter()

    async def garbage(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))))

    async def close_silently(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        w.close()

    async def html_200(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("200 OK", b"<html><body>Service maintenance</body></html>", "text/html"))

    async def json_list_200(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("200 OK", b"[1, 2, 3]"))

    async def wrong_object_200(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = json.dumps({"object": "charge", "id": 12345, "status": ["succeeded"]}).encode()
        await _send(w, _json_response("200 OK", body))

    async def unknown_status_200(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = json.dumps({"object": "payment_intent", "id": "pi_hostile", "status": "exploded"}).encode()
        await _send(w, _json_response("200 OK", body))

    async def truncated_json(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = honest or b'{"object": "payment_intent", "id": "pi_x", "status": "succeeded"}'
        cut = body[: max(1, len(body) // 3)]
        head = _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        await _send(w, head + cut)

    async def invalid_utf8(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("200 OK", b'\xff\xfe{"object": "payment_intent", "id": "\xc3\x28"}'))

    async def wrong_content_type(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = honest or b'{"object": "payment_intent"}'
        await _send(w, _json_response("200 OK", body, "image/png"))

    async def huge_body(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        chunk = b'{"filler": "' + b"A" * 65_000 + b'"},'
        head = _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(self.huge_bytes + 2))])
        w.write(head + b"[")
        sent = 0
        while sent < self.huge_bytes:
            part = chunk[: self.huge_bytes - sent]
            w.write(part)
            sent += len(part)
            await w.drain()
        await _send(w, b"]")

    async def gzip_bomb(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        body = packer.compress(b"\0" * self.bomb_bytes) + packer.flush()
        head = _head(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("Content-Length", str(len(body)))],
        )
        await _send(w, head + body)

    async def endless_body(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        """A chunked answer that never ends (the client must give up on its own)."""
        w.write(_head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]))
        chunk = b"[" * 4096
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        with contextlib.suppress(ConnectionError, OSError):
            while self.sent["endless_body"] < self.endless_cap:  # a cap, so a test can never exhaust memory
                w.write(frame)
                await w.drain()
                self.sent["endless_body"] += len(chunk)
        w.close()

    async def slow_drip(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        """A plausible answer, one byte every 20 ms (no single read ever times out)."""
        body = honest or json.dumps({"object": "payment_intent", "id": "pi_drip", "status": "succeeded"}).encode()
        data = _json_response("200 OK", body)
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(len(data)):
                w.write(data[i : i + 1])
                await w.drain()
                self.sent["slow_drip"] += 1
                await asyncio.sleep(self.drip_interval)
        w.close()

    async def bad_status_line(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, b"HTTP/1.1 OK-ish\r\nContent-Length: 2\r\n\r\n{}")

    async def giant_header(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _head("200 OK", [("X-Filler", "B" * 200_000), ("Content-Length", "2")]) + b"{}")

    async def overlong_body(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = honest or b"{}"
        head = _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "5")])
        await _send(w, head + body + b"trailing garbage" * 10)

    async def error_500_garbage(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("500 Internal Server Error", b"\x00\x01 not json at all", "text/plain"))

    async def error_402_shapeless(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("402 Payment Required", json.dumps({"error": "nope"}).encode()))

    async def error_400_html(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("400 Bad Request", b"<h1>Bad Request</h1>", "text/html"))

    async def error_401_weird(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        body = json.dumps({"error": {"type": 7, "message": {"nested": True}, "code": ["x"]}}).encode()
        await _send(w, _json_response("401 Unauthorized", body))

    async def redirect(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _head("302 Found", [("Location", "http://198.51.100.7/steal"), ("Content-Length", "0")]))

    async def status_999(self, w: Writer, honest: bytes | None, rng: random.Random) -> None:
        await _send(w, _json_response("999 Whatever", b"{}"))


#: act name -> whether the request reaches the processor first
ACTS: dict[str, str] = {
    "garbage": "before",
    "close_silently": "before",
    "html_200": "before",
    "json_list_200": "before",
    "wrong_object_200": "before",
    "unknown_status_200": "before",
    "truncated_json": "before",
    "invalid_utf8": "before",
    "wrong_content_type": "before",
    "huge_body": "before",
    "gzip_bomb": "before",
    "endless_body": "before",
    "slow_drip": "before",
    "bad_status_line": "before",
    "giant_header": "before",
    "overlong_body": "before",
    "error_500_garbage": "before",
    "error_402_shapeless": "before",
    "error_400_html": "before",
    "error_401_weird": "before",
    "redirect": "before",
    "status_999": "before",
    "garbage_after_commit": "after",
    "truncated_after_commit": "after",
    "close_after_commit": "after",
    "html_after_commit": "after",
    "slow_drip_after_commit": "after",
}
_AFTER_BASE = {
    "garbage_after_commit": "garbage",
    "truncated_after_commit": "truncated_json",
    "close_after_commit": "close_silently",
    "html_after_commit": "html_200",
    "slow_drip_after_commit": "slow_drip",
}


@dataclass
class _Armed:
    act: str
    paths: tuple[str, ...]
    remaining: int


class HostileProcessor:
    """``127.0.0.1:<port>`` -> the simulator, with hostile acts armed by :meth:`arm`."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        huge_bytes: int = 8 << 20,
        bomb_bytes: int = 64 << 20,
        endless_cap: int = 256 << 20,
    ) -> None:
        self.upstream = upstream
        self.acts = Acts(huge_bytes, bomb_bytes, endless_cap)
        self.rng = random.Random(seed)
        self.served: Counter[str] = Counter()
        self.port = 0
        self._armed: _Armed | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, act: str, *, count: int = 1, paths: tuple[str, ...] = PAYMENT_PATHS) -> None:
        if act not in ACTS:
            raise ValueError(f"unknown act {act!r}")
        with self._lock:
            self._armed = _Armed(act, paths, count)

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def _take(self, path: str) -> str | None:
        with self._lock:
            armed = self._armed
            if armed is None or armed.remaining <= 0 or not path.startswith(armed.paths):
                return None
            armed.remaining -= 1
            self.served[armed.act] += 1
            return armed.act

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> HostileProcessor:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def listen() -> None:
                self._client = httpx.AsyncClient(base_url=self.upstream, timeout=30.0, trust_env=False)
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]

            loop.run_until_complete(listen())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="torture-hostile", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("hostile processor did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> HostileProcessor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                act = self._take(path)
                if act is None:
                    await _send(writer, await self._forward(method, path, headers, body), close=False)
                    continue
                honest = None
                if ACTS[act] == "after":
                    honest = _body_of(await self._forward(method, path, headers, body))
                handler: Callable[[Writer, bytes | None, random.Random], Awaitable[None]] = getattr(
                    self.acts, _AFTER_BASE.get(act, act)
                )
                await handler(writer, honest, self.rng)
                break
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:  # shutting down: end quietly (the stream protocol would log it)
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        assert self._client is not None
        keep = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        resp = await self._client.request(method, path, headers=keep, content=body)
        out = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP]
        out.append(("Content-Length", str(len(resp.content))))
        return _head(f"{resp.status_code} {resp.reason_phrase}", out) + resp.content


_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def _body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, target, headers, body
