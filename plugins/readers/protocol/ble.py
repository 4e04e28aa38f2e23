"""The reader protocol over Bluetooth LE GATT.

One primary service with two characteristics: the host writes frames to
``RX`` (write / write-without-response) and the reader sends frames as
notifications on ``TX``.  Both directions carry exactly the byte stream of
the serial framing, cut into pieces of at most ATT_MTU - 3 bytes (the ATT
header takes three).  Because the stream framing resynchronises by itself,
no per-chunk header is needed: the receiver feeds every notification to the
same ``FrameDecoder`` a serial link uses.
"""

from __future__ import annotations

#: Primary service advertised by offterm readers.
SERVICE_UUID = "a5a50001-0ff7-4e4d-9c1e-6f666674726d"
#: Host -> reader: write (with or without response).
RX_CHAR_UUID = "a5a50002-0ff7-4e4d-9c1e-6f666674726d"
#: Reader -> host: notify.
TX_CHAR_UUID = "a5a50003-0ff7-4e4d-9c1e-6f666674726d"

#: ATT's default MTU before any exchange (Bluetooth Core, Vol 3 Part F 3.2.8).
DEFAULT_ATT_MTU = 23
#: Largest MTU the protocol uses; BlueZ negotiates up to 517.
MAX_ATT_MTU = 517
ATT_HEADER = 3


def chunk_size(mtu: int) -> int:
    """Payload bytes per write or notification for a negotiated ATT MTU."""
    mtu = max(DEFAULT_ATT_MTU, min(int(mtu), MAX_ATT_MTU))
    return mtu - ATT_HEADER


def chunks(data: bytes, mtu: int) -> list[bytes]:
    """Cut ``data`` into pieces that each fit one ATT write or notification."""
    size = chunk_size(mtu)
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
