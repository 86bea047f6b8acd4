"""When a scheduled campaign runs: the occurrences of a cron expression in its time zone, or
of a plain interval, with the grace for missed ones. Pure: the clock is passed in.

Cron times are wall-clock times of the schedule's zone, walked as such (croniter on naive
datetimes) and then placed on the time line: a time the spring change skips (02:30 on the
last Sunday of March in Europe/Berlin) happens once, at the instant it maps to (03:30), and
one the autumn change repeats happens once, the first time. So a change of clocks neither
skips nor doubles an occurrence.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal

_UTC_ZONE = ZoneInfo("UTC")

__all__ = [
    "Occurrence",
    "Schedule",
    "local_due",
    "parse_duration",
    "parse_send_time",
    "zone",
]

_DURATION = re.compile(r"(?P<count>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d)?", re.IGNORECASE)
_LONGEST = 366 * 86400.0  # a year: any longer interval or grace is a typo
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h``, ``1d`` (or a number of seconds).

    :raises ValueError: anything else, or not above 0.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 30s, 15m, 1h or 1d, got {text[:40]!r}")
    seconds = float(match["count"]) * _UNITS[(match["unit"] or "s").lower()]
    if not math.isfinite(seconds) or not 0 < seconds <= _LONGEST:
        raise ValueError(f"expected a duration above 0 and up to a year, got {text[:40]!r}")
    return seconds


def zone(name: str | None) -> ZoneInfo:
    """The time zone of that name (IANA, e.g. Europe/Berlin), or the local one for None.

    :raises ValueError: no such zone.
    """
    if name is None:
        return _local_zone()
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        raise ValueError(
            f"no such time zone: {name[:60]!r} (an IANA name, e.g. Europe/Berlin)"
        ) from None


def _local_zone() -> ZoneInfo:
    """The machine's zone as its C library sees it: ``TZ`` first, then the system's setting
    (/etc/localtime, macOS's, Windows' registry). Read anew each time, not tzlocal's cached
    answer, so a changed ``TZ`` counts.

    :raises ValueError: ``TZ`` names no zone, or the system's settings disagree.
    """
    try:
        # Typed ZoneInfo, but timezone.utc on a system with no zone data at all.
        found: tzinfo = tzlocal.reload_localzone()
    except (ValueError, OSError, ZoneInfoNotFoundError) as err:
        told = os.environ.get("TZ")
        if told:
            reason = f"TZ={told[:60]!r} is not a time zone name"
        else:
            words = str(err.args[0]) if err.args else type(err).__name__
            reason = f"cannot tell this machine's time zone: {words.splitlines()[0][:120]}"
        raise ValueError(
            f"{reason}; set TZ to an IANA name (e.g. TZ=Europe/Berlin), "
            "or name the zone (--tz, timezone:)"
        ) from None
    return found if isinstance(found, ZoneInfo) else _UTC_ZONE


def parse_send_time(text: str, timezone: ZoneInfo, now: datetime) -> datetime:
    """``2026-12-07 09:00`` (or with seconds, or ISO 8601 with a ``T`` or an offset) in
    `timezone`, as an aware datetime; ``now`` for now.

    :raises ValueError: not a time, or one before `now`.
    """
    if text.strip().lower() == "now":
        return now
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a time like '2026-12-07 09:00' or 'now', got {text[:40]!r}"
        ) from None
    if when.tzinfo is None:
        when = _place(when, timezone)
    if when < now:
        shown = when.astimezone(timezone).strftime("%Y-%m-%d %H:%M:%S %Z")
        raise ValueError(f"{shown} has passed; name a later time, or --at now")
    return when


def local_due(clock: tuple[int, int, int], timezone: ZoneInfo, start: datetime) -> datetime:
    """When a recipient in `timezone` is sent to with ``send_at_local``: that time of day,
    on the day of `start` there, or on the next day when it had passed at `start`. A time the
    spring change skips happens at the instant it maps to (as for cron)."""
    there = start.astimezone(timezone)
    hour, minute, second = clock
    wall = there.replace(hour=hour, minute=minute, second=second, microsecond=0, tzinfo=None)
    at = _place(wall, timezone)
    if at < start:
        at = _place(wall + timedelta(days=1), timezone)
    return at


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One scheduled time: `at` on the time line (UTC), and the id of its run."""

    at: datetime

    @property
    def run_id(self) -> str:
        """Stable across restarts and hosts: the scheduled instant, to the second, in UTC."""
        return self.at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """`cron` (five fields, or six with seconds first) in `timezone`, or `every` seconds (on
    multiples of the interval since the epoch, so every host agrees); occurrences up to
    `until`; one missed by more than `grace` seconds is skipped."""

    cron: str | None = None
    every: float | None = None
    timezone: ZoneInfo = _UTC_ZONE
    grace: float = 3600.0
    until: datetime | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule has either cron or every")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron, second_at_beginning=True):
                raise ValueError(f"not a valid cron expression: {self.cron[:60]!r}")
            try:  # "0 0 31 2 *" is valid, and never comes
                croniter(self.cron, datetime(2026, 1, 1), second_at_beginning=True).get_next(
                    datetime
                )
            except Exception as err:  # croniter's CroniterBadDateError, or its own kind
                raise ValueError(f"the cron expression never comes: {self.cron[:60]!r}") from err

    def after(self, moment: datetime) -> Iterator[Occurrence]:
        """The occurrences strictly after `moment` (an aware datetime), in order."""
        if self.every is not None:
            step = self.every
            number = math.floor(moment.timestamp() / step) + 1
            while True:
                at = datetime.fromtimestamp(number * step, UTC)
                if self.until is not None and at > self.until:
                    return
                yield Occurrence(at)
                number += 1
        yield from self._cron_after(moment)

    def _cron_after(self, moment: datetime) -> Iterator[Occurrence]:
        from croniter import croniter

        assert self.cron is not None
        zone = self.timezone
        # Walk wall-clock times from a little before `moment`: a skipped local time maps
        # forward, so the one just before may land after `moment`.
        start = moment.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
        walk = croniter(self.cron, start, second_at_beginning=True)
        last: datetime | None = None
        while True:
            wall: datetime = walk.get_next(datetime)
            at = _place(wall, zone)
            if at <= moment or (last is not None and at <= last):
                continue  # before `moment`, or the same instant as the last (a skipped hour)
            if self.until is not None and at > self.until:
                return
            last = at
            yield Occurrence(at)

    def due(
        self, now: datetime, *, since: datetime, done: frozenset[str] = frozenset()
    ) -> tuple[Occurrence | None, list[Occurrence]]:
        """What to run at `now`, looking at the occurrences after `since` (the last one that
        ran): the latest one not later than `now`, within `grace` and not in `done` (run ids),
        if any; and the ones missed by more than `grace` (to be logged as skipped)."""
        missed: list[Occurrence] = []
        current: Occurrence | None = None
        for occurrence in self.after(since):
            if occurrence.at > now:
                break
            if occurrence.run_id in done:
                continue
            if current is not None:
                missed.append(current)  # superseded by a later one
            current = occurrence
        if current is not None and now - current.at > timedelta(seconds=self.grace):
            missed.append(current)
            current = None
        return current, missed


def _place(wall: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time of `zone` as an instant: the first of two when the autumn change
    repeats it, and where the spring change moves it when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0)
    # A time in the spring gap does not survive a round trip through UTC: it moves forward.
    return first.astimezone(UTC)
