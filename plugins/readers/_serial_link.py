"""The pyserial side of the serial reader plugin: opening ports, reading, discovery.

Kept apart from :mod:`offterm.plugins.readers.serial` (the hook module) so that
listing plugins never imports pyserial; the plugin's factory imports this.
"""

from __future__ import annotations

import asyncio
import os
import threading

import serial
import serial.tools.list_ports
import structlog

from offterm.core.contracts import ReaderInfo, ReaderTransport
from offterm.core.errors import ReaderDisconnected, ReaderError

from ._serial_settings import TRANSPORT_NAME, SerialSettings
from .protocol.host import ByteLink, LinkSettings, OnBytes, OnLost, ProtocolReaderConnection, probe

__all__ = ["SerialLink", "SerialReaderTransport"]

try:  # POSIX device ports expose their file descriptor
    from serial.serialposix import Serial as _PosixSerialPort

    _FD_PORTS: tuple[type, ...] = (_PosixSerialPort,)
except ImportError:  # pragma: no cover - Windows
    _FD_PORTS = ()

log = structlog.get_logger("offterm.readers.serial")

#: How long the reader thread blocks in one read; bounds how fast ``close`` returns.
_POLL = 0.05


class SerialLink(ByteLink):
    """One open serial port.

    On POSIX device ports the event loop watches the file descriptor itself
    (no thread hop per frame) and a read takes everything the port holds; any
    other pyserial backend (``socket://``, Windows COM ports) is read by a
    daemon thread.  Writes go straight to the port: frames are small and the OS
    buffer takes them at once, so on a non-blocking POSIX port a frame is one
    ``write`` call (pyserial would add a ``select`` per write); only what the
    OS buffer did not take goes through pyserial's write, with its timeout.
    """

    def __init__(self, port: str, baudrate: int, write_timeout: float) -> None:
        self.address = port
        self._baudrate = baudrate
        self._write_timeout = write_timeout
        self._serial: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._watched_fd: int | None = None
        #: A non-blocking POSIX port's descriptor, written directly.
        self._write_fd: int | None = None
        self._stop = threading.Event()

    async def open(self, on_bytes: OnBytes, on_lost: OnLost) -> None:
        loop = asyncio.get_running_loop()
        try:
            port = await asyncio.to_thread(self._open_port)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ReaderError(f"cannot open serial port {self.address}: {exc}") from exc
        self._serial = port
        fd: int | None = getattr(port, "fd", None) if isinstance(port, _FD_PORTS) else None
        if fd is not None:
            try:
                loop.add_reader(fd, self._readable, fd, on_bytes, on_lost)
            except NotImplementedError:  # an event loop without fd watching
                fd = None
            else:
                self._watched_fd = fd
                if not os.get_blocking(fd):
                    self._write_fd = fd
                return
        self._start_thread(loop, port, on_bytes, on_lost)

    def _readable(self, fd: int, on_bytes: OnBytes, on_lost: OnLost) -> None:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, reason = b"", f"serial read failed: {exc}"
        else:
            reason = "serial port hung up (device disconnected)"
        if data:
            on_bytes(data)
            return
        self._unwatch()
        if not self._stop.is_set():
            on_lost(reason)

    def _unwatch(self) -> None:
        self._write_fd = None
        if self._watched_fd is not None:
            asyncio.get_running_loop().remove_reader(self._watched_fd)
            self._watched_fd = None

    def _start_thread(
        self, loop: asyncio.AbstractEventLoop, port: serial.SerialBase, on_bytes: OnBytes, on_lost: OnLost
    ) -> None:
        def deliver(data: bytes) -> None:
            if not self._stop.is_set():
                on_bytes(data)

        def lost(reason: str) -> None:
            if not self._stop.is_set():
                on_lost(reason)

        def pump() -> None:
            try:
                while not self._stop.is_set():
                    try:
                        data = port.read(1)
                        if data and port.in_waiting:
                            data += port.read(port.in_waiting)
                    except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                        # TypeError/AttributeError: pyserial's fd went away under a concurrent close.
                        if not self._stop.is_set():
                            loop.call_soon_threadsafe(lost, f"serial read failed: {exc}")
                        return
                    if data:
                        loop.call_soon_threadsafe(deliver, data)
            except RuntimeError:
                return  # the event loop closed under us: nobody is listening any more

        self._thread = threading.Thread(target=pump, name=f"offterm-serial {self.address}", daemon=True)
        self._thread.start()

    def _open_port(self) -> serial.SerialBase:
        port = serial.serial_for_url(
            self.address,
            baudrate=self._baudrate,
            timeout=_POLL,
            write_timeout=self._write_timeout,
            do_not_open=True,
        )
        port.exclusive = True  # POSIX flock: a second process on the same reader would garble both sessions
        port.open()
        # Stale bytes from an earlier session (a crashed host, a reader that kept talking) go.
        port.reset_input_buffer()
        return port

    async def write(self, data: bytes) -> None:
        port = self._serial
        if port is None or self._stop.is_set():
            raise ReaderDisconnected(f"serial port {self.address} is closed")
        try:
            # Calls that never yield to the loop, so frames cannot interleave; small frames
            # fit the OS buffer at once, so no thread hop is needed.
            fd = self._write_fd
            if fd is not None:
                try:
                    written = os.write(fd, data)
                except BlockingIOError:
                    written = 0
                if written == len(data):
                    return
                data = data[written:]
            port.write(data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            raise ReaderDisconnected(f"write to serial port {self.address} failed: {exc}") from exc

    async def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        port, self._serial = self._serial, None
        if port is None:
            return
        self._unwatch()
        if self._thread is not None and hasattr(port, "cancel_read"):
            try:
                port.cancel_read()
            except (serial.SerialException, OSError, AttributeError):
                pass
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 1.0)
        try:
            port.close()
        except (serial.SerialException, OSError):
            pass


class SerialReaderTransport(ReaderTransport):
    def __init__(self, settings: SerialSettings) -> None:
        self.settings = settings
        self._connections: list[ProtocolReaderConnection] = []

    def candidate_ports(self) -> list[str]:
        """The configured port, else USB serial ports matching the vid/pid filters."""
        s = self.settings
        if s.port:
            return [s.port]
        found = []
        for p in serial.tools.list_ports.comports():
            if p.vid is None:
                continue  # not USB: probing legacy UARTs is slow and may upset other devices
            if s.vid is not None and p.vid != s.vid:
                continue
            if s.pid is not None and p.pid != s.pid:
                continue
            found.append(p.device)
        return sorted(found)

    def _link(self, port: str) -> SerialLink:
        return SerialLink(port, self.settings.baudrate, self.settings.link.response_timeout)

    async def _probe(self, port: str, timeout: float) -> ReaderInfo | None:
        info = ReaderInfo(serial_number="", reader_type="", transport=TRANSPORT_NAME, address=port)
        settings = LinkSettings(response_timeout=min(timeout, self.settings.link.response_timeout))
        try:
            found = await probe(info, lambda: self._link(port), settings)
        except ReaderError as exc:
            log.debug("serial_probe_failed", port=port, error=exc.code)
            return None
        return ReaderInfo(
            serial_number=found.serial_number,
            reader_type=found.reader_type,
            transport=TRANSPORT_NAME,
            address=port,
            label=f"{found.reader_type} on {port}",
            firmware_version=found.firmware_version,
            location_id=found.location_id,
        )

    async def discover(self, timeout: float = 5.0) -> list[ReaderInfo]:
        ports = self.candidate_ports()
        results = await asyncio.gather(*(self._probe(p, timeout) for p in ports))
        return [r for r in results if r is not None]

    async def connect(self, reader: ReaderInfo) -> ProtocolReaderConnection:
        if reader.transport != TRANSPORT_NAME:
            raise ReaderError(f"reader {reader.serial_number} is not a serial reader ({reader.transport})")
        self._connections = [c for c in self._connections if c.is_connected or c.is_reconnecting]
        for existing in self._connections:
            if existing.info.serial_number == reader.serial_number:
                raise ReaderError(f"reader {reader.serial_number} is already connected")
        # Each (re)open starts from the address the reader was last reached at.
        connection = ProtocolReaderConnection(reader, lambda: self._reopen(connection.info), self.settings.link)
        await connection.start()
        self._connections.append(connection)
        return connection

    def _reopen(self, reader: ReaderInfo) -> ByteLink:
        """The reader's last port; if it is gone and ports are discovered, search for the reader again."""
        return _RelocatingLink(self, reader)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
        self._connections.clear()


class _RelocatingLink(ByteLink):
    """Opens the reader's known port, or (USB discovery only) the port it re-enumerated under."""

    def __init__(self, transport: SerialReaderTransport, reader: ReaderInfo) -> None:
        self._transport = transport
        self._reader = reader
        self.address = reader.address
        self._link: SerialLink | None = None

    async def open(self, on_bytes: OnBytes, on_lost: OnLost) -> None:
        transport = self._transport
        try:
            self._link = transport._link(self._reader.address)
            await self._link.open(on_bytes, on_lost)
            return
        except ReaderError:
            self._link = None
            if transport.settings.port:
                raise
        for port in transport.candidate_ports():
            found = await transport._probe(port, transport.settings.link.response_timeout)
            if found is not None and found.serial_number == self._reader.serial_number:
                log.info("serial_reader_moved", reader=found.serial_number, port=port)
                self.address = port
                self._link = transport._link(port)
                await self._link.open(on_bytes, on_lost)
                return
        raise ReaderError(f"reader {self._reader.serial_number} is not on any serial port")

    async def write(self, data: bytes) -> None:
        if self._link is None:
            raise ReaderDisconnected("serial link is not open")
        await self._link.write(data)

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
