"""Run a synchronous PaymentStore from async code, one call at a time.

SQLCipher has no async driver, so every store call goes to one dedicated
worker thread: the event loop never blocks on fsync, and the backend never
sees two calls at once from this process.  The drain's claims and claim
updates go through the store's ``drain_channel`` instead when it offers one
(its bookkeeping runs in another process): no thread hand-over at all.
A full disk reported through the channel sends the call to the store's
own method on its thread, where the store does its recovery (frees its
disk reserve) before one more try: recovery stays with the store, one
call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from .contracts import NewPayment, PaymentState, PaymentStore, StoredPayment, StoreSummary
from .contracts.storage import ClaimUpdate, HistoryEntry, StorageKeyProvider
from .errors import OfflineStorageFull

T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: PaymentStore) -> None:
        self.backend = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offterm-store")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store's thread (for a few backend calls that belong together)."""
        return await self._run(fn)

    async def open(self, keys: StorageKeyProvider) -> None:
        await self._run(self.backend.open, keys)

    async def close(self) -> None:
        try:
            await self._run(self.backend.close)
        finally:
            self._executor.shutdown(wait=True)

    async def store(self, payment: NewPayment, check: Callable[[StoreSummary], None] | None = None) -> StoredPayment:
        return await self._run(self.backend.store, payment, check)

    async def get(self, offline_id: str) -> StoredPayment:
        return await self._run(self.backend.get, offline_id)

    async def list_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        return await self._run(self.backend.list_payments, states, limit)

    async def summary(self) -> StoreSummary:
        return await self._run(self.backend.summary)

    async def claim(self, owner: str, limit: int, lease_seconds: float, now: datetime) -> list[StoredPayment]:
        channel = self.backend.drain_channel()
        if channel is not None:
            with contextlib.suppress(OfflineStorageFull):  # nothing was written; the store's own method recovers
                return await channel.claim(owner, limit, lease_seconds, now)
        return await self._run(self.backend.claim, owner, limit, lease_seconds, now)

    async def record_attempt(self, offline_id: str, owner: str, now: datetime) -> StoredPayment:
        return await self._run(self.backend.record_attempt, offline_id, owner, now)

    async def complete(
        self, offline_id: str, owner: str, to_state: PaymentState, now: datetime, **kw: Any
    ) -> StoredPayment:
        return await self._run(self.backend.complete, offline_id, owner, to_state, now, **kw)

    async def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]:
        channel = self.backend.drain_channel()
        if channel is not None:
            with contextlib.suppress(OfflineStorageFull):  # nothing was written; the store's own method recovers
                return await channel.apply_claim_updates(updates)
        return await self._run(self.backend.apply_claim_updates, updates)

    async def release(self, owner: str, now: datetime) -> int:
        return await self._run(self.backend.release, owner, now)

    async def recover_expired_claims(self, now: datetime) -> int:
        return await self._run(self.backend.recover_expired_claims, now)

    async def history(self, offline_id: str) -> list[HistoryEntry]:
        return await self._run(self.backend.history, offline_id)

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self.backend.get_meta, key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self.backend.set_meta, key, value)
