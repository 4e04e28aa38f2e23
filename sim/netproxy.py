"""A TCP proxy on 127.0.0.1 that plays a bad network between a client and a server.

Modes (switch any time with :meth:`FaultProxy.set_mode`):

* ``pass``: bytes flow both ways untouched;
* ``down``: the network is gone: the listener closes (new connections are
  refused) and open connections are cut;
* ``blackhole``: connections are accepted but nothing ever answers; data
  already in flight stalls (it flows again if the mode returns to ``pass``);
* ``reset``: new connections are reset at once, open ones too;
* ``delay``: every chunk waits ``delay`` seconds before it is passed on;
* ``drip``: server-to-client bytes trickle out, ``drip_bytes`` every ``drip_interval`` seconds.

As on a real network, an end (FIN) or a reset (RST) from either side reaches the other: a server
that dies with a request unread resets its client, a client killed with an answer unread resets
its server.

It runs its own event loop in a thread, so synchronous tests can use it::

    with FaultProxy(upstream_port=sim.port) as proxy:
        client = httpx.Client(base_url=proxy.url)
        proxy.set_mode("down")
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

MODES = ("pass", "down", "blackhole", "reset", "delay", "drip")


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def cut(self, reset: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _rst(writer)
            else:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Proxy ``127.0.0.1:<port>`` -> ``upstream_host:upstream_port`` with a switchable network mode."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        port: int = 0,
        mode: str = "pass",
        delay: float = 0.5,
        drip_bytes: int = 1,
        drip_interval: float = 0.05,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.delay = delay
        self.drip_bytes = drip_bytes
        self.drip_interval = drip_interval
        self._requested_port = port
        self._initial_mode = mode
        self.mode = "pass"
        self.port = 0
        self.connections_total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None

    # -- life cycle (sync API) ----------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._listen(self._requested_port))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="offterm-netproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")
        self.set_mode(self._initial_mode)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def terminal_config(
        self, config: dict[str, Any] | None = None, *, token_path: str | None = "/backend/connection_token"
    ) -> dict[str, Any]:
        """``config`` (a Terminal configuration dict) with everything it sends upstream routed through here.

        That is the Stripe transport's ``api_base`` (its PaymentIntent calls and its
        reachability probe, ``probe_path``), the device API (``device_api_base``; dropped,
        so it follows ``api_base``) and, unless ``token_path`` is None, the ``http``
        connection-token provider's ``url`` (``token_path`` on the upstream: the
        simulator's "your backend" by default).  ``set_mode("down")`` then takes the
        terminal offline, ``set_mode("pass")`` brings it back.  A copy is returned;
        the other settings are kept.  A token backend elsewhere needs a proxy of its
        own: ``backend_proxy.terminal_config(cfg, token_path="/connection_token")`` after
        passing ``cfg`` through the processor's proxy with ``token_path=None``.
        """
        out = copy.deepcopy(config) if config else {}
        stripe = out.setdefault("forwarding", {}).setdefault("stripe", {})
        stripe["api_base"] = self.url
        stripe.pop("device_api_base", None)
        if token_path is not None:
            tokens = out.setdefault("tokens", {})
            providers = list(tokens.get("providers", ["http"]))
            tokens["providers"] = providers if "http" in providers else ["http", *providers]
            tokens.setdefault("http", {})["url"] = self.url + token_path
        return out

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: str, **settings: float) -> None:
        """Switch the network: one of MODES; ``delay``, ``drip_bytes``, ``drip_interval`` may be given too."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; use one of {', '.join(MODES)}")
        for key, value in settings.items():
            if key not in ("delay", "drip_bytes", "drip_interval"):
                raise ValueError(f"unknown proxy setting {key!r}")
            setattr(self, key, int(value) if key == "drip_bytes" else float(value))
        self._call(self._apply(mode))

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- inside the loop ------------------------------------------------------------

    async def _listen(self, port: int) -> None:
        self._flowing = self._flowing or asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _apply(self, mode: str) -> None:
        assert self._flowing is not None
        previous, self.mode = self.mode, mode
        if mode in ("down", "reset"):
            for link in list(self._links):
                link.cut(reset=mode == "reset")
            self._links.clear()
        if mode == "down":
            await self._close_listener()
        elif previous == "down" or self._server is None:
            await self._listen(self.port)
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _shutdown(self) -> None:
        await self._close_listener()
        for link in list(self._links):
            link.cut(reset=False)
        self._links.clear()
        # Finish every connection handler so none is destroyed while pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's stream server logs a traceback for a handler that ends cancelled (it does at
        # shutdown): finish normally instead.
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            return

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode in ("reset", "down"):
            _rst(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode == "blackhole":
                # Accept, read and discard until the mode changes; answer nothing.
                assert self._flowing is not None
                await self._flowing.wait()
                if self.mode in ("down", "reset"):
                    return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                _rst(writer)
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link, toward_client=False)),
                asyncio.create_task(self._pump(up_reader, writer, link, toward_client=True)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            for w in (writer, link.upstream):
                if w is not None and not w.transport.is_closing():
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, toward_client: bool
    ) -> None:
        """Copy one direction; an end (FIN) goes on as an end, a reset resets the whole connection."""
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._flowing.wait()
                if self.mode == "delay":
                    await asyncio.sleep(self.delay)
                if self.mode == "drip" and toward_client:
                    for i in range(0, len(data), max(1, self.drip_bytes)):
                        writer.write(data[i : i + max(1, self.drip_bytes)])
                        await writer.drain()
                        await asyncio.sleep(self.drip_interval)
                        await self._flowing.wait()
                else:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            # One side reset or vanished (a server killed with a request unread, a client SIGKILLed with
            # an answer unread): the other side is reset too, as a real network delivers an RST.  Left
            # open, it waited for ever: a client for an answer that cannot come, a server holding a dead
            # client's transaction and its locks.
            link.cut(reset=True)
