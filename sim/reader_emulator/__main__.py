"""``python -m offterm.sim.reader_emulator --serial | --tcp PORT | --ble``."""

import sys

from .cli import main

sys.exit(main())
