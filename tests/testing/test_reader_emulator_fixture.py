"""offterm.testing: the reader emulator process and its control channel."""

from __future__ import annotations

import pytest
import serial

from offterm.testing import EmulatorError, ReaderEmulatorProcess


def test_emulator_fixture_serves_a_pseudo_terminal_and_answers_control_lines(reader_emulator):
    assert reader_emulator.running
    assert reader_emulator.address.startswith("/dev/")
    status = reader_emulator.status()
    assert status["ok"] == "status" and status["queued"] == []
    answer = reader_emulator.present("visa tap")
    assert answer["ok"] == "present" and "4242" in answer["next"]
    assert len(reader_emulator.status()["queued"]) == 1
    with serial.Serial(reader_emulator.address, timeout=0.1) as port:  # the pty really opens
        assert port.is_open


def test_refused_control_line_raises_with_the_emulators_reason(reader_emulator):
    with pytest.raises(EmulatorError, match="unknown test card 'nosuchcard'"):
        reader_emulator.present("nosuchcard tap")
    assert reader_emulator.running


def test_emulator_that_cannot_start_says_why():
    with pytest.raises(EmulatorError, match="card-key"):
        ReaderEmulatorProcess(args=["--card-key", "zz"])


def test_stop_reaps_the_process():
    emulator = ReaderEmulatorProcess("tcp")
    assert emulator.address.startswith("socket://127.0.0.1:")
    emulator.stop()
    assert emulator.process.returncode == 0  # it quit when asked
    with pytest.raises(EmulatorError, match="not running"):
        emulator.status()
