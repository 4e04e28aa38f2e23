"""The bleak side of the BLE reader plugin: GATT links, scanning, stale-link clean-up.

Kept apart from :mod:`offterm.plugins.readers.ble` (the hook module) so that
listing plugins never imports bleak (nor dbus_fast); the plugin's factory imports this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from offterm.core.contracts import ReaderInfo, ReaderTransport
from offterm.core.errors import ReaderDisconnected, ReaderError

from ._ble_settings import TRANSPORT_NAME, BleSettings
from .protocol import ble as gatt
from .protocol.host import ByteLink, OnBytes, OnLost, ProtocolReaderConnection

__all__ = ["BleLink", "BleReaderTransport"]

log = structlog.get_logger("offterm.readers.ble")

#: bleak raises these for radio, D-Bus and timing failures.
_BLE_ERRORS = (BleakError, TimeoutError, OSError, EOFError)


class BleLink(ByteLink):
    """One GATT connection: writes go to RX in MTU-sized pieces, TX notifications come back."""

    def __init__(self, address: str, settings: BleSettings, device: BLEDevice | None = None) -> None:
        self.address = address
        self._settings = settings
        self._device = device
        self._client: BleakClient | None = None
        self._rx: BleakGATTCharacteristic | None = None
        self._chunk = gatt.chunk_size(gatt.DEFAULT_ATT_MTU)
        self._with_response = True
        self._closing = False
        self._lock = asyncio.Lock()
        self._on_lost: OnLost | None = None

    async def open(self, on_bytes: OnBytes, on_lost: OnLost) -> None:
        self._on_lost = on_lost
        client = BleakClient(
            self._device or self.address,
            disconnected_callback=self._disconnected,
            timeout=self._settings.scan_timeout,
            bluez=self._settings.bluez,
        )
        try:
            await client.connect()
        except _BLE_ERRORS as exc:
            raise ReaderError(f"cannot connect to BLE reader {self.address}: {exc or type(exc).__name__}") from exc
        self._client = client
        try:
            rx = client.services.get_characteristic(gatt.RX_CHAR_UUID)
            tx = client.services.get_characteristic(gatt.TX_CHAR_UUID)
            if rx is None or tx is None:
                raise ReaderError(f"BLE device {self.address} has no offterm reader service")
            self._rx = rx
            # BlueZ reports the negotiated ATT MTU per characteristic; bleak exposes MTU - 3.
            self._chunk = max(gatt.chunk_size(gatt.DEFAULT_ATT_MTU), rx.max_write_without_response_size)
            self._with_response = "write-without-response" not in rx.properties
            await client.start_notify(tx, lambda _char, data: on_bytes(bytes(data)))
        except BaseException:
            await self.close()
            raise

    def _disconnected(self, _client: BleakClient) -> None:
        if not self._closing and self._on_lost is not None:
            self._on_lost("the BLE link dropped")

    async def write(self, data: bytes) -> None:
        client, rx = self._client, self._rx
        if client is None or rx is None or self._closing:
            raise ReaderDisconnected(f"BLE reader {self.address} is not connected")
        async with self._lock:  # frames from concurrent senders must not interleave their pieces
            try:
                for i in range(0, len(data), self._chunk):
                    await client.write_gatt_char(rx, data[i : i + self._chunk], response=self._with_response)
            except _BLE_ERRORS as exc:
                raise ReaderDisconnected(
                    f"write to BLE reader {self.address} failed: {exc or type(exc).__name__}"
                ) from exc

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        client, self._client = self._client, None
        if client is not None:
            try:
                async with asyncio.timeout(self._settings.scan_timeout):
                    await client.disconnect()
            except _BLE_ERRORS as exc:
                log.debug("ble_disconnect_failed", address=self.address, error=type(exc).__name__)


class BleReaderTransport(ReaderTransport):
    def __init__(self, settings: BleSettings) -> None:
        self.settings = settings
        self._connections: list[ProtocolReaderConnection] = []
        self._devices: dict[str, BLEDevice] = {}
        self._stale_cleaned = False

    async def clean_stale_links(self) -> int:
        """Disconnect links BlueZ still holds for this service (a crashed process left them); returns how many."""
        self._stale_cleaned = True
        try:
            from bleak import BleakAdapter  # bleak >= 3.1

            adapter = await BleakAdapter.get(bluez=self.settings.bluez)
            devices = await adapter.get_connected_devices([self.settings.service_uuid])
        except (ImportError, NotImplementedError):
            return 0
        except _BLE_ERRORS as exc:
            log.warning("ble_stale_check_failed", error=type(exc).__name__)
            return 0
        ours = {c.info.address for c in self._connections if c.is_connected}
        cleaned = 0
        for device in devices:
            if device.address in ours:
                continue
            client = BleakClient(device, timeout=self.settings.scan_timeout, bluez=self.settings.bluez)
            try:
                await client.connect()  # adopts the existing link without a new Connect
                await client.disconnect()
                cleaned += 1
                log.info("ble_stale_link_closed", address=device.address)
            except _BLE_ERRORS as exc:
                log.warning("ble_stale_link_not_closed", address=device.address, error=type(exc).__name__)
        return cleaned

    def _info(self, device: BLEDevice, service_data: Mapping[str, bytes]) -> ReaderInfo:
        raw = service_data.get(self.settings.service_uuid, b"")
        try:
            serial = raw.decode("utf-8").strip() if raw else ""
        except UnicodeDecodeError:
            serial = ""
        name = device.name or ""
        return ReaderInfo(
            serial_number=serial or device.address,
            reader_type="ble_reader",
            transport=TRANSPORT_NAME,
            address=device.address,
            label=name or device.address,
        )

    async def discover(self, timeout: float = 5.0) -> list[ReaderInfo]:
        if not self._stale_cleaned:
            await self.clean_stale_links()
        try:
            found = await BleakScanner.discover(
                timeout=timeout,
                return_adv=True,
                service_uuids=[self.settings.service_uuid],
                bluez=self.settings.bluez,
            )
        except _BLE_ERRORS as exc:
            raise ReaderError(f"Bluetooth scan failed: {exc or type(exc).__name__}") from exc
        readers = []
        prefix = self.settings.name_prefix.lower()
        for device, adv in found.values():
            if self.settings.service_uuid not in [u.lower() for u in adv.service_uuids]:
                continue
            if prefix and not (adv.local_name or device.name or "").lower().startswith(prefix):
                continue
            self._devices[device.address] = device
            readers.append(self._info(device, adv.service_data))
        return sorted(readers, key=lambda r: r.serial_number)

    async def connect(self, reader: ReaderInfo) -> ProtocolReaderConnection:
        if reader.transport != TRANSPORT_NAME:
            raise ReaderError(f"reader {reader.serial_number} is not a BLE reader ({reader.transport})")
        if not self._stale_cleaned:
            await self.clean_stale_links()
        self._connections = [c for c in self._connections if c.is_connected or c.is_reconnecting]
        for existing in self._connections:
            if existing.info.address == reader.address:
                raise ReaderError(f"reader {reader.serial_number} is already connected")
        # Discovery's serial may be the address (no service data): accept whichever serial answers then.
        expected = "" if reader.serial_number == reader.address else reader.serial_number
        first = self._devices.get(reader.address)
        links = iter([first])  # the first open reuses the scanned device; reconnects scan by address

        def make_link() -> BleLink:
            return BleLink(reader.address, self.settings, next(links, None))

        connection = ProtocolReaderConnection(
            ReaderInfo(
                serial_number=expected,
                reader_type=reader.reader_type,
                transport=TRANSPORT_NAME,
                address=reader.address,
                label=reader.label,
            ),
            make_link,
            self.settings.link,
        )
        await connection.start()
        self._connections.append(connection)
        return connection

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
        self._connections.clear()
