"""Disk full while storing: a typed error, nothing reported stored, earlier payments intact and forwardable.

Two real ways to run out of space: a 2 MiB tmpfs mounted in a private mount
namespace (``unshare``; as root, or as a user where user namespaces are
allowed), and a file-size limit (RLIMIT_FSIZE), which needs no privileges.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from storage_testkit import worker_cmd

pytestmark = pytest.mark.slow


def unshare_prefix() -> list[str] | None:
    """A command prefix giving a private mount namespace, or None if this system allows none."""
    tool = shutil.which("unshare")
    if tool is None:
        return None
    for prefix in ([tool, "--mount"], [tool, "--user", "--map-root-user", "--mount"], ["sudo", "-n", tool, "--mount"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def check(report: dict) -> None:
    assert report["error"].startswith("[offline_storage_full]")
    assert report["stored"] > 0
    assert report["refused_present"] is False, "the refused payment was not stored"
    assert report["listed"] == report["stored"], "every earlier payment is still there"
    assert report["still_stored"] == report["stored"]
    assert len(report["forwarded_after_full"]) == 5 and report["first_ids_ok"], "stored payments stay forwardable"
    assert "forward_error" not in report
    assert report["stored_after_freeing"] == "stored", "storing works again once there is room"


def parse(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("report ")]
    assert lines, stdout
    return json.loads(lines[-1].split(" ", 1)[1])


def test_disk_full_on_a_really_full_tmpfs(tmp_path: Path, key: bytes) -> None:
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip(
            "no private mount namespace here (not root, no user namespaces, no sudo); disk full is still "
            "exercised by test_disk_full_under_a_file_size_limit"
        )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    inner = " ".join(
        [
            f"mount -t tmpfs -o size=2m,mode=0700 tmpfs {mnt} &&",
            "exec",
            *[
                f"'{part}'"
                for part in worker_cmd("fill-disk", str(mnt), key.hex(), json.dumps({"reserve_bytes": 262144}))
            ],
        ]
    )
    result = subprocess.run([*prefix, "sh", "-c", inner], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check(parse(result.stdout))
    assert list(mnt.iterdir()) == [], "the tmpfs lived only in the child's mount namespace"


def test_disk_full_under_a_file_size_limit(tmp_path: Path, key: bytes) -> None:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    result = subprocess.run(
        worker_cmd("fill-disk", str(tmp_path), key.hex(), json.dumps({"reserve_bytes": 0})),
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    check(parse(result.stdout))
    assert os.path.getsize(tmp_path / "payments.db") <= 1024 * 1024
