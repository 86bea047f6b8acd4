"""The run's limits: a message rate across every connection, the daily quota kept in the
ledger across runs, and a run's own cap on messages (`--limit`)."""

from __future__ import annotations

import asyncio
import time

from ..ledger import Ledger

__all__ = ["DailyQuota", "MessageLimit", "RateLimiter"]


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


class DailyQuota:
    """`daily_quota` recipients per calendar day (local time), counted in the ledger so it
    holds across runs. Checked and counted in one step, so workers cannot overshoot it."""

    def __init__(self, limit: int, ledger: Ledger) -> None:
        self.limit = limit
        self.ledger = ledger
        self.day = ""
        self.used = 0

    def __repr__(self) -> str:
        return f"<DailyQuota {self.used}/{self.limit or 'unlimited'} on {self.day}>"

    async def load(self) -> None:
        self.day = time.strftime("%Y-%m-%d")
        self.used = await self.ledger.sent_on(self.day) if self.limit else 0

    def take(self, count: int) -> bool:
        """Count `count` recipients against today's quota; False (nothing counted) when they
        would go over it."""
        if not self.limit:
            return True
        today = time.strftime("%Y-%m-%d")
        if today != self.day:  # midnight passed: a new day's quota
            self.day, self.used = today, 0
        if self.used + count > self.limit:
            return False
        self.used += count
        self.ledger.count_sent(self.day, count)
        return True


class MessageLimit:
    """At most `limit` messages in this run (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.started = 0

    def take(self) -> bool:
        if self.limit is not None and self.started >= self.limit:
            return False
        self.started += 1
        return True
