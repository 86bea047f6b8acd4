"""The runs of a campaign on the shared ledger, as a send, a worker or a scheduler on any host
sees them: the same calls as `run.runs.Runs` (which keeps them in the state folder), over
`pg.runs.PgRuns`. Several may be open at once, on several hosts: the database decides who
begins a run, and the others join it.

Imported only for a campaign with a `ledger:` (it needs the postgresql extra)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from ..config import Campaign
from ..journal.runs import RunRecord
from ..ledger import Ledger
from ..pg import PgLedger
from ..pg.runs import PgRuns
from ..run_choice import RunRequest
from ..schedule import Occurrence
from .runs import RunList, fingerprint

__all__ = ["SharedRuns"]


class SharedRuns(RunList):
    """The runs of `campaign` (which has a `ledger`) in the database, as the last `refresh()`
    (or `begin()`) read them. Use as an async context (one connection; the schema is made
    or updated on entry)."""

    def __init__(self, campaign: Campaign) -> None:
        assert campaign.ledger is not None
        self.campaign = campaign
        self.book = PgRuns(campaign.ledger, campaign.id)
        self._runs: list[RunRecord] = []

    def __repr__(self) -> str:
        return f"<SharedRuns {self.campaign.id} runs={len(self._runs)}>"

    async def __aenter__(self) -> SharedRuns:
        await self.book.__aenter__()
        try:
            await self.refresh()
        except BaseException:
            await self.book.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.book.__aexit__(*exc_info)

    @property
    def changed(self) -> list[str]:
        return self.book.changed

    @property
    def began(self) -> bool:
        return self.book.began

    async def refresh(self) -> None:
        """Read the runs again: other workers and schedulers begin and end them too."""
        self._runs = await self.book.runs()

    async def begin(
        self,
        *,
        new_run: bool = False,
        keep_changes: bool = False,
        reopen: bool = False,
        occurrence: Occurrence | None = None,
        current: dict[str, str] | None = None,
    ) -> RunRecord:
        """The run this worker goes to (`run.runs.Runs.begin`'s choice, made in the
        database). `current` is the campaign's fingerprint as its message was built (else
        read now, by content: every host reads the same)."""
        if current is None:
            current = await asyncio.to_thread(
                functools.partial(fingerprint, self.campaign, content=True)
            )
        record = await self.book.begin(
            RunRequest(
                campaign=self.campaign.id,
                current=current,
                new_run=new_run,
                keep_changes=keep_changes,
                reopen=reopen,
                occurrence=occurrence,
                source=self.campaign.source,
            )
        )
        await self.refresh()
        return record

    async def sent_today(self, day: str) -> int:
        return await self.book.sent_today(day)

    async def end(self, record: RunRecord, *, stopped: bool) -> RunRecord:
        return await self.book.end(record, stopped=stopped)

    @contextlib.asynccontextmanager
    async def ledger(self, record: RunRecord, *, lease: float) -> AsyncIterator[Ledger]:
        """This worker's ledger of run `record`: its claims leased for `lease` seconds."""
        assert self.campaign.ledger is not None
        async with await PgLedger.open(
            self.campaign.ledger,
            campaign=self.campaign.id,
            run=self.book.serial(record),
            msgid_domain=self.campaign.sender.domain,
            lease=lease,
        ) as opened:
            yield opened
