"""The other side of each wire, for tests and the demo: the processor simulator
(``offterm.sim.processor``), the reader emulator (``offterm.sim.reader_emulator``) and the
network fault proxy (``offterm.sim.netproxy``)."""

__all__ = ["netproxy", "processor", "reader_emulator"]
