"""Byte-stream framing of the reader protocol (version 1).

A frame is::

    A5 5A | version u8 | type u8 | length u16 BE | header check u16 BE | payload | CRC-32 u32 BE

The header check (CRC-16/XMODEM over the first six bytes) lets a receiver
reject a corrupt length at once instead of waiting for bytes that never come;
the CRC-32 covers header and payload.  Anything that is not a valid frame is
skipped byte by byte until the next sync mark, so the stream recovers by
itself after garbage, truncation or bit errors.

Both checks are C (``binascii.crc_hqx``, ``zlib.crc32``), and the decoder reads
frames in place from the bytes it was fed (a read usually holds whole frames):
no per-byte loop and no copy of a frame other than its payload.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from dataclasses import dataclass
from zlib import crc32

from offterm.core.errors import ReaderProtocolError

SYNC = b"\xa5\x5a"
VERSION = 1
HEADER_SIZE = 8
TRAILER_SIZE = 4
#: Largest payload a frame may carry; a longer declared length is a corrupt header.
MAX_PAYLOAD = 4096
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + TRAILER_SIZE

_HEAD = struct.Struct(">2sBBH")
_HEADER = struct.Struct(">2sBBHH")
_CHECK = struct.Struct(">H")
_CRC = struct.Struct(">I")
_SYNC0 = SYNC[0]


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its message type and raw payload."""

    type: int
    payload: bytes
    version: int = VERSION


def encode_frame(msg_type: int, payload: bytes, version: int = VERSION) -> bytes:
    """Build one frame; raises ReaderProtocolError if it cannot be framed."""
    if not 0 <= msg_type <= 0xFF:
        raise ReaderProtocolError("message type must fit in one byte", reason="type")
    if len(payload) > MAX_PAYLOAD:
        raise ReaderProtocolError(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte frame limit", reason="oversized"
        )
    head = _HEAD.pack(SYNC, version, msg_type, len(payload))
    body = head + _CHECK.pack(crc_hqx(head, 0)) + payload
    return body + _CRC.pack(crc32(body))


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, then call ``next_frame`` until None.

    ``next_frame`` raises ReaderProtocolError for a malformed frame *after*
    discarding its first byte, so the caller can simply call it again: the
    decoder never loses its place and its buffer never exceeds ``MAX_FRAME``
    plus the bytes of the last ``feed``.

    The unread bytes are ``_buf[_pos:]``: frames are cut from the buffer by
    offset, and the consumed head is dropped at the next ``feed`` (when every
    byte was consumed, the fed bytes become the buffer as they are).
    """

    def __init__(self) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: Bytes skipped while looking for a sync mark (line noise, partial frames).
        self.skipped_bytes = 0
        #: Malformed frames dropped (header check, CRC, size, version).
        self.errors = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf = bytes(data)  # the common case: nothing left over, no copy of bytes input
        elif isinstance(buf, bytearray):
            del buf[:pos]
            buf += data
        else:  # a partial frame waits for more: collect in a bytearray (amortised appends)
            self._buf = bytearray(memoryview(buf)[pos:])
            self._buf += data
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0

    def _fail(self, start: int, message: str, reason: str) -> ReaderProtocolError:
        self._pos = start + 1  # resync: look for the next sync mark after this one
        self.errors += 1
        return ReaderProtocolError(message, reason=reason)

    def next_raw(self) -> tuple[int, bytes] | None:
        """(type, payload) of the next complete valid frame, or None if more bytes are needed.

        ``next_frame`` without building a ``Frame``: the hot path of both ends.
        """
        buf, pos = self._buf, self._pos
        size = len(buf)
        start = buf.find(SYNC, pos)
        if start < 0:
            # Keep a trailing first sync byte: its partner may come in the next read.
            keep = 1 if size > pos and buf[size - 1] == _SYNC0 else 0
            self.skipped_bytes += size - pos - keep
            if keep:
                self._pos = size - 1
            else:
                self._buf, self._pos = b"", 0
            return None
        if start != pos:
            self.skipped_bytes += start - pos
            self._pos = start
        if size - start < HEADER_SIZE:
            return None
        _, version, msg_type, length, check = _HEADER.unpack_from(buf, start)
        if crc_hqx(buf[start : start + 6], 0) != check:
            raise self._fail(start, "frame header check failed", "header_check")
        if length > MAX_PAYLOAD:
            raise self._fail(start, f"frame declares {length} payload bytes (limit {MAX_PAYLOAD})", "oversized")
        end = start + HEADER_SIZE + length
        if size < end + TRAILER_SIZE:
            return None
        if crc32(buf[start:end]) != _CRC.unpack_from(buf, end)[0]:
            raise self._fail(start, "frame CRC mismatch", "crc")
        if version != VERSION:
            raise self._fail(start, f"unsupported protocol version {version} (this side speaks {VERSION})", "version")
        self._pos = end + TRAILER_SIZE
        return msg_type, bytes(buf[start + HEADER_SIZE : end])

    def next_frame(self) -> Frame | None:
        """The next complete valid frame, or None if more bytes are needed."""
        raw = self.next_raw()
        return None if raw is None else Frame(raw[0], raw[1], VERSION)

    def frames(self) -> tuple[list[Frame], list[ReaderProtocolError]]:
        """Drain every complete frame now buffered, collecting errors instead of raising."""
        found: list[Frame] = []
        errors: list[ReaderProtocolError] = []
        while True:
            try:
                frame = self.next_frame()
            except ReaderProtocolError as exc:
                errors.append(exc)
                continue
            if frame is None:
                return found, errors
            found.append(frame)
