"""A child process for the storage tests: a real second process on the same database.

python worker.py store <dir> <keyhex> <count>            print each id once store() returned
python worker.py forward <dir> <keyhex> <owner> <gofile>  claim/forward until nothing is left
python worker.py claim-and-hang <dir> <keyhex> <sent>     claim all, send some, then wait to be killed
python worker.py fill-disk <dir> <keyhex> <options-json>  store until the disk is full, then check
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import structlog  # noqa: E402
from storage_testkit import make_store, new_payment  # noqa: E402

from offterm.core.contracts.storage import PaymentState  # noqa: E402
from offterm.core.errors import OfflineStorageFull  # noqa: E402
from offterm.plugins.storage.keys import StaticKeyProvider  # noqa: E402


def say(*parts: object) -> None:
    print(*parts, flush=True)


def main(argv: list[str]) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    command, directory, keyhex = argv[0], Path(argv[1]), argv[2]
    options = json.loads(argv[3]) if command == "fill-disk" else {}
    store = make_store(directory, **options)
    store.open(StaticKeyProvider(bytes.fromhex(keyhex)))
    if command == "store":
        for i in range(int(argv[3])):
            say("stored", store.store(new_payment(i)).offline_id)
    elif command == "forward":
        owner, go = argv[3], Path(argv[4])
        say("ready")
        while not go.exists():
            time.sleep(0.005)
        while batch := store.claim(owner, 3, 60, datetime.now(UTC)):
            for p in batch:
                say("claimed", p.offline_id)
                store.record_attempt(p.offline_id, owner, datetime.now(UTC))
                time.sleep(0.002)  # the request to the processor, outside any database lock
                store.complete(p.offline_id, owner, PaymentState.FORWARDED, datetime.now(UTC), intent_id="pi_" + owner)
    elif command == "claim-and-hang":
        sent = int(argv[3])
        batch = store.claim("doomed", 1000, 30, datetime.now(UTC))
        for p in batch[:sent]:
            store.record_attempt(p.offline_id, "doomed", datetime.now(UTC))
        report = {"claimed": [p.offline_id for p in batch], "sent": [p.offline_id for p in batch[:sent]]}
        say("ready", json.dumps(report))
        time.sleep(600)
    elif command == "fill-disk":
        fill_disk(store, directory)
    store.close()
    return 0


def fill_disk(store, directory: Path) -> None:  # type: ignore[no-untyped-def]
    """Store until OfflineStorageFull; report what was stored and whether it stays readable and forwardable."""
    filler = directory / "filler"
    filler.write_bytes(b"\0" * 512 * 1024)  # some other program's data, freed at the end
    stored: list[str] = []
    refused: str | None = None
    error = ""
    for i in range(1_000_000):
        p = new_payment(i)
        try:
            store.store(p)
        except OfflineStorageFull as exc:
            refused, error = p.offline_id, str(exc)
            break
        stored.append(p.offline_id)
    report: dict[str, object] = {"stored": len(stored), "refused": refused, "error": error}
    # the refused payment is not there, the earlier ones are, and the store still works
    report["refused_present"] = any(p.offline_id == refused for p in store.list_payments())
    report["listed"] = len(store.list_payments())
    again: list[str] = []
    try:
        for p in store.claim("after-full", 5, 60, datetime.now(UTC)):
            store.record_attempt(p.offline_id, "after-full", datetime.now(UTC), ["create_and_confirm"])
            store.complete(p.offline_id, "after-full", PaymentState.FORWARDED, datetime.now(UTC), intent_id="pi_x")
            again.append(p.offline_id)
    except OfflineStorageFull as exc:
        report["forward_error"] = str(exc)
    report["forwarded_after_full"] = again
    report["first_ids_ok"] = stored[: len(again)] == again
    try:
        store.store(new_payment(10_000_001))
        report["stored_while_still_full"] = True
    except OfflineStorageFull:
        report["stored_while_still_full"] = False
    filler.unlink()
    report["stored_after_freeing"] = store.store(new_payment(10_000_002)).state.value
    report["still_stored"] = sum(1 for p in store.list_payments() if p.offline_id in set(stored))
    say("report", json.dumps(report))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
