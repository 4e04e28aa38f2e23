"""AES DUKPT (ANSI X9.24-3-2017) against the standard's published test vectors.

BDK FEDCBA9876543210F1F1F1F1F1F1F1F1 (doubled for AES-256), initial key ID
1234567890123456; keys per KSN as listed in the X9.24-3-2017 supplement.
"""

from __future__ import annotations

import pytest

from offterm.plugins.readers.protocol import dukpt

BDK128 = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
BDK256 = BDK128 * 2
IK_ID = bytes.fromhex("1234567890123456")

TXN_KEYS_128 = {
    0x00000001: "4F21B565BAD9835E112B6465635EAE44",
    0x00000002: "2F34D68DE10F68D38091A73B9E7C437C",
    0x00000003: "031504E530365CF81264238540518318",
    0x00000004: "0EEFC7ADA628BA68878DA9165A8A1887",
    0x00000005: "C2A7AC328A5DA2D6002D62465BFC028B",
    0x00000006: "D30F7D9351DA58448A2F5E92B4EE3B7D",
    0x00000007: "A8253CEED9AC042C54F75D35C8352278",
    0x00000008: "718EE6CF0B27E53D5F7AF99C4D8146A2",
    0x0001FFFE: "E21E8C8D347F8561A2BE752DAA85A111",
    0x00020000: "F7AE9025468A25D37B7249CFFED224C8",
    0x00020001: "692C8EA4013645135B36497131DF9D2C",
    0xFFFE2000: "48E585B694EB0B18D5C35443E163C0BA",
    0xFFFE4000: "396C2C7CA1EA701C03B86B7D41F0C562",
    0xFFFE8000: "0387625F189B58AE03EF0E8CCA41105E",
    0xFFFF0000: "F6BA59389BD14A9855BE9727E7C52E3C",
}
TXN_KEYS_256 = {
    0x00000001: "54AC2B32B145EA4A554CB8BC44B17467063A799856B1CCC2A138D36E8DBF78B3",
    0x00000002: "5DD5A0253842BBBE1D7C0DA27021412C6F1FAB53FB928DEAE56DA06090A9DE97",
    0x0001FFFE: "A289508CBF1228452CD86AB77B15CB35577AC828C18BB66681E5A16D6C9CCED3",
    0x00020000: "D62DDA94A47D7DA5D763443B4ECB15EA8DD62E0E4F915958BA459591F8312E37",
    0xFFFF0000: "6D6DB7AAAE8B3EA90E57A39E4BBA71E173B21B446B30A78D64BFC6A8806C55EE",
}


def ksn(counter: int) -> bytes:
    return IK_ID + counter.to_bytes(4, "big")


def test_initial_keys() -> None:
    assert dukpt.initial_key(BDK128, IK_ID).hex().upper() == "1273671EA26AC29AFA4D1084127652A1"
    assert dukpt.initial_key(BDK256, IK_ID).hex().upper() == (
        "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F"
    )


@pytest.mark.parametrize(("bdk", "vectors"), [(BDK128, TXN_KEYS_128), (BDK256, TXN_KEYS_256)])
def test_transaction_keys(bdk: bytes, vectors: dict[int, str]) -> None:
    ik = dukpt.initial_key(bdk, IK_ID)
    for counter, expected in vectors.items():
        assert dukpt.transaction_key(ik, ksn(counter)).hex().upper() == expected, hex(counter)


def test_ksn_sequence_skips_counters_with_more_than_16_one_bits() -> None:
    sequence = [IK_ID + bytes(4)]
    for _ in range(8):
        sequence.append(dukpt.next_ksn(sequence[-1]))  # type: ignore[arg-type]
    assert [int.from_bytes(k[8:], "big") for k in sequence[1:]] == list(range(1, 9))
    assert dukpt.next_ksn(ksn(0x1FFFE)) == ksn(0x20000)  # 0x1FFFF has 17 one-bits
    assert dukpt.next_ksn(ksn(0xFFFE2000)) == ksn(0xFFFE4000)
    assert dukpt.next_ksn(ksn(0xFFFE8000)) == ksn(0xFFFF0000)
    assert dukpt.next_ksn(ksn(0xFFFF0000)) is None  # the reader's keys are used up


def test_working_keys_differ_by_usage_and_transaction() -> None:
    ik = dukpt.initial_key(BDK128, IK_ID)
    keys = {
        (counter, usage): dukpt.working_key(dukpt.transaction_key(ik, ksn(counter)), ksn(counter), usage)
        for counter in (1, 2)
        for usage in (dukpt.KeyUsage.DATA_ENCRYPT, dukpt.KeyUsage.PIN_ENCRYPTION, dukpt.KeyUsage.MAC_GENERATION)
    }
    assert len(set(keys.values())) == len(keys) and all(len(k) == 16 for k in keys.values())
    long = dukpt.working_key(dukpt.transaction_key(ik, ksn(1)), ksn(1), dukpt.KeyUsage.DATA_BOTH, dukpt.KeyType.AES256)
    assert len(long) == 32


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (lambda: dukpt.initial_key(b"short", IK_ID), "16, 24 or 32 bytes"),
        (lambda: dukpt.initial_key(BDK128, b"1234"), "8 bytes"),
        (lambda: dukpt.transaction_key(BDK128, IK_ID), "12 bytes"),
        (lambda: dukpt.transaction_key(BDK128, ksn(0)), "non-zero"),
        (lambda: dukpt.transaction_key(BDK128, ksn(0x1FFFF)), "16 one-bits"),
    ],
)
def test_bad_input_is_a_typed_error_without_key_material(call, text: str) -> None:  # noqa: ANN001
    with pytest.raises(dukpt.DukptError, match=text) as err:
        call()
    assert "fedcba" not in str(err.value).lower()
