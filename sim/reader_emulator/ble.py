"""``--ble``: the emulated reader as a BLE peripheral behind a fake BlueZ.

There is no Bluetooth radio here, so the process starts a private D-Bus
*system* bus (dbus-daemon, via python-dbusmock) and serves on it what
bluetoothd would: adapter ``hci0`` and one device that advertises the reader
service.  ``Device1.Connect`` publishes the GATT service (RX write, TX
notify, the negotiated MTU); ``WriteValue`` on RX feeds the emulator core and
its answers go out as ``PropertiesChanged(Value)`` notifications on TX, cut
to the MTU.  The real ``bleak`` talks to it unchanged when
``DBUS_SYSTEM_BUS_ADDRESS`` points at the address printed on the first line.

Needs the Debian packages dbus (dbus-daemon) and bluez (``bluetoothctl
--version``, which bleak runs), and python-dbusmock with dbus-python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import dbus
import dbus.mainloop.glib
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject

from offterm.plugins.readers.protocol import ble as gatt

from .app import Console, EmulatorOptions
from .core import ReaderEmulator
from .script import HELP, ScriptError, parse_line

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"
PROPS = dbus.PROPERTIES_IFACE
ADAPTER = "/org/bluez/hci0"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
ADVERTISE_EVERY_MS = 100


def _error(name: str, text: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(text, name=f"org.bluez.Error.{name}")


_SourceFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class GLibLoop:
    """The default GLib main context that dbus-python serves on, driven through ctypes.

    python-dbusmock runs its servers this way too; it spares a PyGObject build.
    ``call_later`` gives the emulator core its timers; ``call_soon_threadsafe``
    brings control lines from the stdin thread onto the loop.
    """

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0")
        self._lib.g_timeout_add.argtypes = [ctypes.c_uint, _SourceFunc, ctypes.c_void_p]
        self._lib.g_timeout_add.restype = ctypes.c_uint
        self._lib.g_idle_add.argtypes = [_SourceFunc, ctypes.c_void_p]
        self._lib.g_idle_add.restype = ctypes.c_uint
        self._lib.g_source_remove.argtypes = [ctypes.c_uint]
        self._lib.g_main_context_iteration.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._lib.g_main_context_wakeup.argtypes = [ctypes.c_void_p]
        self._keep: dict[int, Any] = {}  # C callbacks must outlive their sources
        self._lock = threading.Lock()
        self._serial = 0
        self.running = True

    def _source(self, callback: Callable[[], bool]) -> tuple[int, Any]:
        with self._lock:
            self._serial += 1
            key = self._serial

        def fire(_data: Any) -> int:
            again = False
            try:
                again = bool(callback())
            finally:
                if not again:
                    self._keep.pop(key, None)
            return int(again)

        func = _SourceFunc(fire)
        self._keep[key] = func
        return key, func

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self)

        def once() -> bool:
            if not timer.cancelled:
                timer.cancelled = True
                callback()
            return False

        key, func = self._source(once)
        timer.key, timer.source = key, self._lib.g_timeout_add(max(0, int(delay * 1000)), func, None)
        return timer

    def call_every(self, interval: float, callback: Callable[[], bool]) -> None:
        _, func = self._source(callback)
        self._lib.g_timeout_add(max(1, int(interval * 1000)), func, None)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        def once() -> bool:
            callback()
            return False

        _, func = self._source(once)
        self._lib.g_idle_add(func, None)

    def _remove(self, timer: _Timer) -> None:
        self._lib.g_source_remove(timer.source)
        self._keep.pop(timer.key, None)

    def run(self) -> None:
        self.call_every(0.25, lambda: self.running)  # returns to Python regularly, so signals are handled
        while self.running:
            self._lib.g_main_context_iteration(None, 1)

    def stop(self) -> None:
        self.running = False
        self._lib.g_main_context_wakeup(None)


class _Timer:
    def __init__(self, loop: GLibLoop) -> None:
        self._loop = loop
        self.key = 0
        self.source = 0
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._remove(self)


class Characteristic(mockobject.DBusMockObject):  # type: ignore[misc]  # dbus-python is untyped
    """A GATT characteristic whose methods the peripheral implements."""

    peripheral: Peripheral

    @dbus.service.method(CHAR_IFACE, in_signature="aya{sv}", out_signature="")  # type: ignore[untyped-decorator]
    def WriteValue(self, value: Any, options: Any) -> None:  # noqa: N802 - BlueZ's name
        self.peripheral.written(self.path, bytes(value))

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="ay")  # type: ignore[untyped-decorator]
    def ReadValue(self, options: Any) -> Any:  # noqa: N802
        return dbus.Array(self.props[CHAR_IFACE].get("Value", []), signature="y")

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="")  # type: ignore[untyped-decorator]
    def StartNotify(self) -> None:  # noqa: N802
        self.peripheral.set_notifying(self, True)

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="")  # type: ignore[untyped-decorator]
    def StopNotify(self) -> None:  # noqa: N802
        self.peripheral.set_notifying(self, False)


class Device(mockobject.DBusMockObject):  # type: ignore[misc]
    peripheral: Peripheral

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")  # type: ignore[untyped-decorator]
    def Connect(self) -> None:  # noqa: N802
        self.peripheral.connect()

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")  # type: ignore[untyped-decorator]
    def Disconnect(self) -> None:  # noqa: N802
        self.peripheral.disconnect("host")


class Peripheral:
    """One advertising reader on the fake adapter, wired to an emulator core."""

    def __init__(
        self, loop: GLibLoop, root: mockobject.DBusMockObject, console: Console, address: str, name: str, mtu: int
    ) -> None:
        self.loop = loop
        self.root = root
        self.console = console
        self.address = address
        self.name = name
        self.mtu = max(gatt.DEFAULT_ATT_MTU, min(mtu, gatt.MAX_ATT_MTU))
        self.path = f"{ADAPTER}/dev_{address.replace(':', '_')}"
        self.service_path = f"{self.path}/service000a"
        self.rx_path = f"{self.service_path}/char000b"
        self.tx_path = f"{self.service_path}/char000d"
        self.cccd_path = f"{self.tx_path}/desc000f"
        self.connected = False
        self.notifying = False
        self.down = False
        self.emulator: ReaderEmulator | None = None
        self.quiet = False
        self._rssi = -50

    # -- objects ----------------------------------------------------------------------------------

    def _emit_added(self, path: str, interfaces: dict[str, Any]) -> None:
        self.root.EmitSignal(
            OBJECT_MANAGER_IFACE,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [dbus.ObjectPath(path), interfaces],
        )

    def _emit_removed(self, path: str, interfaces: list[str]) -> None:
        self.root.EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [dbus.ObjectPath(path), interfaces])

    def add_device(self, serial_number: str) -> None:
        props = {
            "Address": dbus.String(self.address),
            "AddressType": dbus.String("random"),
            "Name": dbus.String(self.name),
            "Alias": dbus.String(self.name),
            "Adapter": dbus.ObjectPath(ADAPTER),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "UUIDs": dbus.Array([gatt.SERVICE_UUID], signature="s"),
            "RSSI": dbus.Int16(self._rssi),
            # dicts, not arrays: bleak's scanner reads them with .items()
            "ServiceData": dbus.Dictionary(
                {gatt.SERVICE_UUID: dbus.Array(serial_number.encode(), signature="y")}, signature="sv"
            ),
            "ManufacturerData": dbus.Dictionary({}, signature="qv"),
        }
        self.root.AddObject(self.path, DEVICE_IFACE, props, [], mock_class=Device)
        device = mockobject.objects[self.path]
        device.peripheral = self
        self._emit_added(self.path, {DEVICE_IFACE: props})
        self.loop.call_every(ADVERTISE_EVERY_MS / 1000, self._advertise)

    def _advertise(self) -> bool:
        """While the adapter scans, a disconnected device shows up with fresh RSSI (an advertisement)."""
        adapter = mockobject.objects.get(ADAPTER)
        if adapter is not None and adapter.props[ADAPTER_IFACE].get("Discovering") and not self.connected:
            if not self.down:
                self._rssi = -50 if self._rssi != -50 else -51
                self._device_props({"RSSI": dbus.Int16(self._rssi)})
        return True

    def _device_props(self, changed: dict[str, Any]) -> None:
        device = mockobject.objects[self.path]
        device.props[DEVICE_IFACE].update(changed)
        device.EmitSignal(
            PROPS, "PropertiesChanged", "sa{sv}as", [DEVICE_IFACE, changed, dbus.Array([], signature="s")]
        )

    def _add_gatt(self) -> None:
        service = {
            "UUID": dbus.String(gatt.SERVICE_UUID),
            "Device": dbus.ObjectPath(self.path),
            "Primary": dbus.Boolean(True),
            "Includes": dbus.Array([], signature="o"),
        }
        self.root.AddObject(self.service_path, SERVICE_IFACE, service, [])
        self._emit_added(self.service_path, {SERVICE_IFACE: service})
        for path, uuid, flags in (
            (self.rx_path, gatt.RX_CHAR_UUID, ["write", "write-without-response"]),
            (self.tx_path, gatt.TX_CHAR_UUID, ["notify"]),
        ):
            props = {
                "UUID": dbus.String(uuid),
                "Service": dbus.ObjectPath(self.service_path),
                "Value": dbus.Array([], signature="y"),
                "Notifying": dbus.Boolean(False),
                "Flags": dbus.Array(flags, signature="s"),
                "MTU": dbus.UInt16(self.mtu),
            }
            self.root.AddObject(path, CHAR_IFACE, props, [], mock_class=Characteristic)
            mockobject.objects[path].peripheral = self
            self._emit_added(path, {CHAR_IFACE: props})
        cccd = {"UUID": dbus.String(CCCD_UUID), "Characteristic": dbus.ObjectPath(self.tx_path)}
        self.root.AddObject(self.cccd_path, DESC_IFACE, cccd, [])
        self._emit_added(self.cccd_path, {DESC_IFACE: cccd})

    def _remove_gatt(self) -> None:
        for path, iface in (
            (self.cccd_path, DESC_IFACE),
            (self.tx_path, CHAR_IFACE),
            (self.rx_path, CHAR_IFACE),
            (self.service_path, SERVICE_IFACE),
        ):
            if path in mockobject.objects:
                self.root.RemoveObject(path)
                self._emit_removed(path, [iface])

    # -- link -------------------------------------------------------------------------------------

    def _event(self, line: dict[str, Any]) -> None:
        if not self.quiet:
            self.console.json(line)

    def connect(self) -> None:
        if self.down:
            raise _error("Failed", "le-connection-abort-by-remote")
        if self.connected:
            raise _error("AlreadyConnected", "Already Connected")
        self.connected = True
        self.notifying = False
        self._device_props({"Connected": dbus.Boolean(True)})
        self._add_gatt()
        self._device_props({"ServicesResolved": dbus.Boolean(True)})
        if self.emulator is not None:
            self.emulator.link_reset()
        self._event({"event": "link_up", "address": self.address})

    def disconnect(self, by: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self.notifying = False
        self._device_props({"ServicesResolved": dbus.Boolean(False)})
        self._remove_gatt()
        self._device_props({"Connected": dbus.Boolean(False)})
        if self.emulator is not None:
            self.emulator.link_reset()
        self._event({"event": "link_down", "address": self.address, "by": by})

    def drop(self, seconds: float) -> None:
        """The reader goes out of range: disconnect, refuse and stay silent for ``seconds``."""
        self.down = True
        self.disconnect("reader")

        def back() -> None:
            self.down = False

        self.loop.call_later(seconds, back)

    def set_notifying(self, char: Characteristic, on: bool) -> None:
        if char.path == self.tx_path:
            self.notifying = on
        char.props[CHAR_IFACE]["Notifying"] = dbus.Boolean(on)
        char.EmitSignal(
            PROPS, "PropertiesChanged", "sa{sv}as", [CHAR_IFACE, {"Notifying": dbus.Boolean(on)}, dbus.Array([], "s")]
        )

    def written(self, path: str, data: bytes) -> None:
        if path != self.rx_path:
            raise _error("NotPermitted", "Write not permitted")
        if self.emulator is not None:
            self.emulator.receive(data)

    def send(self, data: bytes) -> None:
        """Reader -> host: notifications of at most MTU - 3 bytes each."""
        if not (self.connected and self.notifying):
            return
        tx = mockobject.objects.get(self.tx_path)
        if tx is None:
            return
        for piece in gatt.chunks(data, self.mtu):
            value = dbus.Array(piece, signature="y")
            tx.props[CHAR_IFACE]["Value"] = value
            tx.EmitSignal(PROPS, "PropertiesChanged", "sa{sv}as", [CHAR_IFACE, {"Value": value}, dbus.Array([], "s")])


_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateSystemBus:
    """A dbus-daemon of our own, acting as the system bus; it dies with this process, even on SIGKILL."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="offterm-ble-bus-")
        self._socket = os.path.join(self._dir, "system_bus_socket")
        self._proc: subprocess.Popen[bytes] | None = None
        self.address = f"unix:path={self._socket}"

    def start(self) -> None:
        config = os.path.join(self._dir, "bus.conf")
        with open(config, "w") as fh:
            fh.write(_BUS_CONFIG.format(socket=self._socket))
        self._proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
        )
        assert self._proc.stdout is not None
        if not self._proc.stdout.readline():  # printed once it listens
            raise RuntimeError("dbus-daemon did not start")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run_ble(options: EmulatorOptions | None = None, name: str | None = None, mtu: int = 185) -> int:
    """Serve the reader over a fake BlueZ; prints the private system bus address first."""
    options = options or EmulatorOptions()
    console = Console(sys.stdout)
    bus_daemon = PrivateSystemBus()
    bus_daemon.start()
    loop = GLibLoop()
    try:
        dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
        bus = dbus.bus.BusConnection(bus_daemon.address)
        bus_name = dbus.service.BusName(BLUEZ, bus, allow_replacement=True, replace_existing=True, do_not_queue=True)
        root = mockobject.DBusMockObject(bus_name, "/", OBJECT_MANAGER_IFACE, {}, os.devnull, True)
        mockobject.objects["/"] = root
        root.AddTemplate("bluez5", {"enable_monitor_api": False})
        root.AddAdapter("hci0", "offterm-pos")
        serial = options.identity.serial_number
        name = name or (serial if serial.upper().startswith("OFFTERM") else f"OFFTERM-{serial}")
        peripheral = Peripheral(loop, root, console, "F0:0F:7E:00:00:01", name, mtu)
        emulator = ReaderEmulator(
            peripheral.send,
            loop,
            identity=options.identity,
            card_key=options.card_key,
            default=options.default,
            drop_link=peripheral.drop,
            on_event=None if options.quiet else partial(_print_event, console),
        )
        for presentation in options.script:
            emulator.present(presentation)
        peripheral.emulator = emulator
        peripheral.quiet = options.quiet
        peripheral.add_device(serial)
        console.line(bus_daemon.address)

        def read_control() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(partial(_control, line, emulator, peripheral, console, loop))

        threading.Thread(target=read_control, name="emulator-control", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.stop())
        loop.run()
    finally:
        bus_daemon.stop()
    return 0


def _print_event(console: Console, name: str, fields: dict[str, Any]) -> None:
    console.json({"event": name, **fields})


def _control(line: str, emulator: ReaderEmulator, peripheral: Peripheral, console: Console, loop: GLibLoop) -> None:
    try:
        command = parse_line(line)
    except ScriptError as exc:
        console.json({"error": str(exc)})
        return
    if command is None:
        return
    if command.name == "present":
        assert command.presentation is not None
        emulator.present(command.presentation)
        console.json({"ok": "present", "next": command.presentation.describe()})
    elif command.name == "disconnect":
        peripheral.drop(command.seconds)
        console.json({"ok": "disconnect", "seconds": command.seconds})
    elif command.name == "noise":
        peripheral.send(os.urandom(command.count))
        console.json({"ok": "noise", "bytes": command.count})
    elif command.name == "clear":
        emulator.queue.clear()
        console.json({"ok": "clear"})
    elif command.name == "status":
        console.json({"ok": "status", "connected": peripheral.connected, **emulator.status()})
    elif command.name == "help":
        console.json({"ok": "help", "text": HELP})
    elif command.name == "quit":
        console.json({"ok": "quit"})
        loop.stop()
