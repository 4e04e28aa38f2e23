"""Byte-stream framing of the reader protocol (version 1).

A frame is::

    A5 5A | version u8 | type u8 | length u16 BE | header check u16 BE | payload | CRC-32 u32 BE

The header check (CRC-16/XMODEM over the first six bytes) lets a receiver
reject a corrupt length at once instead of waiting for bytes that never come;
the CRC-32 covers header and payload.  Anything that is not a valid frame is
skipped byte by byte until the next sync mark, so the stream recovers by
itself after garbage, truncation or bit errors.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass

from offterm.core.errors import ReaderProtocolError

SYNC = b"\xa5\x5a"
VERSION = 1
HEADER_SIZE = 8
TRAILER_SIZE = 4
#: Largest payload a frame may carry; a longer declared length is a corrupt header.
MAX_PAYLOAD = 4096
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + TRAILER_SIZE

_HEAD = struct.Struct(">2sBBH")
_CHECK = struct.Struct(">H")
_CRC = struct.Struct(">I")


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
    head += _CHECK.pack(binascii.crc_hqx(head, 0))
    body = head + payload
    return body + _CRC.pack(zlib.crc32(body))


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, then call ``next_frame`` until None.

    ``next_frame`` raises ReaderProtocolError for a malformed frame *after*
    discarding its first byte, so the caller can simply call it again: the
    decoder never loses its place and its buffer never exceeds ``MAX_FRAME``
    plus the bytes of the last ``feed``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Bytes skipped while looking for a sync mark (line noise, partial frames).
        self.skipped_bytes = 0
        #: Malformed frames dropped (header check, CRC, size, version).
        self.errors = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def _drop(self, count: int) -> None:
        del self._buf[:count]

    def _fail(self, message: str, reason: str) -> ReaderProtocolError:
        self._drop(1)  # resync: look for the next sync mark after this one
        self.errors += 1
        return ReaderProtocolError(message, reason=reason)

    def next_frame(self) -> Frame | None:
        """The next complete valid frame, or None if more bytes are needed."""
        buf = self._buf
        start = buf.find(SYNC)
        if start < 0:
            # Keep a trailing first sync byte: its partner may come in the next read.
            keep = 1 if buf[-1:] == SYNC[:1] else 0
            self.skipped_bytes += len(buf) - keep
            self._drop(len(buf) - keep)
            return None
        if start:
            self.skipped_bytes += start
            self._drop(start)
        if len(buf) < HEADER_SIZE:
            return None
        _, version, msg_type, length = _HEAD.unpack_from(buf)
        (check,) = _CHECK.unpack_from(buf, 6)
        if binascii.crc_hqx(bytes(buf[:6]), 0) != check:
            raise self._fail("frame header check failed", "header_check")
        if length > MAX_PAYLOAD:
            raise self._fail(f"frame declares {length} payload bytes (limit {MAX_PAYLOAD})", "oversized")
        total = HEADER_SIZE + length + TRAILER_SIZE
        if len(buf) < total:
            return None
        (crc,) = _CRC.unpack_from(buf, HEADER_SIZE + length)
        if zlib.crc32(bytes(buf[: HEADER_SIZE + length])) != crc:
            raise self._fail("frame CRC mismatch", "crc")
        if version != VERSION:
            raise self._fail(f"unsupported protocol version {version} (this side speaks {VERSION})", "version")
        payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        self._drop(total)
        return Frame(msg_type, payload, version)

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
