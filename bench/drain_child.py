"""A POS process that drains its store once, then reports its process tree's peak RSS.

    python bench/drain_child.py CONFIG_JSON

Run by ``bench_forwarding.py --rss``.  It imports what a POS app imports
(``offterm.core`` and the plugins its configuration names) and nothing of the
benchmark's own (the simulator, httpx test clients, ``offterm.testing``), so
its peak is the Terminal's, not the harness's.  Prints one JSON line:
``own_kib``, ``children_kib``, ``tree_kib``, ``seconds``, ``remaining``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from offterm.core import Terminal
from offterm.core.logs import configure_logging


def _peak_kib(pid: int | str) -> int:
    """``VmHWM`` of a process in KiB (its own address space's peak; 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def tree_peak_rss_kib() -> dict[str, int]:
    """Peak RSS of this process and of every process it started that still runs, in KiB.

    ``VmHWM``, not ``ru_maxrss``: the latter survives ``exec``, so a child
    spawned by a parent that holds a large backlog in memory would report the
    parent's peak.
    """
    own = _peak_kib("self")
    children = sum(_peak_kib(pid) for pid in _descendants(os.getpid()))
    return {"own_kib": own, "children_kib": children, "tree_kib": own + children}


async def drain(config: dict[str, Any]) -> dict[str, Any]:
    async with Terminal.from_config(config, background=False) as terminal:
        start = time.perf_counter()
        remaining = await terminal.forward_now(timeout=24 * 3600)
        seconds = time.perf_counter() - start
        peak = tree_peak_rss_kib()  # before close: every process the Terminal started still runs
    return {**peak, "seconds": round(seconds, 1), "remaining": remaining}


def main() -> None:
    configure_logging(json=True, level="warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    result = asyncio.run(drain(json.loads(sys.argv[1])))
    peak = tree_peak_rss_kib()
    result.update(own_kib=max(result["own_kib"], peak["own_kib"]), tree_kib=max(result["tree_kib"], peak["tree_kib"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
