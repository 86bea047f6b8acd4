"""The loader: reads the campaign's recipients into the ledger while sending goes on, and
reports bad list rows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..addresses import Mailboxes
from ..config import Campaign
from ..ledger import Ledger
from ..observer import Observer
from ..recipient_list import BadRow, Recipient, RecipientFile, RowBatch
from ..results import RecipientResult, Status

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from ..personalize import Personalizer

__all__ = ["FIRST_BATCH", "LOAD_BATCH", "Loader", "check_row", "list_file"]

LOAD_BATCH = 5000  # list rows per ledger write
# Sending starts once this many rows are in the ledger; the rest are read while it goes on
# (docs/design.md: a run, end to end).
FIRST_BATCH = 20_000
# Seconds between looks at a load another worker of a shared ledger makes: soon at first (its
# first batch is in within a second), then less often, doubling up to FOLLOW_EVERY.
FOLLOW_FIRST = 0.05
FOLLOW_EVERY = 0.5


def check_row(personalizer: Personalizer, item: Recipient) -> str | None:
    """Why this row cannot make its subject or headers (None: it can). Only they are made
    here, as they can fail on the row's values (a line break); the body is made once, when
    sent."""
    try:
        context = personalizer.context(item.mailbox, item.fields)
        personalizer.subject(context)
        personalizer.headers(context)
    except ValueError as err:
        return str(err)
    return None


def list_file(campaign: Campaign, path: Path) -> RecipientFile:
    """The campaign's list file as its keys describe it (column, encoding, delimiter): what a
    run loads and `asyncmailer check` renders."""
    return RecipientFile(
        path,
        column=campaign.recipients_column,
        name_column=campaign.name_column,
        encoding=campaign.recipients_encoding,
        delimiter=campaign.recipients_delimiter,
    )


class Loader:
    """Reads the campaign's recipients into the ledger (each address once) while sending goes
    on, and reports bad list rows (and, when personalising, rows that cannot fill the
    templates).

    `start()` reads the config's recipients and the list's first rows: a list that cannot be
    read, or whose columns the templates do not match, fails before anything is sent (the
    whole file was already checked for UTF-8 by `RecipientFile.scan()`). `go_on()` reads the
    rest in a task of its own, and a failure there stops the run.
    """

    def __init__(
        self,
        campaign: Campaign,
        ledger: Ledger,
        personalizer: Personalizer | None,
        stop: asyncio.Event,
        *,
        first_batch: int = FIRST_BATCH,
        batch: int = LOAD_BATCH,
    ) -> None:
        self.campaign = campaign
        self.first_batch = first_batch
        self.batch = batch
        self.ledger = ledger
        self.personalizer = personalizer
        self.stop = stop
        self.bad: list[RecipientResult] = []
        self.duplicates = 0
        self.added = 0  # recipients new to the ledger in this load
        self.reading = True  # False once every row is in the ledger
        self.read_to: int | None = None  # the run stopped before the list's end, at this line
        self.more = asyncio.Event()  # set as each batch reaches the ledger, and at the end
        self._first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resume = asyncio.Event()
        self._observer: Observer = Observer()
        self._counted = 0  # the expected count when go_on() was called, less rows added
        self._tell = False  # started() was not given the count: counted() will be
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read up to the first batch.

        :raises InputError: the list cannot be read, or lacks a column the templates use.
        """
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.cancel()
            raise

    def go_on(self, observer: Observer, expected: int) -> None:
        """Read the rest; `expected` is the run's count so far (bad rows not included): the
        observer is told the final count (`Observer.counted()`) and each bad row found."""
        self._observer, self._counted = observer, expected - self.added
        self._tell = self.reading
        self._resume.set()

    async def finish(self) -> None:
        """Wait until the list is read.

        :raises InputError: reading it failed part-way (the run was stopped).
        """
        if self._task is not None:
            await self._task

    async def cancel(self) -> None:
        """Stop reading, if it still is; how it ended was told by `start()` or `finish()`."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task  # retrieved, so asyncio does not warn about it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller is being cancelled too: that must go on
        except Exception:  # reported already, by start() or finish()
            pass

    async def _run(self) -> None:
        try:
            await self._read()
        except BaseException as err:
            if self._first.done():
                self.stop.set()  # a list that fails part-way stops the run
            elif isinstance(err, asyncio.CancelledError):
                self._first.cancel()
            else:
                self._first.set_exception(err)
                self._first.exception()  # retrieved: start() re-raises it
            raise
        finally:
            self._done_reading()
            if not self._first.done():
                self._first.set_result(None)

    async def _end_load(self) -> None:
        """The last batch is in: the ledger lifts its fence, then claims take every group."""
        await self.ledger.end_load(len(self.bad), cut_short=self.read_to is not None)
        self._done_reading()

    def _done_reading(self) -> None:
        if self.reading:
            self.reading = False  # later claims take every group: the last batch is in
            self.more.set()

    async def _read(self) -> None:
        campaign, ledger, personalizer = self.campaign, self.ledger, self.personalizer
        follow = FOLLOW_FIRST
        while not await ledger.begin_load():
            # A shared ledger whose list another worker reads (or has read): wait for it,
            # taking over should that worker die (its load lease lapses).
            if not self._first.done():
                self._first.set_result(None)
            if self.stop.is_set() or not await ledger.loading():
                return
            self.more.set()  # its batches may have come: claims look again
            await asyncio.sleep(follow)
            follow = min(follow * 2, FOLLOW_EVERY)
        if campaign.recipients:
            self.added += (await ledger.add_config_group(campaign.recipients)).new
        if campaign.recipients_file is None:
            await self._end_load()
            return
        source = list_file(campaign, campaign.recipients_file)
        await source.scan()
        keep = personalizer is not None or campaign.send_at_local is not None  # row fields
        pending = _Pending(keep)
        checked = personalizer is None  # the templates' names against the list's header, once
        size = self.first_batch
        # The list comes as batches of columns (a million rows: no object per row here, on
        # the event loop); rows go on in stretches, each up to the next bad row or the next
        # ledger write. The stop event can only change while this task waits: looking at it
        # after each wait is looking at it before every row.
        batches = source.batches(fields=keep)
        async with contextlib.aclosing(batches):
            async for rows in batches:
                good = bad = 0  # how far into `rows`: good rows taken, bad rows reported
                while good < len(rows.lines) or bad < len(rows.bad):
                    bad_next = bad < len(rows.bad) and rows.bad[bad][0] == good
                    if self.stop.is_set():  # Ctrl-C, the quota, a fatal error: read no more
                        line = rows.bad[bad][1].line if bad_next else rows.lines[good]
                        self.read_to = line - 1
                        break
                    if not checked and personalizer is not None:
                        personalizer.check_fields(source.columns, source.path)
                        checked = True
                    if bad_next:
                        pending.skip(rows.bad[bad][1])
                        bad += 1
                        continue
                    end = rows.bad[bad][0] if bad < len(rows.bad) else len(rows.lines)
                    end = min(end, good + size - len(pending))
                    pending.take(rows, good, end, personalizer, source.path)
                    good = end
                    if len(pending) == size:
                        await self._add(pending)
                        pending, size = _Pending(keep), self.batch
                if self.read_to is not None:
                    break
        await self._add(pending, last=True)
        if self._tell and self.read_to is None:
            await self._observer.counted(self._counted + self.added + len(self.bad))

    async def _add(self, rows: _Pending, *, last: bool = False) -> None:
        if len(rows):
            added = await self.ledger.add_list(
                rows.mailboxes, self.campaign.group_size, rows.fields
            )
            self.added += added.new
            self.duplicates += added.duplicates
        self.bad.extend(rows.bad)
        if last:
            await self._end_load()
        self.more.set()  # the rows may go before the observer hears of the bad ones
        if not self._first.done():
            self._first.set_result(None)
            await self._resume.wait()  # until the run has started: bad rows come after that
        elif rows.bad:
            await self._observer.results(rows.bad)


class _Pending:
    """List rows read and not yet in the ledger, as columns, and the bad rows among them."""

    def __init__(self, with_fields: bool) -> None:
        self.mailboxes = Mailboxes()
        self.fields: list[Mapping[str, str]] | None = [] if with_fields else None
        self.bad: list[RecipientResult] = []

    def __len__(self) -> int:
        return len(self.mailboxes)

    def skip(self, row: BadRow) -> None:
        self.bad.append(RecipientResult(row.text, Status.SKIPPED, None, str(row), 0))

    def take(
        self,
        rows: RowBatch,
        start: int,
        end: int,
        personalizer: Personalizer | None,
        path: Path,
    ) -> None:
        """Good rows `start` to `end` of `rows`; when personalising, those whose subject or
        headers cannot be made are bad rows instead."""
        if personalizer is None:
            self.mailboxes.extend(rows.mailboxes[start:end])
            if self.fields is not None and rows.fields is not None:  # kept for send_at_local
                self.fields.extend(rows.fields[start:end])
            return
        assert self.fields is not None
        for index in range(start, end):
            item = rows.recipient(index)
            if problem := check_row(personalizer, item):
                self.skip(BadRow(path, item.line, item.mailbox.addr, problem))
            else:
                self.mailboxes.append(item.mailbox.addr, item.mailbox.name)
                self.fields.append(item.fields)
