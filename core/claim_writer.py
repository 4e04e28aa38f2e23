"""Group commit for the forwarder's claim updates.

Each forwarded payment needs two durable writes: its attempt (before the
request goes out) and its outcome (after the answer).  Written one by one,
a drain pays one transaction and one fsync for each, and the store thread,
which has to win the GIL back from a busy event loop after every SQLite
call, becomes the bottleneck.  Here every update submitted while a write
is in flight waits for the next one, and all of them reach the store as a
single ``apply_claim_updates`` call: one transaction for as many workers
as were waiting, and no timer (an update that finds the store idle is
written at once).

Nothing is weakened: a submitter's future settles only after the call that
carried its update returned, that is after the commit, with its own result
or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .contracts import StoredPayment
from .contracts.storage import ClaimUpdate
from .errors import StorageError
from .store_runner import AsyncStore

_Item = tuple[ClaimUpdate, "asyncio.Future[StoredPayment]"]


class ClaimWriter:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._pending: list[_Item] = []
        self._writing: asyncio.Task[None] | None = None

    def submit(self, update: ClaimUpdate) -> asyncio.Future[StoredPayment]:
        """Queue ``update``; the future settles once the transaction carrying it committed (or failed).

        The update is written whatever happens to the caller: cancelling the
        returned future only means nobody hears the result.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredPayment] = loop.create_future()
        self._pending.append((update, future))
        if self._writing is None:
            self._writing = loop.create_task(self._write_all(), name="offterm-claim-writer")
        return future

    async def drain(self) -> None:
        """Return once every update submitted so far is written (or failed).

        Also those submitted meanwhile by callbacks of earlier ones (a
        withdrawal follows its attempt's write): one turn of the loop lets
        them run before the last check.
        """
        await asyncio.sleep(0)
        while self._writing is not None:
            await asyncio.shield(self._writing)
            await asyncio.sleep(0)

    async def _write_all(self) -> None:
        batch: list[_Item] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                call = asyncio.ensure_future(self._apply(batch))
                try:
                    results = await asyncio.shield(call)
                except asyncio.CancelledError:  # the store is writing this batch: tell each caller what it did
                    _settle(batch, await call)
                    batch = []
                    raise
                _settle(batch, results)
                batch = []
        except BaseException:  # cancelled with the loop: tell whoever still listens
            stranded, self._pending = batch + self._pending, []
            error = StorageError("the claim writer was stopped; the update may or may not have been written")
            _settle(stranded, [error] * len(stranded))
            raise
        finally:
            self._writing = None

    async def _apply(self, batch: Sequence[_Item]) -> list[StoredPayment | BaseException]:
        updates = [update for update, _ in batch]
        try:
            results = await self._store.apply_claim_updates(updates)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transaction failed: nothing was applied, everyone in it hears why
            return [exc] * len(batch)
        if len(results) != len(batch):
            error = StorageError(f"the payment store returned {len(results)} results for {len(batch)} claim updates")
            return [error] * len(batch)
        return list(results)


def _settle(batch: Sequence[_Item], results: Sequence[StoredPayment | BaseException]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if future.done():  # its caller gave up listening
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
