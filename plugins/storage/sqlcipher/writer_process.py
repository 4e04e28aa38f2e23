"""The drain's bookkeeping (claims and claim updates), run by a child process with a GIL of its own.

A drain makes a claim per batch and two durable records per payment (its
attempt, then its outcome).  On a thread of the POS process that work has to
win the GIL back from the busy event loop every time the SQLite driver lets
go of it, and the drain ran at 0.6 of bare httpx.  Here the store's thread
hands each call to the child over a socket and waits for the answer without
the GIL.  The child runs the very same store methods on its own connection to
the same file; SQLite serialises it with this process's writers exactly as it
serialises two Terminals on one store (``BEGIN IMMEDIATE``, WAL), so nothing
about atomicity, durability or claims changes.

* It starts only once a real drain is under way (``after`` claim updates
  written here), so a POS forwarding a handful of payments never has one.
  Until it is ready the calls run here: starting never stalls the drain.
* It is started with ``python -c`` and an inherited socket (``multiprocessing``'s
  spawn would re-import the application's ``__main__``).  The key goes down
  the socket; it is never in argv, the environment or a file.
* It exits when the store closes, or when this process dies (end of file on
  the socket); a transaction it had begun is committed or rolled back by SQLite.
* If it dies during a call, the caller gets a ``StorageError`` saying the
  writes may or may not have been made (the forwarder treats that as any
  unanswered store write: the payment keeps its idempotency key), and a new
  one is started.  After ``MAX_FAILURES`` it is given up and everything runs
  here, logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import structlog

from offterm.core.contracts.storage import ClaimUpdate, DrainChannel, StorageKeyProvider, StoredPayment
from offterm.core.errors import StorageError

if TYPE_CHECKING:
    from .store import StoreConfig

log = structlog.get_logger("offterm.storage.sqlcipher")

#: How long a started child may take to import and open the store before it is given up.
START_TIMEOUT_S = 60.0
#: Added to the store's lock wait for one answer (a call is a batch of single-row statements).
ANSWER_MARGIN_S = 60.0
#: Children lost (died, silent, failed to start) before the store stops starting new ones.
MAX_FAILURES = 3
#: Calls a child must answer before the losses before it are forgiven.
FORGIVE_AFTER = 1000

_BOOT = "from offterm.plugins.storage.sqlcipher.writer_process import serve; serve()"
_FD_VARIABLE = "OFFTERM_WRITER_FD"
#: All the child is given of the environment (and locale variables): never the POS's secrets, such as a key
#: that the ``env`` key provider reads from it.
_INHERITED_ENV = frozenset(
    {"PATH", "HOME", "LANG", "TMPDIR", "SQLITE_TMPDIR", "LD_LIBRARY_PATH", "PYTHONHOME", "SYSTEMROOT"}
)


class WriterProcess:
    """The child of one store: ``call()`` from the store's thread, ``channel()`` from the event loop.

    ``ready()`` says whether calls go to the child.  The child answers each
    side on a socket of its own, one call at a time.
    """

    def __init__(self, config: StoreConfig, key: bytes, *, after: int) -> None:
        self._config = config
        self._key = key
        self._after = after
        self._channel: DrainSocket | None = None
        self._seq = 0
        self._written_here = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._started_at = 0.0
        self._ready = False
        self._failures = 0
        self._answered_at_start = 0
        self.given_up = False
        #: calls the child answered (a measure of how much of the drain it carried)
        self.calls_answered = 0

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def note_written_here(self, count: int) -> None:
        """Count claim updates written in this process; at ``after`` the child is started."""
        self._written_here += count
        if self._proc is None and not self.given_up and self._written_here >= self._after:
            with self._lock:
                self._start()

    def ready(self) -> bool:
        """True once the child has opened the store (checked without waiting)."""
        if self._ready:
            channel = self._channel
            broken = channel.broken if channel is not None else None
            if broken is None:
                return True
            with self._lock:
                if self._channel is not None and self._channel.broken:
                    self._lost(broken)  # replaced; calls run here until the new child is ready
                return False
        if self._proc is None or self._conn is None:
            return False
        with self._lock:
            return self._check_started()

    def channel(self) -> DrainSocket | None:
        """The event loop's way to the child, if it is ready and the channel sound; never blocks."""
        channel = self._channel
        if self._ready and channel is not None and channel.broken is None:
            return channel
        return None

    def wait_until_ready(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) for a started child to be ready; for tests and benchmarks."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc is None or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """The child's ``store.<name>(*args, **kwargs)``; returns or raises what it did.

        :raises StorageError: the child died or went silent during the call: its writes may or may not
            have been made (a new child is started for later calls).
        """
        with self._lock:
            conn = self._conn
            if conn is None or not self._ready:
                raise StorageError("the store's writer process is not running")  # callers check ready()
            self._seq += 1
            try:
                conn.send((self._seq, name, tuple(args), dict(kwargs)))
                if not conn.poll(self.answer_timeout):
                    raise TimeoutError
                seq, status, value = conn.recv()
                if seq != self._seq:
                    raise EOFError  # out of step: treat as lost
            except (OSError, EOFError, TimeoutError) as exc:
                self._lost(f"it {_what_happened(exc)} during {name}")
                raise _answer_lost(name, exc) from None
            self.calls_answered += 1
        if status == "error":
            raise value
        return value

    @property
    def answer_timeout(self) -> float:
        """Seconds to wait for one answer: the store's lock wait plus a margin."""
        return self._config.durability.busy_timeout_ms / 1000 + ANSWER_MARGIN_S

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    # -- the child's life (under self._lock) ---------------------------------------------------

    def _start(self) -> None:
        """Start a child; never raises (it runs after writes that committed, and inside error handling)."""
        try:
            self._spawn()
        except Exception as exc:  # noqa: BLE001 - out of descriptors, memory, processes...
            self._give_up(f"it could not be started: {type(exc).__name__}: {exc}")

    def _spawn(self) -> None:
        if sys.platform == "win32" or not sys.executable or getattr(sys, "frozen", False):
            # no socket inheritance, or no interpreter to run (a frozen application's executable is the app)
            self._give_up("this platform or build cannot run the writer process")
            return
        ours, theirs = socket.socketpair()  # the store's thread
        loop_end, theirs_too = socket.socketpair()  # the event loop (DrainSocket)
        env = {name: value for name, value in os.environ.items() if name in _INHERITED_ENV or name.startswith("LC_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env[_FD_VARIABLE] = f"{theirs.fileno()},{theirs_too.fileno()}"
        try:
            proc = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed command
                [sys.executable, "-c", _BOOT],
                pass_fds=(theirs.fileno(), theirs_too.fileno()),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                # its own session: a Ctrl-C meant for the POS does not kill it mid-shutdown; it ends when the
                # store closes its socket (see serve())
                start_new_session=True,
            )
        except Exception as exc:
            ours.close()
            loop_end.close()
            self._give_up(f"cannot run {sys.executable}: {getattr(exc, 'strerror', None) or exc}")
            return
        finally:
            theirs.close()
            theirs_too.close()
        conn = Connection(ours.detach())
        try:
            conn.send((self._config, self._key))
        except OSError:
            conn.close()
            loop_end.close()
            _end(proc, kill=True)
            self._failed("it exited before it was given the store")
            return
        self._proc, self._conn = proc, conn
        self._channel = DrainSocket(loop_end, self)
        self._started_at = time.monotonic()

    def _check_started(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            if not conn.poll(0):
                if time.monotonic() - self._started_at > START_TIMEOUT_S:
                    raise TimeoutError
                return False
            status, value = conn.recv()
        except (OSError, EOFError, TimeoutError):
            self._lost("it did not start")
            return False
        if status != "ready":
            self._lost(f"it could not open the store: {value}")
            return False
        self._ready = True
        self._answered_at_start = self.calls_answered
        log.info("storage_writer_started", pid=value)
        return True

    def _lost(self, why: str) -> None:
        self._stop(kill=True)
        self._failed(why)

    def _failed(self, why: str) -> None:
        if self.calls_answered - self._answered_at_start >= FORGIVE_AFTER:
            self._failures = 0  # that child served well: an old loss does not count toward giving up
        self._failures += 1
        if self._failures >= MAX_FAILURES:
            self._give_up(f"{self._failures} writer processes lost, the last because {why}")
            return
        log.warning("storage_writer_lost", reason=why, effect="a new one is started; meanwhile writes run in-process")
        self._start()

    def _give_up(self, why: str) -> None:
        self.given_up = True
        log.warning("storage_writer_unavailable", reason=why, effect="the drain's writes run in-process")

    def _stop(self, *, kill: bool) -> None:
        conn, self._conn = self._conn, None
        proc, self._proc = self._proc, None
        channel, self._channel = self._channel, None
        self._ready = False
        if channel is not None:
            channel.close()
        if conn is not None:
            conn.close()  # the child reads end of file and exits after the call it may be running
        if proc is not None:
            _end(proc, kill=kill)


class DrainSocket(DrainChannel):
    """The event loop's socket to the writer process: ``PaymentStore.drain_channel``.

    The drain's claims and claim updates go to the child straight from the
    event loop, with no thread hand-over.  One exchange at a time; once sent,
    each runs to its end even if its caller is cancelled (a half-sent request
    or an unread answer would put the socket out of step), and answers carry
    the number of their request.  One whose caller was cancelled while it
    waited its turn is not sent at all.  Any failure marks the channel broken: the
    caller gets a StorageError (its writes may or may not have been made),
    later calls run on the store's thread, and the child is replaced.
    """

    def __init__(self, sock: socket.socket, writer: WriterProcess) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._writer = writer
        self._seq = 0
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._exchanging = False
        #: why the channel cannot be used any more, or None
        self.broken: str | None = None

    async def claim(self, owner: str, limit: int, lease_seconds: float, now: datetime) -> list[StoredPayment]:
        result: list[StoredPayment] = await self._call("claim", (owner, limit, lease_seconds, now))
        return result

    async def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]:
        result: list[StoredPayment | Exception] = await self._call("apply_claim_updates", (list(updates),))
        return result

    def close(self) -> None:
        """Called from the store's side: an exchange waiting on the socket reads end of file at once."""
        self.broken = self.broken or "the store closed"
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if not self._exchanging:
            self._sock.close()  # else the exchange closes it once it has seen the end (closing first would
            # drop the socket from the event loop's selector and leave that exchange waiting until its timeout)

    async def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        caller_gone = asyncio.Event()
        exchange = loop.create_task(self._exchange(loop, self._lock[1], name, args, caller_gone))
        exchange.add_done_callback(_retrieve)  # its caller may have stopped listening
        try:
            status, value = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            caller_gone.set()  # not sent yet: it never will be; sent: it runs to its end
            raise
        if status == "error":
            raise value
        return value

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        lock: asyncio.Lock,
        name: str,
        args: tuple[Any, ...],
        caller_gone: asyncio.Event,
    ) -> tuple[str, Any]:
        async with lock:
            if caller_gone.is_set():  # cancelled while queued: nothing was sent, so nothing is done
                # (a claim made after its caller left would hold payments nobody forwards until the lease ends)
                raise StorageError(f"{name} was not sent: its caller was cancelled first")
            if self._exchanging:  # an exchange never finished (cancelled with its loop): out of step
                self.broken = "an exchange with it was abandoned"
            if self.broken is not None:
                raise StorageError(f"the store's writer process cannot be reached ({self.broken})")
            self._seq += 1
            frame = _frame((self._seq, name, args, {}))  # a request that cannot be pickled is never sent
            self._exchanging = True  # stays set if this task is cancelled half-way: the socket is out of step
            try:
                async with asyncio.timeout(self._writer.answer_timeout):
                    await loop.sock_sendall(self._sock, frame)
                    while True:
                        seq, status, value = pickle.loads(await self._read_frame(loop))  # noqa: S301 - our child
                        if seq == self._seq:
                            break
            except Exception as exc:  # noqa: BLE001 - whatever it was, the answer is lost
                self.broken = self.broken or f"it {_what_happened(exc)} during {name}"
                self._exchanging = False
                self._sock.close()
                raise _answer_lost(name, exc) from None
            self._exchanging = False
            if self.broken is not None:  # closed from the store's side meanwhile: the socket is ours to close
                self._sock.close()
            self._writer.calls_answered += 1
            return status, value

    async def _read_frame(self, loop: asyncio.AbstractEventLoop) -> bytes:
        (size,) = struct.unpack("!i", await self._read_exactly(loop, 4))
        if size == -1:  # multiprocessing's header for 2 GiB and more
            (size,) = struct.unpack("!Q", await self._read_exactly(loop, 8))
        return bytes(await self._read_exactly(loop, size))

    async def _read_exactly(self, loop: asyncio.AbstractEventLoop, size: int) -> bytearray:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = await loop.sock_recv_into(self._sock, view[got:])
            if n == 0:
                raise EOFError
            got += n
        return buf


def _what_happened(exc: BaseException) -> str:
    return "did not answer" if isinstance(exc, TimeoutError) else "exited"


def _answer_lost(name: str, exc: BaseException) -> StorageError:
    """The error for a call sent to the child whose answer never came back."""
    return StorageError(
        f"the store's writer process {_what_happened(exc)} during {name}; its writes may or may not have been made"
    )


def _frame(message: Any) -> bytes:
    """``message`` pickled and framed as ``multiprocessing.connection.Connection`` frames it."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _end(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
    if kill:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _HandedKey(StorageKeyProvider):
    """The key the parent already checked, handed down the socket."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        return self._key


def serve() -> None:
    """The child: open the store, then answer calls until the parent goes away."""
    from offterm.core.logs import configure_logging

    from .store import WRITER_CALLS, SqlCipherStore

    # The POS's signals are the POS's: this process ends when the store closes its socket, after the call it
    # may be running, never half-way through one because a shutdown signal reached the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(json=True, level="warning")  # the redacting pipeline, on standard error
    thread_fd, loop_fd = (int(fd) for fd in os.environ.pop(_FD_VARIABLE).split(","))
    conn, loop_conn = Connection(thread_fd), Connection(loop_fd)
    try:
        config, key = conn.recv()
    except EOFError:
        return
    store = SqlCipherStore(replace(config, writer_process_after=None))
    try:
        store.open_for_writer(_HandedKey(key))
    except Exception as exc:
        _answer(conn, ("error", exc))
        return
    del key
    try:
        _answer(conn, ("ready", os.getpid()))
        _serve_calls(conn, loop_conn, store, WRITER_CALLS)
    finally:
        store.close()


def _serve_calls(conn: Connection, loop_conn: Connection, store: Any, calls: Mapping[str, Callable[..., Any]]) -> None:
    """Answer each socket's calls in turn until the store's thread's socket closes (the store closed)."""
    listening = [conn, loop_conn]
    while True:
        for ready in wait(listening):
            assert isinstance(ready, Connection)
            try:
                seq, name, args, kwargs = ready.recv()
            except (EOFError, OSError):
                if ready is conn:
                    return
                listening.remove(ready)  # the event loop's side closed; the thread's may go on
                continue
            try:
                result = calls[name](store, *args, **kwargs)
            except Exception as exc:
                answer: tuple[Any, ...] = (seq, "error", exc)
            else:
                answer = (seq, "ok", result)
            if not _answer(ready, answer) and ready is conn:
                return


def _answer(conn: Connection, answer: tuple[Any, ...]) -> bool:
    """Send ``answer``; False once the other side is gone."""
    try:
        conn.send(answer)
    except OSError:
        return False
    except Exception as exc:  # an answer that does not pickle: say so rather than die
        conn.send((answer[0], "error", StorageError(f"the writer process could not return its answer: {exc}")))
    return True
