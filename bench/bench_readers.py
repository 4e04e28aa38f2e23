"""Reader link benchmarks: collect round trips vs bare links over the same kind of link, same run.

Serial: ``SerialReaderTransport`` collecting from the emulator on a pty, vs a
bare pyserial client doing a framed echo with a minimal echo server on another
pty (the same request and reply bytes, none of the protocol work).

BLE: ``BleReaderTransport`` collecting from the emulator behind the fake
BlueZ, vs bare bleak writing the same request to RX and waiting for the same
reply bytes as TX notifications, on the same fake BlueZ and emulator.

Reports rounds/s and the ratio (ours / bare; target >= 0.8), as a markdown
table; ``--write-docs`` puts it into docs/reader-protocol.md.  ``--cpu`` adds
(Linux) the CPU time each side of the serial measurements spent per round trip,
which shows where a collect's time goes.

    python bench/bench_readers.py [--collects 500] [--rounds 5] [--no-ble] [--cpu] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reader-protocol.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def emulator(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "offterm.sim.reader_emulator", "--quiet", "--exit-with-parent", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


# -- the bare serial echo server (runs as a child process of this script) --------------------------------


def echo_server(reply_hex: str) -> None:
    """Answer every complete frame with ``reply`` bytes: framing by length only, nothing else."""
    from offterm.plugins.readers.protocol.framing import HEADER_SIZE, SYNC, TRAILER_SIZE

    reply = bytes.fromhex(reply_hex)
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    print(os.ttyname(slave), flush=True)
    buf = bytearray()
    while True:
        buf += os.read(master, 65536)
        while True:
            start = buf.find(SYNC)
            if start < 0 or len(buf) - start < HEADER_SIZE:
                break
            total = HEADER_SIZE + int.from_bytes(buf[start + 4 : start + 6], "big") + TRAILER_SIZE
            if len(buf) - start < total:
                break
            del buf[: start + total]
            os.write(master, reply)


def start_echo_server(reply: bytes) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "--echo-server", reply.hex()], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def sample_exchange() -> tuple[bytes, bytes]:
    """The bytes of one collect: the request frame and the emulator's reply frames (event + result)."""
    from offterm.plugins.readers.protocol import messages as m
    from offterm.sim.reader_emulator import ReaderEmulator, parse_presentation

    sent: list[bytes] = []
    loop = asyncio.new_event_loop()  # a scheduler only: an instant presentation sets no timer
    emu = ReaderEmulator(sent.append, loop, default=parse_presentation(["visa", "tap"]))
    request = m.encode(m.Collect("0123456789abcdef", 1000, "usd", m.READ_METHODS, 60_000))
    emu.receive(request)
    loop.close()
    return request, b"".join(sent)


# -- measurements ---------------------------------------------------------------------------------------------


async def rate(n: int, one: Callable[[], Awaitable[object]]) -> float:
    for _ in range(20):  # warm up
        await one()
    t0 = time.perf_counter()
    for _ in range(n):
        await one()
    return n / (time.perf_counter() - t0)


def process_cpu(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) used so far by this process, or by ``pid`` (Linux /proc); None if unknown."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuLog:
    """CPU seconds per side, summed over the rounds of one measurement (reporting only)."""

    def __init__(self) -> None:
        self.client = 0.0
        self.server: float | None = 0.0
        self.trips = 0

    async def measure(self, n: int, one: Callable[[], Awaitable[object]], server_pid: int) -> float:
        c0, s0 = process_cpu(), process_cpu(server_pid)
        result = await rate(n, one)
        c1, s1 = process_cpu(), process_cpu(server_pid)
        assert c0 is not None and c1 is not None
        self.client += c1 - c0
        self.server = None if self.server is None or s0 is None or s1 is None else self.server + s1 - s0
        self.trips += n + 20  # rate() warms up with 20
        return result

    def per_trip(self) -> tuple[float, float | None]:
        """(client, server) microseconds of CPU per round trip."""
        trips = max(self.trips, 1)
        return self.client / trips * 1e6, None if self.server is None else self.server / trips * 1e6


async def serial_rounds(
    collects: int, rounds: int, cpu: dict[str, CpuLog] | None = None
) -> tuple[list[float], list[float], list[float]]:
    """Rates per round: our collect, bare echo, and a bare client driving an emulator (same bytes).

    ``cpu`` (reporting only) receives the CPU time of both sides of each measurement.
    """
    import serial

    from offterm.core.contracts import CollectRequest
    from offterm.plugins.readers.serial import SerialReaderTransport, parse_options

    request, reply = sample_exchange()
    emu, emu_path = emulator("--serial", "--default-card", "visa tap")
    emu2, emu2_path = emulator("--serial", "--default-card", "visa tap")
    echo, echo_path = start_echo_server(reply)
    ours: list[float] = []
    bare_echo: list[float] = []
    bare_emu: list[float] = []
    try:
        transport = SerialReaderTransport(parse_options({"port": emu_path}))
        conn = await transport.connect((await transport.discover())[0])
        collect = CollectRequest(1000, "usd", timeout=5.0)
        echo_port = serial.Serial(echo_path, timeout=5)
        emu_port = serial.Serial(emu2_path, timeout=5)

        def bare(port: serial.Serial) -> Callable[[], Awaitable[None]]:
            async def one_round() -> None:
                port.write(request)
                got = port.read(len(reply))
                assert len(got) == len(reply)

            return one_round

        logs = cpu if cpu is not None else {}
        for name in ("ours", "bare_echo", "bare_emu"):
            logs.setdefault(name, CpuLog())
        for _ in range(rounds):
            bare_echo.append(await logs["bare_echo"].measure(collects, bare(echo_port), echo.pid))
            bare_emu.append(await logs["bare_emu"].measure(collects, bare(emu_port), emu2.pid))
            ours.append(await logs["ours"].measure(collects, lambda: conn.collect(collect), emu.pid))
        echo_port.close()
        emu_port.close()
        await transport.close()
    finally:
        stop(emu)
        stop(emu2)
        echo.terminate()
        echo.wait(10)
    return ours, bare_echo, bare_emu


async def ble_rounds(collects: int, rounds: int) -> tuple[list[float], list[float]]:
    emu, address = emulator("--ble", "--default-card", "visa tap")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    from offterm.core.contracts import CollectRequest
    from offterm.plugins.readers.ble import BleReaderTransport, parse_options

    request, reply = sample_exchange()
    ours: list[float] = []
    bare: list[float] = []
    try:
        transport = BleReaderTransport(parse_options({}))
        reader = (await transport.discover(timeout=0.5))[0]
        collect = CollectRequest(1000, "usd", timeout=5.0)
        for _ in range(rounds):
            conn = await transport.connect(reader)
            ours.append(await rate(collects, lambda: conn.collect(collect)))  # noqa: B023
            await transport.close()

            bare.append(await bare_ble_rate(reader.address, request, reply, collects))
    finally:
        stop(emu)
    return ours, bare


async def bare_ble_rate(address: str, request: bytes, reply: bytes, collects: int) -> float:
    """bleak alone: write the request to RX, wait until the reply's bytes came back on TX."""
    from bleak import BleakClient

    from offterm.plugins.readers.protocol import ble as gatt

    async with BleakClient(address, timeout=5) as client:
        rx = client.services.get_characteristic(gatt.RX_CHAR_UUID)
        tx = client.services.get_characteristic(gatt.TX_CHAR_UUID)
        assert rx is not None and tx is not None
        received = bytearray()
        done = asyncio.Event()

        def on_notify(_char: object, data: bytearray) -> None:
            received.extend(data)
            if len(received) >= len(reply):
                done.set()

        await client.start_notify(tx, on_notify)
        size = rx.max_write_without_response_size

        async def bare_round() -> None:
            received.clear()
            done.clear()
            for i in range(0, len(request), size):
                await client.write_gatt_char(rx, request[i : i + size], response=False)
            await asyncio.wait_for(done.wait(), 5)

        return await rate(collects, bare_round)


def table(rows: list[tuple[str, list[float], list[float]]], collects: int, rounds: int) -> str:
    lines = [
        f"Measured by `python bench/bench_readers.py` ({rounds} rounds of {collects} collects per side, "
        f"median rounds/s; Python {sys.version.split()[0]}, {os.cpu_count()} cores).",
        "",
        "| link | offterm collect (rounds/s) | bare baseline (rounds/s) | ratio | target |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, ours, bare in rows:
        o, b = statistics.median(ours), statistics.median(bare)
        lines.append(f"| {name} | {o:,.0f} | {b:,.0f} | {o / b:.2f} | >= 0.80 |")
    return "\n".join(lines)


def cpu_table(cpu: dict[str, CpuLog]) -> str:
    lines = [
        "CPU per round trip (user + system, µs; from /proc, 10 ms ticks summed over all rounds):",
        "",
        "| serial measurement | client process | server process |",
        "| --- | ---: | ---: |",
    ]
    names = {
        "ours": ("offterm collect", "emulator"),
        "bare_echo": ("bare pyserial client", "framed echo server"),
        "bare_emu": ("bare pyserial client", "emulator"),
    }
    for key, (client, server) in names.items():
        c, s = cpu[key].per_trip()
        lines.append(f"| {client} / {server} | {c:,.0f} | {'n/a' if s is None else f'{s:,.0f}'} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {START} ... {END} section")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")


async def main_async(args: argparse.Namespace) -> str:
    rows = []
    cpu: dict[str, CpuLog] = {}
    ours, bare_echo, bare_emu = await serial_rounds(args.collects, args.rounds, cpu)
    rows.append(("serial over a pty vs bare pyserial framed echo", ours, bare_echo))
    rows.append(("serial over a pty vs bare pyserial client, same emulator", ours, bare_emu))
    if not args.no_ble:
        ours, bare = await ble_rounds(max(args.collects // 2, 10), args.rounds)
        rows.append(("BLE via fake BlueZ vs bare bleak write/notify, same emulator", ours, bare))
    text = table(rows, args.collects, args.rounds)
    if args.cpu:
        text += "\n\n" + cpu_table(cpu)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collects", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-ble", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="also report CPU per round trip of each side (Linux)")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=300, help="give up (and clean up) after this long")
    parser.add_argument("--echo-server", metavar="REPLY_HEX", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    text = asyncio.run(asyncio.wait_for(main_async(args), args.max_seconds))
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
