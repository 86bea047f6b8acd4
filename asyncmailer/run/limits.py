"""Rate limiting across the whole pool: at most `rate` messages per second, evenly spaced."""

from __future__ import annotations

import asyncio

__all__ = ["RateLimiter"]


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
