"""The offterm reader protocol (version 1): wire codec and host-side session.

``framing`` cuts a byte stream into CRC-checked frames, ``messages`` gives
each frame a typed, validated meaning, ``ble`` maps the stream onto a GATT
service, and ``host`` runs a session (handshake, collect, cancel, reconnect)
over any byte link.  The serial and BLE reader plugins and the reader
emulator share it; docs/reader-protocol.md describes the bytes.
"""

from .framing import MAX_PAYLOAD, SYNC, VERSION, Frame, FrameDecoder, encode_frame
from .messages import PROTOCOL_VERSION, Message, MessageType, decode, encode

__all__ = [
    # the modules, each public
    "ble",
    "dukpt",
    "framing",
    "host",
    "messages",
    # the codec's names
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "SYNC",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "Message",
    "MessageType",
    "decode",
    "encode",
    "encode_frame",
]
