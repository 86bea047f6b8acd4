"""Several relays: which one carries a transaction (by recipient domain, else by weight, with
each relay's fallback order), which are out of rotation and until when, and a free connection
slot on the one chosen.

A transaction goes through one relay: `split` cuts a group whose recipients are routed to
different relays into one item per relay (the same message, as an MTA fans a message out to
several domains), before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace

from ..config import Campaign, RelaySettings
from ..errors import DeliveryError
from ..ledger import Ledger, Pacer, WorkItem
from ..transport import Transport
from .limits import DailyQuota, Pause, SharedRateLimiter
from .policy import MAX_RETRY_DELAY
from .throttle import Throttle

__all__ = ["GIVEN", "Relay", "Relays"]

GIVEN = "dry run"  # the one relay of a transport given to the run (the CLI gives the dry run's)


class Relay:
    """One relay in a run: its transport, limits, throttle, and whether it is in rotation."""

    def __init__(
        self,
        settings: RelaySettings,
        transport: Transport,
        *,
        campaign: Campaign,
        ledger: Ledger,
        deadline: float,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.transport = transport
        ceilings = [r for r in (settings.rate, campaign.rate) if r is not None]
        self.throttle = Throttle(
            ceiling=min(ceilings) if ceilings else None, connections=settings.connections
        )
        # Its own rate held by every worker together, on a ledger shared by workers (the
        # throttle above paces this worker alone).
        self.shared_rate = (
            SharedRateLimiter(settings.rate, ledger, key=f"@{settings.name}")
            if settings.rate and isinstance(ledger, Pacer)
            else None
        )
        # Its own quota, kept in the ledger under a day key of its own (`DailyQuota`).
        self.quota = DailyQuota(settings.daily_quota, ledger, key=f"@{settings.name}")
        self.pause = Pause(
            delay=campaign.retry_delay,
            ceiling=MAX_RETRY_DELAY,
            threshold=settings.connections,
            deadline=deadline,
        )
        self.busy = 0  # connections held or being opened through it
        self.connecting = 0
        self.open = 0
        self.connected = False  # a connection to it has worked in this run
        self.connect_failures = 0  # connections that failed in a row
        self.backoffs = 0  # times taken out of rotation since it last carried a message
        self.out_until = 0.0  # time.monotonic() before which it takes no new work
        self.gone: DeliveryError | None = None  # out for what would stop a one-relay run
        self.spent = False  # its own daily quota is reached: out until tomorrow
        self.sent = 0  # messages accepted through it in this run
        self.started = 0  # messages begun through it in this run
        self.current = 0.0  # smooth weighted round robin's running weight

    def __repr__(self) -> str:
        state = "in rotation" if self.in_rotation() else "out"
        return f"<Relay {self.name} {state} busy={self.busy} {self.throttle!r}>"

    def in_rotation(self, now: float | None = None) -> bool:
        return self.out_until <= (time.monotonic() if now is None else now)

    @property
    def has_slot(self) -> bool:
        return self.busy < self.throttle.connections


class Relays:
    """The campaign's relays and the routing between them (docs/configuration.md).

    Routing: a recipient's domain named in a relay's `domains` goes to that relay; any other
    to the relays without `domains`, by `weight` (smooth weighted round robin: deterministic,
    and every relay gets its share within a few messages). When every relay a transaction
    may use is out of rotation, its work goes to their `fallback` relays in order, then to
    any relay in rotation. `acquire` waits while the relay chosen is busy, or every relay
    is out for a while.
    """

    def __init__(self, relays: Sequence[Relay], stop: asyncio.Event) -> None:
        if not relays:
            raise ValueError("at least one relay")
        self.relays = list(relays)
        self.by_name = {relay.name: relay for relay in relays}
        self.stop = stop
        self.by_domain = {d: relay for relay in relays for d in relay.settings.domains}
        rest = [r for r in relays if not r.settings.domains and r.settings.weight]
        self.default = rest or [r for r in relays if r.settings.weight] or list(relays)
        self.routed = bool(self.by_domain)  # some domains go their own way
        self.changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Relays {', '.join(map(repr, self.relays))}>"

    def __len__(self) -> int:
        return len(self.relays)

    def route(self, recipient: str) -> Relay | None:
        """The relay a recipient's domain is routed to, or None: any of the default ones."""
        if not self.routed:
            return None
        return self.by_domain.get(recipient.rpartition("@")[2].lower())

    def split(self, item: WorkItem) -> list[WorkItem]:
        """`item` as one item per relay its recipients are routed to (in list order; the
        same group and Message-ID). Most items are one already."""
        if not self.routed or len(item.recipients) < 2:
            return [item]
        routes = [self.route(m.addr) for m in item.recipients]
        if all(r is routes[0] for r in routes):
            return [item]
        parts: dict[str | None, list[int]] = {}
        for index, relay in enumerate(routes):
            parts.setdefault(relay.name if relay else None, []).append(index)
        return [
            replace(
                item,
                ids=tuple(item.ids[i] for i in indexes),
                recipients=tuple(item.recipients[i] for i in indexes),
                fields=tuple(item.fields[i] for i in indexes) if item.fields else (),
            )
            for indexes in parts.values()
        ]

    def left(self, besides: Relay) -> bool:
        """Some relay other than `besides` can still carry work in this run (in rotation,
        or out for a while for a reason that would not stop a one-relay run)."""
        return any(r is not besides and r.gone is None and not r.spent for r in self.relays)

    def candidates(self, item: WorkItem) -> list[Relay]:
        """The relays `item` may go through, in order of preference (the first group by
        weight)."""
        home = self.route(item.recipients[0].addr) if item.recipients else None
        first = [home] if home is not None else self.default
        order = list(first)
        for relay in first:
            order += [self.by_name[n] for n in relay.settings.fallback if n in self.by_name]
        order += [r for r in self.relays if r.settings.weight] + self.relays
        return list(dict.fromkeys(order))

    def pick(self, item: WorkItem) -> Relay | None:
        """The relay in rotation that `item` goes through, or None: none is.

        Among the preferred ones (its domain's relay, or the default ones), by weight; when
        every one of them is out, the first in rotation in fallback order."""
        now = time.monotonic()
        home = self.route(item.recipients[0].addr) if item.recipients else None
        first = [home] if home is not None else self.default
        up = [r for r in first if r.in_rotation(now)]
        if up:
            return _weighted(up)
        for relay in self.candidates(item):
            if relay.in_rotation(now):
                return relay
        return None

    async def acquire(self, item: WorkItem) -> Relay | None:
        """Wait for a connection slot on the relay `item` goes through, and take it (give it
        back with `release`). The relay is chosen once and waited for while it is busy (so
        the weights hold whatever the relays' speeds), chosen again if it goes out of
        rotation meanwhile. None when the run stops, or when no relay is left."""
        chosen: Relay | None = None
        while not self.stop.is_set():
            if chosen is None or not chosen.in_rotation():
                chosen = self.pick(item)
            if chosen is not None and chosen.has_slot:
                chosen.busy += 1
                chosen.started += 1
                return chosen
            if all(r.gone is not None or r.spent for r in self.relays):
                return None
            now = time.monotonic()
            waits = [r.out_until - now for r in self.relays if not r.in_rotation(now)]
            self.changed.clear()
            await _first(self.changed, self.stop, timeout=max(min(waits), 0.0) if waits else None)
        return None

    def may_follow(self, relay: Relay, item: WorkItem) -> bool:
        """May `item` be pipelined on a connection of `relay`? When it goes there: its
        domain's relay, or a default one that has not had more than its weight's share of
        the messages begun (so that long pipelined chains keep to the weights)."""
        home = self.route(item.recipients[0].addr) if item.recipients else None
        if home is not None:
            return home is relay
        if relay not in self.default:
            return False
        if len(self.default) == 1:  # one relay for all: no share to keep
            return relay.in_rotation()
        up = [r for r in self.default if r.in_rotation()]
        if relay not in up:
            return False
        if len(up) < 2:
            return True
        weights = sum(r.settings.weight for r in up)
        started = sum(r.started for r in up)
        if relay.started * weights <= (started + 1) * relay.settings.weight:
            relay.started += 1
            return True
        return False

    def release(self, relay: Relay) -> None:
        relay.busy -= 1
        self.changed.set()

    def take_out(self, relay: Relay, until: float, *, gone: DeliveryError | None = None) -> None:
        """Out of rotation until `until` (time.monotonic(): a changed clock moves no wait):
        its work goes to the others.
        `gone`: for a reason that would stop a run with this relay alone."""
        relay.out_until = max(relay.out_until, until)
        relay.backoffs += 1
        relay.gone = gone
        self.changed.set()

    def back_off(self, relay: Relay, delay: float) -> float:
        """How long `relay` stays out this time: `delay` doubled for each time it was taken
        out since it last carried a message, at most `MAX_RETRY_DELAY`."""
        return time.monotonic() + min(delay * 2.0**relay.backoffs, MAX_RETRY_DELAY)

    def carried(self, relay: Relay) -> None:
        """It took a message: in good standing again."""
        relay.backoffs = 0
        relay.gone = None
        relay.spent = False
        relay.sent += 1


def _weighted(relays: list[Relay]) -> Relay:
    """Smooth weighted round robin (nginx): each call picks the relay with the highest
    running weight, which then gives back the total."""
    if len(relays) == 1:
        return relays[0]
    total = 0
    for relay in relays:
        relay.current += relay.settings.weight or 1
        total += relay.settings.weight or 1
    chosen = max(relays, key=lambda r: r.current)
    chosen.current -= total
    return chosen


async def _first(*events: asyncio.Event, timeout: float | None) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
