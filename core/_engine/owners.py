"""Who holds a claim, and whether that holder is provably gone.

A claim's lease protects payments from two forwarders at once when the
first may still be alive (another process, a hung one, another machine
sharing a file).  But when the holder is a process on this device that no
longer exists, waiting out its lease only delays payments: after a crash
and restart, the new process takes such claims back at once.

An owner string names the host, the boot, the process id and the process's
start time (so a recycled pid is not mistaken for the holder).  A holder is
gone when it ran on this host and either the machine has rebooted since,
or no process with that pid and start time exists.  Anything else (another
host, a platform without /proc, a malformed owner) is never "gone": its
lease decides.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache
from pathlib import Path

_SEP = "|"


@cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@cache
def _host() -> str:
    return socket.gethostname().replace(_SEP, "_")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def make_owner(role: str) -> str:
    """A claim owner for this process: role, host, boot, pid, start time and a random part."""
    pid = os.getpid()
    return _SEP.join((role, _host(), _boot_id() or "-", str(pid), _start_time(pid) or "-", secrets.token_hex(4)))


def owner_gone(owner: str) -> bool:
    """True only when ``owner`` was a process of this device that provably no longer runs."""
    parts = owner.split(_SEP)
    if len(parts) != 6:
        return False
    _, host, boot, pid_text, started, _ = parts
    here = _boot_id()
    if host != _host() or here is None or boot == "-":
        return False
    if boot != here:
        return True  # this device has rebooted since: every process of that boot is gone
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process: alive by definition (its own claims are its own business)
    current = _start_time(pid)
    return current is None or (started != "-" and current != started)
