"""The reader emulator's control language, command line and sans-IO core."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from offterm.plugins.readers import card_encryption
from offterm.plugins.readers.protocol import messages as m
from offterm.plugins.readers.protocol.framing import FrameDecoder
from offterm.sim.reader_emulator import Identity, ReaderEmulator, ScriptError, parse_line, parse_presentation
from offterm.sim.reader_emulator.script import NEVER


def test_presentations_read_like_a_customer() -> None:
    p = parse_presentation("visa_de insert pin name=JANE".split())
    assert (p.card.name, p.read_method, p.pin, p.cardholder_name) == ("visa_de", "contact_emv", True, "JANE")
    assert parse_presentation(["visa"]).pin is True  # a chip card asks for the PIN by default
    assert parse_presentation(["visa", "tap"]).pin is None
    assert parse_presentation("visa insert nopin".split()).pin is None
    assert parse_presentation("visa insert pin-fail".split()).pin is False
    assert parse_presentation(["visa_expired"]).expired and parse_presentation(["visa", "expired"]).expired
    late = parse_presentation("amex swipe remove-early disconnect=2.5 delay=0.1".split())
    assert (late.read_method, late.remove_early, late.disconnect, late.delay) == ("magnetic_stripe", True, 2.5, 0.1)
    assert parse_presentation(["mastercard", "disconnect"]).disconnect == 1.0
    assert parse_presentation(["4000 0566 5566 5556"]).card.name == "visa_debit"  # a number works too


def test_commands() -> None:
    assert parse_line("  # a comment") is None and parse_line("") is None
    assert parse_line("never") is not None and parse_line("never").presentation is NEVER  # type: ignore[union-attr]
    assert parse_line("disconnect 3").seconds == 3.0  # type: ignore[union-attr]
    assert parse_line("noise 10").count == 10  # type: ignore[union-attr]
    assert [parse_line(v).name for v in ("status", "clear", "help", "quit")] == ["status", "clear", "help", "quit"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("present", "needs a card"),
        ("present nosuchcard", "unknown test card 'nosuchcard'"),
        ("present visa wobble", "unknown word 'wobble'"),
        ("present visa tap pin", "PIN entry needs an inserted card"),
        ("present visa delay=abc", "must be a number"),
        ("disconnect 99999", "from 0 to 3600"),
        ("noise lots", "byte count"),
        ("dance", "unknown command 'dance'"),
        ('present visa name="unterminated', "cannot parse"),
    ],
)
def test_bad_lines_say_why(line: str, text: str) -> None:
    with pytest.raises(ScriptError, match=text):
        parse_line(line)


@pytest.mark.parametrize("line", ["present 4242424242424241", "present visa 4242424242424242", "4242424242424242"])
def test_errors_never_echo_a_card_number(line: str) -> None:
    with pytest.raises(ScriptError) as err:
        parse_line(line)
    assert "424242" not in str(err.value)


def test_cli_refuses_a_bad_key_and_a_bad_script() -> None:
    run = [sys.executable, "-m", "offterm.sim.reader_emulator"]
    bad_key = subprocess.run([*run, "--tcp", "0", "--card-key", "zz"], capture_output=True, text=True, timeout=30)
    assert bad_key.returncode == 2 and "--card-key must be 64 hexadecimal characters" in bad_key.stderr
    bad_script = subprocess.run([*run, "--serial", "--present", "visa fly"], capture_output=True, text=True, timeout=30)
    assert bad_script.returncode == 2 and "unknown word 'fly'" in bad_script.stderr
    no_mode = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert no_mode.returncode == 2 and "--serial" in no_mode.stderr


def test_the_emulator_keeps_to_the_protocol() -> None:
    """Unknown and malformed requests get a typed answer; nothing crashes the reader."""
    loop = asyncio.new_event_loop()
    out = bytearray()
    emu = ReaderEmulator(out.extend, loop, identity=Identity(serial_number="X1", location_id="tml_1"))
    decoder = FrameDecoder()

    def answers(*requests: bytes) -> list[m.Message]:
        out.clear()
        for request in requests:
            emu.receive(request)
        decoder.feed(bytes(out))
        return [m.decode(f) for f in decoder.frames()[0]]

    try:
        [info] = answers(m.encode(m.Hello("s1")))
        assert isinstance(info, m.Info) and (info.serial_number, info.location_id) == ("X1", "tml_1")
        assert info.encryption_scheme == card_encryption.SCHEME
        [error] = answers(m.encode(m.Info("s", "a", "b", "c", None, "d")))
        assert isinstance(error, m.Error) and error.code == "unsupported"
        [error] = answers(m.encode_frame(m.MessageType.COLLECT, b'{"txn": 5}'))
        assert isinstance(error, m.Error) and error.code == "bad_request"
        [error] = answers(m.encode_frame(0x7F, b"{}"))
        assert isinstance(error, m.Error) and error.code == "unsupported"
        [pong] = answers(b"\x00garbage\xa5" + m.encode(m.Ping(7)))
        assert pong == m.Pong(7)
        [error] = answers(m.encode(m.Hello("s2", (9,))))
        assert isinstance(error, m.Error) and error.code == "unsupported"
        # Waiting for a customer: a second collection is refused as busy.
        assert answers(m.encode(m.Collect("t1", 100, "usd", ("contact_emv",), 60_000))) == []
        [busy] = answers(m.encode(m.Collect("t2", 100, "usd", ("contact_emv",), 60_000)))
        assert isinstance(busy, m.Error) and (busy.txn, busy.code) == ("t2", "busy")
        emu.present(parse_presentation(["visa", "insert"]))  # arrives while t1 waits: completes it
        decoder.feed(bytes(out))
        kinds = [type(m.decode(f)).__name__ for f in decoder.frames()[0]]
        assert kinds == ["Error", "CardEvent", "PinResult", "Result"]  # busy(t2) was already there
        [again] = answers(m.encode(m.Resend("t1")))
        assert isinstance(again, m.Result) and again.txn == "t1"
        assert emu.status()["results"] == 1 and emu.status()["frame_errors"] == 0  # garbage is skipped, not an error
    finally:
        loop.close()


def test_a_transaction_key_seals_one_card_only() -> None:
    key = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
    card = card_encryption.SensitiveCard(pan="4242424242424242", exp_month=12, exp_year=2030)
    txn_key = card_encryption.TransactionKey(key)
    assert "4242" not in repr(txn_key) and txn_key.ksn not in repr(txn_key)
    blob, ksn = txn_key.seal(card)
    assert ksn == txn_key.ksn and card_encryption.decrypt(blob, ksn, key).pan == card.pan
    with pytest.raises(RuntimeError, match="one card only"):
        txn_key.seal(card)
    assert len({card_encryption.TransactionKey(key).ksn for _ in range(100)}) == 100
    # encrypt() is a fresh key per call, as before.
    (blob1, ksn1), (blob2, ksn2) = card_encryption.encrypt(card, key), card_encryption.encrypt(card, key)
    assert ksn1 != ksn2 and blob1 != blob2


def test_the_emulator_help_lists_its_exit_codes():
    from offterm.sim.reader_emulator.cli import build_parser

    text = build_parser().format_help()
    assert "Exit codes:" in text and "  0  stopped cleanly" in text and "  2  usage error" in text
