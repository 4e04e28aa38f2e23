"""Fixtures of the serve tests (helpers in serve_kit.py).

The seam for other clients' tests (the Node library, the browser example, benchmarks): ``served``
gives a started ``offterm serve`` process (``served.service.url``, ``.key``) over the simulator
(``served.sim``) behind a fault proxy (``served.proxy``), with a verifying webhook ``receiver``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve_kit import proxy, receiver, served, sim  # noqa: E402,F401
