"""Adaptive throttling of one relay: additive increase, multiplicative decrease (AIMD) of its
message rate and of its connection count, under the configured ceilings.

Relays throttle with replies (421, 4.7.x, 451) and by refusing connections rather than by a
documented rate. Each such signal cuts the rate (or the connection count) by `DECREASE`; each
accepted message adds back a little, `RATE_STEP` messages a second per second of sending at the
current rate, so the rate saws just under what the relay takes. docs/design.md has the
figures measured against a relay that throttles above 50 messages a second.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["CONNECTION_EVERY", "DECREASE", "FLOOR", "RATE_STEP", "Throttle"]

DECREASE = 0.8  # the rate after a throttling reply, as a share of the rate before
RATE_STEP = 1.0  # messages/s added per second of accepted messages at the current rate
FLOOR = 0.5  # messages/s: never slower (a relay that throttles everything still gets tries)
CONNECTION_EVERY = 20  # accepted messages per connection added back, after a refusal
_WINDOW = 1.0  # seconds over which the rate actually sent is seen, before any throttling
_SPAN = 0.05  # seconds: the shortest time a rate is taken over (the first messages of a run)


class Throttle:
    """One relay's current rate and connection count.

    `rate` is None while nothing has throttled and no ceiling is set: no pacing at all. A
    throttling reply counts only when its transaction began after the last cut (`epoch`):
    the replies to transactions already in flight say nothing about the new rate, and would
    otherwise cut it several times for one overshoot (TCP's one cut per window).
    """

    def __init__(self, *, ceiling: float | None, connections: int) -> None:
        self.ceiling = ceiling
        self.rate: float | None = ceiling
        self.connection_ceiling = connections
        self.connections = connections
        self.epoch = 0  # bumped by every cut of the rate
        self.cuts = 0  # throttling replies that cut the rate (for the report and the bench)
        self.signals = 0  # throttling replies seen, counted or not
        self._next = 0.0  # the next free slot (loop time), GCRA as `limits.RateLimiter`
        self._started: deque[float] = deque(maxlen=4096)  # recent starts, before any rate
        self._accepted = 0  # accepted since the connection count was last cut or raised

    def __repr__(self) -> str:
        rate = "unpaced" if self.rate is None else f"{self.rate:.1f}/s"
        return f"<Throttle {rate} connections={self.connections}/{self.connection_ceiling}>"

    @property
    def paced(self) -> bool:
        """A rate is kept: the next envelope may not leave before its turn (no pipelining
        of the next message after this one's end)."""
        return self.rate is not None

    async def wait(self) -> int:
        """Return when the caller may start its next message; the epoch it starts in."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        epoch = self.epoch
        if self.rate is None:
            self._started.append(now)
            return epoch
        slot = max(self._next, now)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)
        return epoch

    def accepted(self, messages: int = 1) -> None:
        """Messages the relay took: the rate and the connection count grow back."""
        if self.rate is not None:
            grown = self.rate + RATE_STEP * messages / self.rate
            self.rate = grown if self.ceiling is None else min(grown, self.ceiling)
        if self.connections < self.connection_ceiling:
            self._accepted += messages
            if self._accepted >= CONNECTION_EVERY * self.connections:
                self.connections += 1
                self._accepted = 0

    def throttled(self, epoch: int) -> bool:
        """A throttling reply to a transaction begun in `epoch`: cut the rate, once per
        epoch. True when it was cut."""
        self.signals += 1
        if epoch != self.epoch:
            return False
        current = self.rate if self.rate is not None else self._sent_rate()
        self.rate = max(FLOOR, current * DECREASE)
        self.epoch += 1
        self.cuts += 1
        return True

    def refused_connection(self) -> None:
        """The relay refused a connection while others were open: one connection fewer at
        once, down to one (a relay limiting connections resets the surplus ones)."""
        self.connections = max(1, math.ceil(self.connections * DECREASE) - 1)
        self._accepted = 0

    def _sent_rate(self) -> float:
        """Messages started per second over the last `_WINDOW` seconds (or since the first
        of them, early in a run, but over at least `_SPAN`)."""
        now = asyncio.get_running_loop().time()
        recent = [t for t in self._started if t >= now - _WINDOW]
        if not recent:
            return FLOOR
        return max(len(recent) / max(now - recent[0], _SPAN), FLOOR)
