"""Byte links the emulator serves: a pseudo-terminal or a loopback TCP socket.

Each endpoint hands received bytes to the emulator, writes its answers, and
can drop the link for a while (scripted disconnects): the pty is closed and a
new one is made (``--link`` keeps a stable symlink to it, as udev does for a
USB reader), the TCP client is closed and refused until the time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from pathlib import Path

OnBytes = Callable[[bytes], None]
Notify = Callable[[str, dict[str, object]], None]

_MAX_PENDING = 256 * 1024


class PtyEndpoint:
    """The reader end of a pseudo-terminal; the host opens the printed /dev/pts path."""

    def __init__(self, on_bytes: OnBytes, on_new_link: Callable[[], None], notify: Notify, link: Path | None) -> None:
        self._on_bytes = on_bytes
        self._on_new_link = on_new_link
        self._notify = notify
        self._link = link
        self._master = -1
        self._slave = -1
        self._pending = bytearray()
        self._reopen: asyncio.TimerHandle | None = None
        self.path = ""

    async def start(self) -> str:
        self._open()
        return self.path

    def _open(self) -> None:
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation: bytes pass as they are
        tty.setraw(master)
        os.set_blocking(master, False)
        # Keeping our own slave fd open means a host closing the port never hangs up the master.
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        if self._link is not None:
            tmp = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.path, tmp)
            os.replace(tmp, self._link)
        loop.add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self._on_bytes(data)

    def send(self, data: bytes) -> None:
        if self._master < 0:
            return  # link down: the bytes are lost, as on a real unplugged cable
        if self._pending:
            self._queue(data)
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        if written < len(data):
            self._queue(data[written:])
            asyncio.get_running_loop().add_writer(self._master, self._writable)

    def _queue(self, data: bytes) -> None:
        if len(self._pending) + len(data) <= _MAX_PENDING:
            self._pending += data  # nobody reads the port: keep a bounded backlog only

    def _writable(self) -> None:
        try:
            written = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending)
        del self._pending[:written]
        if not self._pending:
            asyncio.get_running_loop().remove_writer(self._master)

    def _close_fds(self) -> None:
        loop = asyncio.get_running_loop()
        if self._master >= 0:
            loop.remove_reader(self._master)
            loop.remove_writer(self._master)
            os.close(self._master)
            os.close(self._slave)
        self._master = self._slave = -1
        self._pending.clear()

    def drop(self, seconds: float) -> None:
        """Hang up now; a new pty (same ``--link``) appears after ``seconds``."""
        old = self.path
        self._close_fds()
        self._notify("link_down", {"address": old, "seconds": seconds})

        def reopen() -> None:
            self._reopen = None
            self._open()
            self._on_new_link()
            self._notify("link_up", {"address": self.path})

        if self._reopen is not None:
            self._reopen.cancel()
        self._reopen = asyncio.get_running_loop().call_later(seconds, reopen)

    async def close(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        self._close_fds()
        if self._link is not None and self._link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()


class TcpEndpoint:
    """The byte stream on 127.0.0.1:PORT; one host at a time (a new one replaces the old)."""

    def __init__(self, on_bytes: OnBytes, on_new_link: Callable[[], None], notify: Notify, port: int) -> None:
        self._on_bytes = on_bytes
        self._on_new_link = on_new_link
        self._notify = notify
        self._port = port
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._down_until = 0.0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self._port)
        port = self._server.sockets[0].getsockname()[1]
        return f"socket://127.0.0.1:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            writer.close()
            return
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        self._on_new_link()
        self._notify("link_up", {"address": "tcp client"})
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self._writer is writer:
                    self._on_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def send(self, data: bytes) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(data)

    def drop(self, seconds: float) -> None:
        self._down_until = asyncio.get_running_loop().time() + seconds
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._notify("link_down", {"address": "tcp client", "seconds": seconds})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
