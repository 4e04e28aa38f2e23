"""A hostile front for the processor simulator, for the transport tests (see :class:`HostileFront`)."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter

import httpx

#: Paths a payment's requests touch (card step, create / create-and-confirm, confirm).
PAYMENT_PATHS = ("/v1/payment_intents", "/device/v1/payment_methods")
_HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]) + "\r\n\r\n").encode("latin-1")


class HostileFront:
    """An HTTP/1.1 front on 127.0.0.1 for the simulator that misbehaves on cue.

    Requests are passed to the simulator unless an act is armed for their
    path: then the next ``count`` of them get the act instead, and never
    reach the simulator.  Written by hand (a test server must be free to send
    what a real one never would); it runs on the test's event loop.
    """

    def __init__(self, upstream: str, *, endless_cap: int = 64 << 20, drip_interval: float = 0.2) -> None:
        self.upstream = upstream
        self.endless_cap = endless_cap
        self.drip_interval = drip_interval
        self.redirect_to = "http://198.51.100.7/steal"
        #: body bytes written per act (some may still sit in socket buffers)
        self.sent: Counter[str] = Counter()
        #: (method, path, headers) of every request received
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        #: a Set-Cookie header added to every answer passed through from the simulator, if set
        self.set_cookie: str | None = None
        self._armed: tuple[str, tuple[str, ...]] | None = None
        self._remaining = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(base_url=upstream, timeout=10.0, trust_env=False)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def arm(self, act: str, *, count: int = 1, paths: tuple[str, ...] = PAYMENT_PATHS) -> None:
        self._armed, self._remaining = (act, paths), count

    async def start(self) -> HostileFront:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await self._client.aclose()

    def _take(self, path: str) -> str | None:
        if self._armed is None or self._remaining <= 0 or not path.startswith(self._armed[1]):
            return None
        self._remaining -= 1
        return self._armed[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                self.seen.append((method, path, headers))
                act = self._take(path)
                if act is None:
                    writer.write(await self._forward(method, path, headers, body))
                    await writer.drain()
                    continue
                await getattr(self, "_" + act)(writer)
                return
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        keep = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        resp = await self._client.request(method, path, headers=keep, content=body)
        out = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP]
        out.append(("Content-Length", str(len(resp.content))))
        if self.set_cookie is not None:
            out.append(("Set-Cookie", self.set_cookie))
        return _head(f"{resp.status_code} {resp.reason_phrase}", out) + resp.content

    # -- acts --------------------------------------------------------------------------------------

    async def _redirect(self, w: asyncio.StreamWriter) -> None:
        w.write(_head("302 Found", [("Location", self.redirect_to), ("Content-Length", "0")]))
        await w.drain()

    async def _endless(self, w: asyncio.StreamWriter) -> None:
        """A chunked 200 that never ends: the client must give up on its own."""
        w.write(_head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]))
        chunk = b"[" * 4096
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while self.sent["endless"] < self.endless_cap:  # a cap, so a broken client cannot exhaust memory
            w.write(frame)
            await w.drain()
            self.sent["endless"] += len(chunk)

    async def _huge(self, w: asyncio.StreamWriter) -> None:
        """A 200 announcing 512 MiB of JSON."""
        w.write(_head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(512 << 20))]))
        while self.sent["huge"] < self.endless_cap:
            w.write(b" " * 65536)
            await w.drain()
            self.sent["huge"] += 65536

    async def _gzip_bomb(self, w: asyncio.StreamWriter) -> None:
        """64 KiB of gzip that inflates to 64 MiB of zeros, sent although identity was asked for."""
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        body = packer.compress(b"\0" * (64 << 20)) + packer.flush()
        headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
        w.write(_head("200 OK", [*headers, ("Content-Length", str(len(body)))]) + body)
        await w.drain()

    async def _bare_decline(self, w: asyncio.StreamWriter) -> None:
        """A 402 card_error that names no PaymentIntent (Stripe's always does on a confirm)."""
        body = json.dumps(
            {"error": {"type": "card_error", "code": "card_declined", "decline_code": "do_not_honor", "message": "No."}}
        ).encode()
        headers = [("Content-Type", "application/json"), ("Request-Id", "req_hostile")]
        w.write(_head("402 Payment Required", [*headers, ("Content-Length", str(len(body)))]) + body)
        await w.drain()

    async def _not_an_intent(self, w: asyncio.StreamWriter) -> None:
        """A 200 whose JSON is some other object than the one asked for."""
        body = json.dumps({"object": "list", "data": [], "has_more": False}).encode()
        w.write(_head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]) + body)
        await w.drain()

    async def _drip(self, w: asyncio.StreamWriter) -> None:
        """A plausible answer, one byte every ``drip_interval``: no single read ever times out."""
        body = json.dumps({"object": "payment_intent", "id": "pi_drip", "status": "succeeded"}).encode()
        data = _head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]) + body
        for i in range(len(data)):
            w.write(data[i : i + 1])
            await w.drain()
            self.sent["drip"] += 1
            await asyncio.sleep(self.drip_interval)
