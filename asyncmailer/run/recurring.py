"""Recurring runs: campaigns sent on their schedules, one run at a time, until stopped.

Each occurrence is a run of its own (its id the scheduled time), unless the campaign's last
run is unfinished: then that run goes on (a long list under a daily quota is one run over
several days, not a run a day). An occurrence missed by more than the schedule's grace (the
machine was off) is skipped and said so; one still running when the next is due is not
started twice. While it runs, the scheduler holds each campaign's run lock, so a second
scheduler, or a `send`, of the same campaign is refused, naming who holds it.

On a shared ledger (`ledger:`) several schedulers, on any hosts, may serve one campaign: the
database makes each occurrence's run once (whoever comes first), the others join it as
workers, and one that comes after it ended does not run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..config import Campaign
from ..errors import InputError, NothingToSendError
from ..journal.runs import RunRecord
from ..schedule import Occurrence, Schedule
from .runs import RunBook, Runs

__all__ = ["OpenRuns", "Recurring", "RunOnce"]

# Sends one run of a campaign (its record begun), returns the exit code of that send.
RunOnce = Callable[[Campaign, RunBook, RunRecord], Awaitable[int]]
# The runs of a campaign, opened for as long as the scheduler serves it.
OpenRuns = Callable[[Campaign], AbstractAsyncContextManager[RunBook]]
# The longest wait between two looks at the clock: a changed clock is noticed within it.
_LOOK_EVERY = 60.0


@dataclass(slots=True)
class _Entry:
    campaign: Campaign
    schedule: Schedule
    runs: RunBook
    since: datetime  # the last occurrence that ran (or the start, less the grace)
    # The latest run, unfinished at the start (cut off: a crash, a stop), is still to go on
    # even when no occurrence is due; once, so a run the daily quota holds does not loop.
    resume: bool = False


class Recurring:
    """Runs `campaigns` on their schedules until `stop` is set or every schedule has ended.
    `tell` gets one line for each decision (started, resumed, skipped)."""

    def __init__(
        self,
        campaigns: Sequence[Campaign],
        *,
        run_once: RunOnce,
        stop: asyncio.Event,
        tell: Callable[[str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reload: Callable[[Campaign], Awaitable[Campaign]] | None = None,
        open_runs: OpenRuns = Runs,
    ) -> None:
        for campaign in campaigns:
            if campaign.schedule is None:
                raise InputError(
                    "has no schedule: add schedule: {cron: ...} or {every: ...}",
                    path=campaign.source,
                    field="schedule",
                )
        self.campaigns = list(campaigns)
        self.run_once = run_once
        self.stop = stop
        self.tell = tell
        self.clock = clock
        self.reload = reload  # the campaign as its file is at each occurrence
        self.open_runs = open_runs

    def __repr__(self) -> str:
        return f"<Recurring campaigns={len(self.campaigns)}>"

    async def run(self) -> int:
        """Serve until stopped (75, after the run in flight ends: the next start resumes
        it) or until no schedule has another occurrence (0).

        :raises JournalError: another scheduler or send holds a campaign's run lock.
        """
        async with contextlib.AsyncExitStack() as stack:
            entries = []
            for campaign in self.campaigns:
                assert campaign.schedule is not None
                runs = await stack.enter_async_context(self.open_runs(campaign))
                latest = runs.latest
                entries.append(
                    _Entry(
                        campaign,
                        campaign.schedule,
                        runs,
                        self._since(runs),
                        resume=latest is not None and not latest.finished,
                    )
                )
            while not self.stop.is_set():
                ran = False
                for entry in entries:
                    code = await self._serve(entry)
                    if code is not None:
                        ran = True
                        if self.stop.is_set():
                            return 75
                if ran:
                    continue
                upcoming = [o for e in entries if (o := self._next(e)) is not None]
                if not upcoming:
                    self.tell("no schedule has another occurrence: done")
                    return 0
                wait = (min(o.at for o in upcoming) - self.clock()).total_seconds()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), max(0.0, min(wait, _LOOK_EVERY)))
        return 75

    def _since(self, runs: RunBook) -> datetime:
        """Where to look for occurrences from: the last finished scheduled run's time, else
        now less the grace (an occurrence just missed, or one whose run was cut off, runs)."""
        for record in reversed(runs.runs):
            if record.scheduled is not None and record.finished:
                return datetime.fromisoformat(record.scheduled.replace("Z", "+00:00"))
        assert runs.campaign.schedule is not None
        return self.clock() - _grace(runs.campaign.schedule)

    def _next(self, entry: _Entry) -> Occurrence | None:
        return next(iter(entry.schedule.after(max(entry.since, self.clock()))), None)

    async def _serve(self, entry: _Entry) -> int | None:
        """Run the occurrence due now, if any: the exit code of its send, or None."""
        await entry.runs.refresh()
        now = self.clock()
        done = frozenset(
            [r.id for r in entry.runs.runs if r.finished]
            + [c for r in entry.runs.runs for c in r.covers]
        )
        current, missed = entry.schedule.due(now, since=entry.since, done=done)
        grace = timedelta(seconds=entry.schedule.grace)
        for occurrence in missed:
            why = (
                "missed by more than its grace"
                if now - occurrence.at > grace
                else "a later one is due"
            )
            self.tell(
                f"{entry.campaign.id}: skipped the occurrence of "
                f"{occurrence.at:%Y-%m-%d %H:%M:%S} UTC: {why}"
            )
            entry.since = max(entry.since, occurrence.at)
        if current is None and not entry.resume:
            return None
        entry.resume = False
        latest = entry.runs.latest
        try:
            if self.reload is not None:
                entry.campaign = entry.runs.campaign = await self.reload(entry.campaign)
            # No occurrence: the run cut off goes on (begin() refuses a finished one).
            record = await entry.runs.begin(occurrence=current)
        except (InputError, NothingToSendError) as err:
            # Edited while a run is unfinished, say: the scheduler goes on, this occurrence
            # does not (`send --continue` or `--new-run` settles it).
            what = (
                f"the occurrence of {current.at:%Y-%m-%d %H:%M:%S} UTC"
                if current is not None
                else f"going on with run {latest.id if latest else '?'}"
            )
            self.tell(f"{entry.campaign.id}: skipped {what}: {err}")
            if current is not None:
                entry.since = max(entry.since, current.at)
            return None
        if entry.runs.began:
            shown = ""
            if latest is not None and entry.runs.changed:
                shown = f" (changed since run {latest.id}: {', '.join(entry.runs.changed)})"
            self.tell(f"{entry.campaign.id}: run {record.id} begins{shown}")
        elif current is None:
            self.tell(f"{entry.campaign.id}: run {record.id} goes on (it was cut off)")
        else:  # unfinished, or begun by another scheduler of a shared ledger just now
            self.tell(f"{entry.campaign.id}: run {record.id} goes on")
        code = await self.run_once(entry.campaign, entry.runs, record)
        if current is not None:
            entry.since = max(entry.since, current.at)
        return code


def _grace(schedule: Schedule) -> timedelta:
    return timedelta(seconds=schedule.grace)
