"""The frame parser: exact layout, resync, and fuzzing (typed errors only, never a crash or a hang)."""

from __future__ import annotations

import binascii
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offterm.core.errors import ReaderProtocolError
from offterm.plugins.readers.protocol import messages as m
from offterm.plugins.readers.protocol.framing import (
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    TRAILER_SIZE,
    Frame,
    FrameDecoder,
    encode_frame,
)

FUZZ = settings(max_examples=300, deadline=None)


def drain(decoder: FrameDecoder) -> tuple[list[Frame], list[ReaderProtocolError]]:
    """Call next_frame until None, at most a bounded number of times (a hang would fail here)."""
    frames: list[Frame] = []
    errors: list[ReaderProtocolError] = []
    for _ in range(100_000):
        try:
            frame = decoder.next_frame()
        except ReaderProtocolError as exc:
            errors.append(exc)
            continue
        if frame is None:
            return frames, errors
        frames.append(frame)
    raise AssertionError("decoder did not settle")


def test_layout_is_the_documented_one() -> None:
    data = encode_frame(0x04, b'{"a":1}')
    assert data[:2] == b"\xa5\x5a"
    assert data[2] == 1 and data[3] == 0x04
    assert struct.unpack(">H", data[4:6])[0] == 7
    assert struct.unpack(">H", data[6:8])[0] == binascii.crc_hqx(data[:6], 0)
    assert data[8:15] == b'{"a":1}'
    assert struct.unpack(">I", data[15:])[0] == zlib.crc32(data[:15])
    assert len(data) == HEADER_SIZE + 7 + TRAILER_SIZE


def test_round_trip_and_split_delivery() -> None:
    frames = [encode_frame(t, bytes([t]) * t) for t in range(1, 30)]
    stream = b"".join(frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for i in range(0, len(stream), 7):  # arrives in odd-sized pieces
        decoder.feed(stream[i : i + 7])
        found, errors = decoder.frames()
        assert errors == []
        got += found
    assert [(f.type, f.payload) for f in got] == [(t, bytes([t]) * t) for t in range(1, 30)]
    assert decoder.buffered == 0


def test_garbage_before_between_and_after_frames_is_skipped() -> None:
    a, b = encode_frame(1, b"first"), encode_frame(2, b"second")
    decoder = FrameDecoder()
    decoder.feed(b"\x00noise\xa5" + a + b"\xa5\xa5junk" + b + b"\xff\xa5")
    frames, errors = drain(decoder)
    assert [f.payload for f in frames] == [b"first", b"second"]
    assert decoder.skipped_bytes > 0
    assert decoder.buffered == 1  # a trailing first sync byte is kept for the next read
    assert all(isinstance(e, ReaderProtocolError) for e in errors)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:5] + bytes([f[5] ^ 0x01]) + f[6:], "header_check"),
        (lambda f: f[:10] + bytes([f[10] ^ 0x80]) + f[11:], "crc"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 0x01]), "crc"),
    ],
)
def test_corruption_is_a_typed_error_naming_the_reason(mutate, reason) -> None:  # noqa: ANN001
    decoder = FrameDecoder()
    decoder.feed(mutate(encode_frame(3, b"payload!")) + encode_frame(4, b"next"))
    frames, errors = drain(decoder)
    assert [f.payload for f in frames] == [b"next"]  # the stream recovers at the next frame
    assert errors and errors[0].details["reason"] == reason
    assert errors[0].code == "reader_protocol_error"


def test_oversized_length_is_rejected_at_the_header() -> None:
    head = struct.pack(">2sBBH", b"\xa5\x5a", 1, 4, MAX_PAYLOAD + 1)
    head += struct.pack(">H", binascii.crc_hqx(head, 0))
    decoder = FrameDecoder()
    decoder.feed(head)  # no payload follows: it must not wait for 4 KiB that never come
    frames, errors = drain(decoder)
    assert frames == [] and errors[0].details["reason"] == "oversized"
    with pytest.raises(ReaderProtocolError, match="exceeds"):
        encode_frame(1, b"x" * (MAX_PAYLOAD + 1))


def test_other_protocol_versions_are_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(1, b"{}", version=2) + encode_frame(1, b"{}"))
    frames, errors = drain(decoder)
    assert len(frames) == 1 and errors[0].details["reason"] == "version"


# -- fuzzing ------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=6000))
def test_random_bytes_never_crash_or_hang(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    frames, errors = drain(decoder)
    assert all(isinstance(e, ReaderProtocolError) for e in errors)
    assert decoder.buffered < MAX_FRAME  # bounded: never grows without limit
    for frame in frames:  # anything accepted decodes to a message or a typed error
        try:
            m.decode(frame)
        except ReaderProtocolError:
            pass


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_random_chunks_keep_the_buffer_bounded(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
        drain(decoder)
        assert decoder.buffered < MAX_FRAME


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=600), st.data())
def test_truncated_frames_yield_nothing_then_recover(msg_type: int, payload: bytes, data: st.DataObject) -> None:
    frame = encode_frame(msg_type, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    decoder = FrameDecoder()
    decoder.feed(frame[:cut])
    frames, _ = drain(decoder)
    assert frames == []  # a truncated frame is never delivered
    # The rest of the stream is never lost: the decoder finds the next whole frame,
    # however long the truncated frame claimed to be (filler completes a bogus length).
    decoder.feed(b"\x00" * MAX_FRAME + encode_frame(9, b"after"))
    frames, errors = drain(decoder)
    assert [f.payload for f in frames][-1:] == [b"after"]
    assert all(isinstance(e, ReaderProtocolError) for e in errors)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=300), st.data())
def test_bit_flips_are_never_delivered(msg_type: int, payload: bytes, data: st.DataObject) -> None:
    frame = bytearray(encode_frame(msg_type, payload))
    flips = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=3, unique=True))
    for bit in flips:
        frame[bit // 8] ^= 1 << (bit % 8)
    decoder = FrameDecoder()
    decoder.feed(bytes(frame) + b"\x00" * MAX_FRAME + encode_frame(7, b"good"))
    frames, errors = drain(decoder)
    # CRC-32 detects every error of up to three bits in a frame this size.
    assert [(f.type, f.payload) for f in frames] == [(7, b"good")]
    assert all(isinstance(e, ReaderProtocolError) for e in errors)


@FUZZ
@given(st.binary(max_size=200).filter(lambda b: b"\xa5" not in b), st.integers(0, 255), st.binary(max_size=200))
def test_garbage_then_frame_recovers_the_frame(garbage: bytes, msg_type: int, payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(garbage + encode_frame(msg_type, payload))
    frames, errors = drain(decoder)
    assert [(f.type, f.payload) for f in frames] == [(msg_type, payload)]
    assert errors == []


@FUZZ
@given(st.sampled_from(sorted(m.MessageType)), st.binary(max_size=MAX_PAYLOAD))
def test_valid_frames_with_random_payloads_give_typed_errors_only(msg_type: int, payload: bytes) -> None:
    try:
        m.decode(Frame(msg_type, payload))
    except ReaderProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "txn",
        "session",
        "protocols",
        "amount",
        "currency",
        "read_methods",
        "timeout_ms",
        "card",
        "encrypted_card_data",
        "key_serial",
        "code",
        "message",
        "event",
        "verified",
        "nonce",
        "lines",
        "of",
    ]
)


@FUZZ
@given(st.sampled_from(sorted(m.MessageType)), st.dictionaries(field_names, json_values, max_size=8))
def test_json_objects_with_wrong_fields_give_typed_errors_only(msg_type: int, obj: dict) -> None:  # type: ignore[type-arg]
    import json

    payload = json.dumps(obj).encode()
    if len(payload) > MAX_PAYLOAD:
        return
    try:
        message = m.decode(Frame(msg_type, payload))
    except ReaderProtocolError:
        return
    # Whatever decoded re-encodes to an equal message.
    again = m.decode(Frame(msg_type, m.encode(message)[HEADER_SIZE:-TRAILER_SIZE]))
    assert again == message


# -- the decoder's in-place reading and the direct JSON writers -------------------------------------------


def reference(stream: bytes) -> tuple[list[tuple[int, bytes]], list[str]]:
    decoder = FrameDecoder()
    decoder.feed(stream)
    frames, errors = drain(decoder)
    return [(f.type, f.payload) for f in frames], [e.details["reason"] for e in errors]


stream_parts = st.lists(
    st.one_of(
        st.builds(encode_frame, st.integers(0, 255), st.binary(max_size=200)),
        st.binary(max_size=40),  # line noise, possibly with sync bytes in it
        st.builds(
            lambda f, n: f[:n], st.builds(encode_frame, st.integers(0, 255), st.binary(max_size=50)), st.integers(0, 60)
        ),
    ),
    max_size=12,
)


@FUZZ
@given(stream_parts, st.data())
def test_any_cut_of_a_stream_decodes_as_the_whole(parts: list[bytes], data: st.DataObject) -> None:
    """Bytes, bytearray or memoryview pieces cut anywhere give the same frames and errors as one read."""
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(cuts) + 1))
    decoder = FrameDecoder()
    frames: list[tuple[int, bytes]] = []
    errors: list[str] = []
    for kind, start, end in zip(kinds, [0, *cuts], [*cuts, len(stream)], strict=False):
        decoder.feed(kind(stream[start:end]))
        found, failed = drain(decoder)
        frames += [(f.type, f.payload) for f in found]
        errors += [e.details["reason"] for e in failed]
        assert decoder.buffered < MAX_FRAME
    assert (frames, errors) == reference(stream)


def test_fed_buffers_are_not_kept_by_reference() -> None:
    """A link may reuse its read buffer: what was fed is decoded as it was when fed."""
    frame = encode_frame(5, b"payload")
    decoder = FrameDecoder()
    piece = bytearray(frame[:10])
    decoder.feed(piece)
    piece[:] = b"\x00" * 10
    rest = bytearray(frame[10:])
    decoder.feed(rest)
    rest[:] = b"\x00" * len(rest)
    frames, errors = drain(decoder)
    assert [(f.type, f.payload) for f in frames] == [(5, b"payload")] and errors == []
