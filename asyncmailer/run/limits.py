"""The run's limits: a message rate across every connection, the daily quota kept in the
ledger across runs, and a run's own cap on messages (`--limit`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..ledger import Ledger, Pacer, QuotaBank

__all__ = ["DailyQuota", "MessageLimit", "Pause", "RateLimiter", "SharedRateLimiter"]


class RateLimiter:
    """A GCRA limiter (a token bucket of one): every call reserves the next free slot.

    Shared by every worker, so the limit holds for the campaign, not per connection: over any
    run, messages started <= rate x elapsed + 1, whatever the concurrency.
    """

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("rate must be above 0")
        self.interval = 1.0 / per_second
        self._next = 0.0

    def __repr__(self) -> str:
        return f"<RateLimiter {1 / self.interval:g}/s>"

    async def wait(self) -> None:
        """Return when the caller may start its next message."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(self._next, now)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class SharedRateLimiter:
    """The rate of a campaign sent by several workers: slots reserved in the shared ledger a
    batch at a time (about `ahead` seconds' worth), so the database is not asked per message.

    Over a run, messages started by all workers <= rate x elapsed + one batch per worker. A
    slot this worker reaches late (its connections were busy) is still used: every slot was
    reserved at the campaign's pace, so the run's total holds; dropping it would leave the
    workers below the rate whenever one of them is slower than its share."""

    def __init__(
        self, per_second: float, pacer: Pacer, *, ahead: float = 0.25, key: str = ""
    ) -> None:
        if per_second <= 0:
            raise ValueError("rate must be above 0")
        self.interval = 1.0 / per_second
        self.pacer = pacer
        self.key = key  # whose rate: "" the campaign's, "@name" a relay's
        self.batch = max(1, min(1000, round(per_second * ahead)))
        self._next = 0.0  # this worker's next slot (loop time)
        self._left = 0  # slots reserved and not handed out
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SharedRateLimiter {1 / self.interval:g}/s batch={self.batch}>"

    async def wait(self) -> None:
        """Return when the caller may start its next message."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self._left:
                offset = await self.pacer.reserve_slots(self.batch, self.interval, self.key)
                self._next, self._left = loop.time() + offset, self.batch
            slot = self._next
            self._next += self.interval
            self._left -= 1
        now = loop.time()
        if slot > now:
            await asyncio.sleep(slot - now)


class DailyQuota:
    """`daily_quota` recipients per calendar day (local time), counted in the ledger so it
    holds across runs. Checked and counted in one step, so workers cannot overshoot it.

    With a ledger shared by workers in several processes (a `QuotaBank`), the quota is
    reserved from it in parts (`batch`), each worker spending its own part: all of them
    together stay within the quota; parts not spent go back at the end (`release()`)."""

    def __init__(self, limit: int, ledger: Ledger, *, elsewhere: int = 0, key: str = "") -> None:
        self.limit = limit
        self.ledger = ledger
        self.elsewhere = elsewhere  # tried today by the campaign's earlier runs
        self.key = key  # after the day in the ledger's count: a relay's own (``@name``)
        self.day = ""
        self.used = 0
        self.bank = ledger if isinstance(ledger, QuotaBank) else None
        self.batch = max(1, min(limit // 20, 1000))  # reserved from the bank at a time
        self.allowance = 0  # reserved from the bank, not spent yet
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<DailyQuota {self.used}/{self.limit or 'unlimited'} on {self.day}>"

    async def load(self) -> None:
        self.day = time.strftime("%Y-%m-%d")
        if self.bank is not None:
            self.used = 0  # what this worker spent: the bank keeps the campaign's count
            return
        self.used = (
            await self.ledger.sent_on(self.day + self.key) + self.elsewhere if self.limit else 0
        )

    async def take(self, count: int) -> bool:
        """Count `count` recipients against today's quota; False (nothing counted) when they
        would go over it."""
        if not self.limit:
            return True
        today = time.strftime("%Y-%m-%d")
        if today != self.day:  # midnight passed: a new day's quota
            self.release()
            self.day, self.used = today, 0
        if self.bank is None:
            if self.used + count > self.limit:
                return False
            self.used += count
            self.ledger.count_sent(self.day + self.key, count)
            return True
        async with self._lock:  # one reservation at a time: workers of this process wait
            if self.allowance < count:
                want = max(count - self.allowance, self.batch)
                self.allowance += await self.bank.reserve_quota(
                    self.day + self.key, want, self.limit
                )
            if self.allowance < count:
                return False
            self.allowance -= count
            self.used += count
            return True

    def give_back(self, count: int) -> None:
        """Recipients counted by `take()` that were not sent after all."""
        if not (self.limit and count):
            return
        self.used -= count
        if self.bank is not None:
            self.allowance += count  # still reserved: spent by this worker, or released
        else:
            self.ledger.count_sent(self.day + self.key, -count)

    def release(self) -> None:
        """Give the bank back what this worker reserved and did not spend."""
        if self.bank is not None and self.allowance:
            self.ledger.count_sent(self.day + self.key, -self.allowance)
            self.allowance = 0


class MessageLimit:
    """At most `limit` messages in this run (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.started = 0

    @property
    def used_up(self) -> bool:
        """No message may start any more."""
        return self.limit is not None and self.started >= self.limit

    def take(self) -> bool:
        if self.used_up:
            return False
        self.started += 1
        return True


class Pause:
    """Waits of the whole run after temporary refusals of the sender or the session (a rate
    limit, "try again later", 421).

    One such refusal costs nothing but a new connection: a server closes a connection at its
    own per-connection limit, and the others go on. Only once more of them came than the run
    has connections, with no message accepted in between, does every worker wait: `delay`,
    then twice that each time, up to `ceiling`. `hit()` says None once waiting would pass
    `deadline` (the run's retry_max_age, on `time.monotonic()`, as every wait here: a clock
    set back an hour does not make the run wait an hour more): the run stops then, and the
    next run goes on.
    """

    def __init__(self, *, delay: float, ceiling: float, threshold: int, deadline: float) -> None:
        self.delay = delay
        self.ceiling = ceiling
        self.threshold = threshold
        self.deadline = deadline
        self.hits = 0  # temporary refusals since a message was last accepted
        self.until = 0.0  # no worker starts a transaction before this (time.monotonic())

    def __repr__(self) -> str:
        return f"<Pause hits={self.hits} until={self.until:.0f}>"

    def hit(self) -> float | None:
        """Count one refusal; how long the run now waits (0: not at all), or None: give up."""
        self.hits += 1
        if self.hits <= self.threshold:
            return 0.0
        wait = min(self.delay * 2.0 ** (self.hits - self.threshold - 1), self.ceiling)
        now = time.monotonic()
        if now + wait > self.deadline:
            return None
        self.until = max(self.until, now + wait)
        return wait

    def progress(self) -> None:
        """A message was accepted: the server takes mail again."""
        self.hits = 0

    async def wait(self, stop: asyncio.Event) -> None:
        """Return once the pause is over, or at once when `stop` is set."""
        left = self.until - time.monotonic()
        if left > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), left)
