"""docs/reader-protocol.md matches the code: example bytes, message types, error codes, options."""

from __future__ import annotations

import re
from pathlib import Path

from offterm.plugins.readers import ble, serial
from offterm.plugins.readers.protocol import ble as gatt
from offterm.plugins.readers.protocol import messages as m

DOC = (Path(__file__).resolve().parents[2] / "docs" / "reader-protocol.md").read_text()


def test_the_example_frame_is_what_the_encoder_writes() -> None:
    assert m.encode(m.Ping(7)).hex(" ") in DOC


def test_every_message_type_and_error_code_is_documented() -> None:
    rows = dict(re.findall(r"^\| 0x([0-9A-F]{2}) \| (\w+) \|", DOC, re.MULTILINE))
    assert {int(k, 16): v for k, v in rows.items()} == {
        t.value: {"CARD_EVENT": "CardEvent", "PIN_RESULT": "PinResult"}.get(t.name, t.name.title())
        for t in m.MessageType
    }
    for code in m.ErrorCode:
        assert f"| `{code.value}` |" in DOC, code


def test_every_option_and_uuid_is_documented() -> None:
    for option in (*serial.OPTIONS, *ble.OPTIONS):
        assert f"`{option.key}`" in DOC, option.key
    for uuid in (gatt.SERVICE_UUID, gatt.RX_CHAR_UUID, gatt.TX_CHAR_UUID):
        assert uuid in DOC
