"""The scheduler: claims ahead of need, hands out each group once in order, and surfaces a
failed claim ahead as it was."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.errors import JournalError
from asyncmailer.journal import Journal
from asyncmailer.ledger import Ledger, WorkItem
from asyncmailer.run.scheduler import Scheduler


@dataclass
class ReadList:
    """A list already read into the ledger (the scheduler's view of the loader)."""

    reading: bool = False
    more: asyncio.Event = field(default_factory=asyncio.Event)


class ClaimFailsOnce:
    """A ledger whose next claim fails (a full disk), and whose later claims work."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.calls = 0
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    async def claim(self, limit: int, now: float) -> list[WorkItem]:
        self.calls += 1
        if self.failing:
            self.failing = False
            raise JournalError("cannot write the journal: disk I/O error", path=self.journal.path)
        return await self.journal.claim(limit, now)


async def scheduler_over_twenty(journal: Journal | ClaimFailsOnce) -> Scheduler:
    """A scheduler of 8-group batches over a read list of 20 one-recipient groups."""
    await journal.begin_load()
    await journal.add_list([Mailbox(f"user{n}@example.com") for n in range(20)], 1)
    await journal.end_load()
    return Scheduler(cast(Ledger, journal), 8, asyncio.Event(), ReadList())


async def test_the_scheduler_claims_the_next_batch_before_the_buffer_runs_dry(
    tmp_path: Path,
) -> None:
    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        scheduler = await scheduler_over_twenty(journal)
        handed = [await scheduler.next()]  # claims 8 groups
        handed += [scheduler.take_ready() for _ in range(3)]  # 4 left: none claimed yet
        assert len(scheduler.buffer) == 4
        handed.append(scheduler.take_ready())  # under half a batch: topped up to a batch
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(scheduler.buffer) > 3:
                break
        assert len(scheduler.buffer) == 8
        while (item := scheduler.take_ready()) is not None:
            handed.append(item)
        handed.append(await scheduler.next())  # the last 4, claimed by then or now
        while (item := scheduler.take_ready()) is not None:
            handed.append(item)
        await scheduler.release_buffered()
        addresses = [item.recipients[0].addr for item in handed if item is not None]
        assert addresses == [f"user{n}@example.com" for n in range(20)]  # each once, in order


async def test_a_claim_ahead_that_fails_is_raised_by_the_next_call(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.sqlite") as journal:
        ledger = ClaimFailsOnce(journal)
        scheduler = await scheduler_over_twenty(ledger)
        assert await scheduler.next() is not None  # the first claim works

        ledger.failing, ledger.calls = True, 0  # the claim ahead fails; a later one would work
        handed = [scheduler.take_ready() for _ in range(7)]  # starts the claim ahead
        assert all(handed) and scheduler.take_ready() is None
        with pytest.raises(JournalError, match="disk I/O error"):
            await scheduler.next()
        assert ledger.calls == 1  # raised as it was, not claimed around
        await scheduler.release_buffered()
