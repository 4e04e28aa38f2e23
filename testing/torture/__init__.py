"""offterm.testing.torture: the torture harness behind ``bench/torture.py`` and ``tests/torture/``.

It proves offterm's promise (a payment the POS was told is stored is never
lost nor charged twice) the hard way, against the processor simulator's ledger:

* ``crash``      POS processes (``pos_worker``, run as ``python -m
  offterm.testing.torture.pos_worker``) SIGKILLed again and again under mixed
  network and processor faults, every station drained and checked;
* ``battery``    the other sections, one case at a time: network faults,
  disk faults (``disk``), bad input (``inputs``, with ``hostile``, a
  processor front that answers with garbage);
* ``payments``   the shared pieces: a POS configuration, taking and
  forwarding payments, checking them against the ledger;
* ``report``     the summary table and the ``docs/reliability.md`` page;
* ``legacy_v1``  a frozen schema-v1 builder for old-schema stations.

A tool, not a library API: nothing here is imported by ``import
offterm.testing`` (a pytest plugin loaded in every test run), and the
modules are imported one by one, as needed.  Linux only; the disk section
needs root (or user namespaces) for its filesystems.
"""

from __future__ import annotations

# The modules, not names in them: importing this package imports none of them (``from ... import *`` does).
__all__ = ["battery", "crash", "disk", "hostile", "inputs", "legacy_v1", "payments", "pos_worker", "report"]
