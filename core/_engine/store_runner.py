"""Run a synchronous PaymentStore from async code, one call at a time.

SQLCipher has no async driver, so every store call goes to one dedicated
worker thread: the event loop never blocks on fsync, and the backend never
sees two calls at once from this process.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from ..contracts import NewPayment, OnlineAttempt, PaymentState, PaymentStore, StoredPayment, StoreSummary
from ..contracts.storage import HistoryEntry, StorageKeyProvider

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

    async def open(self, keys: StorageKeyProvider, *, create: bool = True) -> None:
        if create:  # as before ``create`` existed: a backend written then still opens
            await self._run(self.backend.open, keys)
        else:
            await self._run(self.backend.open, keys, create=False)

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

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: datetime, *, ignore_backoff: bool = False
    ) -> list[StoredPayment]:
        return await self._run(self.backend.claim, owner, limit, lease_seconds, now, ignore_backoff=ignore_backoff)

    async def record_attempt(
        self, offline_id: str, owner: str, now: datetime, steps: Collection[str] = ()
    ) -> StoredPayment:
        return await self._run(self.backend.record_attempt, offline_id, owner, now, steps)

    async def record_intent(self, offline_id: str, owner: str, intent_id: str, now: datetime) -> StoredPayment:
        return await self._run(self.backend.record_intent, offline_id, owner, intent_id, now)

    async def start_key_generation(
        self, offline_id: str, owner: str, now: datetime, intent_id: str | None, *, generation: int | None = None
    ) -> StoredPayment:
        return await self._run(
            functools.partial(self.backend.start_key_generation, generation=generation),
            offline_id,
            owner,
            now,
            intent_id,
        )

    async def complete(
        self, offline_id: str, owner: str, to_state: PaymentState, now: datetime, **kw: Any
    ) -> StoredPayment:
        return await self._run(self.backend.complete, offline_id, owner, to_state, now, **kw)

    async def release(self, owner: str, now: datetime) -> int:
        return await self._run(self.backend.release, owner, now)

    async def recover_expired_claims(self, now: datetime, owner_gone: Callable[[str], bool] | None = None) -> int:
        """``owner_gone`` runs on the store's thread: it must not touch the event loop."""
        return await self._run(self.backend.recover_expired_claims, now, owner_gone)

    async def begin_online(self, attempt: OnlineAttempt) -> None:
        await self._run(self.backend.begin_online, attempt)

    async def end_online(self, offline_id: str) -> None:
        await self._run(self.backend.end_online, offline_id)

    async def resolve_online(
        self,
        offline_id: str,
        resolution: str,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> OnlineAttempt:
        return await self._run(
            self.backend.resolve_online, offline_id, resolution, now, intent_id=intent_id, error_code=error_code
        )

    async def online_attempts(self, *, resolved: bool | None = None) -> list[OnlineAttempt]:
        return await self._run(self.backend.online_attempts, resolved=resolved)

    async def requeue(self, offline_id: str, now: datetime, *, reason: str | None = None) -> StoredPayment:
        return await self._run(self.backend.requeue, offline_id, now, reason=reason)

    async def history(self, offline_id: str) -> list[HistoryEntry]:
        return await self._run(self.backend.history, offline_id)

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self.backend.get_meta, key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self.backend.set_meta, key, value)
