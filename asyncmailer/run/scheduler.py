"""The scheduler: hands out due work from the ledger a batch of groups at a time, and waits
for deferred recipients to come due, and for the list to be read, while anything may still
change."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from ..ledger import Ledger, WorkItem

__all__ = ["LoadState", "Scheduler", "Screen", "wait_first"]

# What the run does with claimed work before it is handed out: the items to send, less what
# it settled itself (suppressed recipients; see `dispatcher.Dispatcher._screen`).
Screen = Callable[[list[WorkItem]], Awaitable[list[WorkItem]]]


async def wait_first(events: Iterable[asyncio.Event], timeout: float | None) -> None:
    """Return once any of `events` is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class LoadState(Protocol):
    """What the scheduler needs to know of the list being read (`loader.Loader`)."""

    @property
    def reading(self) -> bool:
        """Rows may still come."""
        ...

    @property
    def more(self) -> asyncio.Event:
        """Set as each batch of rows reaches the ledger."""
        ...


class Scheduler:
    """Hands out due work from the journal, a batch of groups at a time; waits for deferred
    recipients to come due, and for the list to be read, while anything may still change.

    The buffer is topped up ahead, once it is down to half a batch: a claim is a commit, and
    every connection that ran dry meanwhile would stand idle (docs/design.md: claim ahead)."""

    def __init__(
        self,
        ledger: Ledger,
        batch: int,
        stop: asyncio.Event,
        loader: LoadState,
        screen: Screen | None = None,
        split: Callable[[WorkItem], list[WorkItem]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.screen = screen
        # A claimed group as the transactions it makes: one per relay its recipients are
        # routed to (`relays.Relays.split`); None: each group is one.
        self.split = split
        self.loader = loader
        self.batch = batch
        self.stop = stop
        self.buffer: deque[WorkItem] = deque()
        self.in_flight = 0
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()
        self._ahead: asyncio.Task[None] | None = None  # the claim ahead, while it runs
        self.failed: BaseException | None = None  # how a claim ahead failed
        self._full = True  # the last claim took all it asked for: there may be more

    def _pop(self) -> WorkItem:
        self.in_flight += 1
        item = self.buffer.popleft()
        if (
            len(self.buffer) < self.batch // 2
            and self._ahead is None
            and (self._full or self.loader.reading)
            and not self.stop.is_set()
        ):
            self._ahead = asyncio.ensure_future(self._claim_ahead())
        return item

    async def _claim(self, limit: int) -> list[WorkItem]:
        claimed = await self.ledger.claim(limit, time.time())
        self._full = len(claimed) >= limit
        if self.screen is not None and claimed:
            claimed = await self.screen(claimed)
        if self.split is not None:
            return [part for item in claimed for part in self.split(item)]
        return claimed

    async def _claim_ahead(self) -> None:
        try:
            # Up to a batch in all: the buffer (memory, with long groups) stays as it was.
            self.buffer.extend(await self._claim(self.batch - len(self.buffer)))
        except Exception as err:  # the journal failed: the next next() raises it
            self.failed = err
        finally:
            self._ahead = None

    async def next(self) -> WorkItem | None:
        async with self.lock:
            while not self.stop.is_set():
                if self.failed is not None:
                    raise self.failed
                if self.buffer:
                    return self._pop()
                if self._ahead is not None:
                    await asyncio.shield(self._ahead)
                    continue
                # Cleared before the claim: a change while it runs is not missed.
                self.changed.clear()
                self.loader.more.clear()
                claimed = await self._claim(self.batch)
                if claimed:
                    self.buffer.extend(claimed)
                    continue
                if self.in_flight or self.loader.reading:
                    # A transaction in flight may defer recipients; the list may have more.
                    await self._wait(None)
                    continue
                due = await self.ledger.next_due()
                if due is None:
                    return None
                await self._wait(max(due - time.time(), 0.0))
            return None

    def take_ready(self) -> WorkItem | None:
        """An item already claimed, without waiting; None if there is none at hand."""
        if self.buffer and not self.stop.is_set():
            return self._pop()
        return None

    def put_back(self, item: WorkItem) -> None:
        """An item taken but not sent after all: first in line again (or released at the
        end)."""
        self.in_flight -= 1
        self.buffer.appendleft(item)

    def done(self) -> None:
        self.in_flight -= 1
        self.changed.set()

    async def _wait(self, timeout: float | None) -> None:
        await wait_first((self.changed, self.stop, self.loader.more), timeout)

    async def release_buffered(self) -> None:
        """Give back what was claimed and not handed out (a claim ahead finishes first)."""
        if self._ahead is not None:
            await self._ahead
        while self.buffer:
            await self.ledger.release(self.buffer.popleft())
