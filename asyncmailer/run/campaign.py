"""Run a campaign: load its files without blocking, build the message once, record every
recipient in the journal, then send what is due through the session pool, retrying temporary
failures, and report a result for each recipient as it comes.

Re-running the same campaign resumes from its journal: accepted and refused recipients are never
sent again; pending and deferred ones are; ``unknown`` ones only when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..addresses import Mailbox
from ..config import Campaign, Security
from ..errors import AuthError, ConnectError, JournalError, TLSRequiredError
from ..journal.sqlite import Journal, WorkItem, journal_path
from ..message import MessageTemplate, load_attachments, load_body
from ..recipient_list import BadRow, Recipient, RecipientFile
from ..results import NOT_ATTEMPTED, CampaignReport, RecipientResult, Status
from ..smtp.pool import SessionPool
from ..smtp.session import Session, build_tls_context, message_size
from .limits import RateLimiter

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from ..personalize import Personalizer

__all__ = [
    "MAX_RETRY_DELAY",
    "Observer",
    "RunOptions",
    "prepare_message",
    "prepare_personalizer",
    "run_campaign",
]

MAX_RETRY_DELAY = 300.0
_LOAD_BATCH = 5000  # list rows per journal write
# Sending starts once this many rows are in the journal; the rest are read while it goes on.
# A list this short is read first (well under a second): at 0 ms latency the run is CPU-bound,
# and reading beside sending made a 10,000-message run ~6% slower; a 1,000,000-row list starts
# sending after ~0.5 s instead of ~40 s.
_FIRST_BATCH = 20_000


class Observer:
    """What a run tells as it goes. Subclass and override what you need."""

    async def started(self, expected: int | None) -> None:
        """Sending begins; `expected` is how many recipients this run has to try, or None
        while a long list is still being read (then `counted()` gives it)."""

    async def counted(self, expected: int) -> None:
        """The list is read: `expected` recipients in all for this run (after `started()`)."""

    async def results(self, results: Sequence[RecipientResult]) -> None:
        """Results of one transaction (or skipped recipients), as they come."""

    async def final(self, results: Sequence[RecipientResult]) -> None:
        """At the end, every recipient's standing (this run's and earlier runs'), a page at a
        time in list order, bad list rows first: what the report holds."""


@dataclass(slots=True)
class RunOptions:
    """How this run treats the journal, and how it is stopped."""

    resend_unknown: bool = False
    # Set it to stop taking new work; transactions in flight finish.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    local_hostname: str | None = None


async def prepare_message(campaign: Campaign) -> MessageTemplate:
    """Read the body and attachments without blocking and build the message once.

    :raises InputError: the message file or an attachment cannot be read or is not UTF-8.
    """
    body = await load_body(campaign.message_file)
    attachments = await load_attachments(campaign.attachments_dir)
    # Encoding attachments is CPU work: do it once, off the event loop.
    return await asyncio.to_thread(
        MessageTemplate,
        sender=campaign.sender,
        subject=campaign.subject,
        body=body,
        attachments=attachments,
        personal=campaign.personalize,
    )


async def prepare_personalizer(campaign: Campaign) -> Personalizer | None:
    """The subject and body templates of a `personalize` campaign, compiled (None otherwise).

    :raises InputError: the message file cannot be read, or a template does not parse.
    """
    if not campaign.personalize:
        return None
    from ..personalize import Personalizer

    return Personalizer(
        subject=campaign.subject,
        body=await load_body(campaign.message_file),
        config=campaign.source,
        body_file=campaign.message_file,
    )


class _Retry:
    """Exponential backoff with jitter, bounded by attempts and by time in this run."""

    def __init__(self, campaign: Campaign) -> None:
        self.attempts = campaign.retry_attempts
        self.delay = campaign.retry_delay
        self.deadline = time.time() + campaign.retry_max_age

    def at(self, attempt: int) -> float | None:
        if attempt >= self.attempts:
            return None
        delay = min(self.delay * 2 ** (attempt - 1), MAX_RETRY_DELAY)
        when = time.time() + delay * random.uniform(0.8, 1.2)
        return when if when <= self.deadline else None


class _Scheduler:
    """Hands out due work from the journal, a batch of groups at a time; waits for deferred
    recipients to come due, and for the list to be read, while anything may still change.

    The buffer is topped up ahead, once it is down to half a batch: a claim is a
    commit (milliseconds), and every connection that ran dry meanwhile would stand idle (at
    0 ms latency, one pipelined chain in eight broke on it, each waiting ~8 ms)."""

    def __init__(self, journal: Journal, batch: int, stop: asyncio.Event, loader: _Loader) -> None:
        self.journal = journal
        self.loader = loader
        self.batch = batch
        self.stop = stop
        self.buffer: deque[WorkItem] = deque()
        self.in_flight = 0
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()
        self._ahead: asyncio.Task[None] | None = None  # the claim ahead, while it runs
        self.failed: BaseException | None = None  # how a claim ahead failed
        self._full = True  # the last claim took all it asked for: there may be more

    def _pop(self) -> WorkItem:
        self.in_flight += 1
        item = self.buffer.popleft()
        if (
            len(self.buffer) < self.batch // 2
            and self._ahead is None
            and (self._full or self.loader.reading)
            and not self.stop.is_set()
        ):
            self._ahead = asyncio.ensure_future(self._claim_ahead())
        return item

    async def _claim(self, limit: int) -> list[WorkItem]:
        claimed = await self.journal.claim(limit, time.time(), loading=self.loader.reading)
        self._full = len(claimed) >= limit
        return claimed

    async def _claim_ahead(self) -> None:
        try:
            # Up to a batch in all: the buffer (memory, with long groups) stays as it was.
            self.buffer.extend(await self._claim(self.batch - len(self.buffer)))
        except Exception as err:  # the journal failed: the next next() raises it
            self.failed = err
        finally:
            self._ahead = None

    async def next(self) -> WorkItem | None:
        async with self.lock:
            while not self.stop.is_set():
                if self.failed is not None:
                    raise self.failed
                if self.buffer:
                    return self._pop()
                if self._ahead is not None:
                    await asyncio.shield(self._ahead)
                    continue
                # Cleared before the claim: a change while it runs is not missed.
                self.changed.clear()
                self.loader.more.clear()
                claimed = await self._claim(self.batch)
                if claimed:
                    self.buffer.extend(claimed)
                    continue
                if self.in_flight or self.loader.reading:
                    # A transaction in flight may defer recipients; the list may have more.
                    await self._wait(None)
                    continue
                due = await self.journal.next_due()
                if due is None:
                    return None
                await self._wait(max(due - time.time(), 0.0))
            return None

    def take_ready(self) -> WorkItem | None:
        """An item already claimed, without waiting; None if there is none at hand."""
        if self.buffer and not self.stop.is_set():
            return self._pop()
        return None

    def done(self) -> None:
        self.in_flight -= 1
        self.changed.set()

    async def _wait(self, timeout: float | None) -> None:
        waiters = [
            asyncio.ensure_future(self.changed.wait()),
            asyncio.ensure_future(self.stop.wait()),
            asyncio.ensure_future(self.loader.more.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def release_buffered(self) -> None:
        """Give back what was claimed and not handed out (a claim ahead finishes first)."""
        if self._ahead is not None:
            await self._ahead
        while self.buffer:
            await self.journal.release(self.buffer.popleft())


def _check_row(personalizer: Personalizer, item: Recipient) -> str | None:
    """Why this row cannot make its subject (None: it can). Only the subject is made here, as
    it can fail on the row's values (a line break); the body is made once, when sent."""
    try:
        personalizer.subject(personalizer.context(item.mailbox, item.fields))
    except ValueError as err:
        return str(err)
    return None


class _Loader:
    """Reads the campaign's recipients into the journal (each address once) while sending goes
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
        journal: Journal,
        personalizer: Personalizer | None,
        stop: asyncio.Event,
    ) -> None:
        self.campaign = campaign
        self.journal = journal
        self.personalizer = personalizer
        self.stop = stop
        self.bad: list[RecipientResult] = []
        self.duplicates = 0
        self.reading = True  # False once every row is in the journal
        self.read_to: int | None = None  # the run stopped before the list's end, at this line
        self.more = asyncio.Event()  # set as each batch reaches the journal, and at the end
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
        self._observer, self._counted = observer, expected - self.journal.added
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

    def _done_reading(self) -> None:
        if self.reading:
            self.reading = False  # later claims take every group: the last batch is in
            self.more.set()

    async def _read(self) -> None:
        campaign, journal, personalizer = self.campaign, self.journal, self.personalizer
        await journal.begin_load()
        if campaign.recipients:
            await journal.add_config_group(campaign.recipients)
        if campaign.recipients_file is None:
            return
        source = RecipientFile(
            campaign.recipients_file,
            column=campaign.recipients_column,
            name_column=campaign.name_column,
        )
        await source.scan()
        batch: list[Recipient] = []
        bad: list[RecipientResult] = []
        checked = personalizer is None  # the templates' names against the list's header, once
        size = _FIRST_BATCH
        async with contextlib.aclosing(aiter(source)) as items:
            async for item in items:
                if self.stop.is_set():  # Ctrl-C, the quota, a fatal error: read no more
                    self.read_to = item.line - 1
                    break
                if not checked and personalizer is not None:
                    personalizer.check_fields(source.columns, source.path)
                    checked = True
                if isinstance(item, BadRow):
                    bad.append(RecipientResult(item.text, Status.SKIPPED, None, str(item), 0))
                    continue
                if personalizer is not None and (problem := _check_row(personalizer, item)):
                    where = BadRow(source.path, item.line, item.mailbox.addr, problem)
                    bad.append(
                        RecipientResult(item.mailbox.addr, Status.SKIPPED, None, str(where), 0)
                    )
                    continue
                batch.append(item)
                if len(batch) == size:
                    await self._add(batch, bad)
                    batch, bad, size = [], [], _LOAD_BATCH
        await self._add(batch, bad, last=True)
        if self._tell and self.read_to is None:
            await self._observer.counted(self._counted + self.journal.added + len(self.bad))

    async def _add(
        self, rows: list[Recipient], bad: list[RecipientResult], *, last: bool = False
    ) -> None:
        fields = [r.fields for r in rows] if self.personalizer is not None else None
        if rows:
            self.duplicates += await self.journal.add_list(
                [r.mailbox for r in rows], self.campaign.group_size, fields
            )
        self.bad.extend(bad)
        if last:
            self._done_reading()
        self.more.set()  # the rows may go before the observer hears of the bad ones
        if not self._first.done():
            self._first.set_result(None)
            await self._resume.wait()  # until the run has started: bad rows come after that
        elif bad:
            await self._observer.results(bad)


async def run_campaign(
    campaign: Campaign,
    *,
    template: MessageTemplate | None = None,
    observer: Observer | None = None,
    options: RunOptions | None = None,
    personalizer: Personalizer | None = None,
) -> CampaignReport:
    """Send (or resume) the campaign and return its report.

    Temporary failures are retried within the run (`retry_attempts`, `retry_delay`,
    `retry_max_age`); what is still deferred stays in the journal for the next run. A server
    that refuses TLS or the login, or cannot be reached when the run starts, stops the run:
    transactions in flight finish and `report.fatal` holds the error. `template` and
    `personalizer` are made from the campaign when not given.

    :raises InputError: the message file, an attachment or the recipient list cannot be read.
    :raises JournalError: the journal is locked by another run, or cannot be written.
    """
    observer = observer or Observer()
    options = options or RunOptions()
    if template is None:
        template = await prepare_message(campaign)
    if personalizer is None:
        personalizer = await prepare_personalizer(campaign)
    server = campaign.server
    tls_context = (
        await asyncio.to_thread(build_tls_context, server)
        if server.security is not Security.NONE
        else None
    )
    report = CampaignReport()
    path = journal_path(campaign.state_dir, campaign.source)
    report.journal = path
    async with await Journal.open(
        path, msgid_domain=campaign.sender.domain, sync=campaign.journal_sync.value
    ) as journal:
        loader = _Loader(campaign, journal, personalizer, options.stop)
        await loader.start()
        try:
            await journal.start_run(resend_unknown=options.resend_unknown)
            counts = await journal.counts()
            expected = counts["pending"] + counts["deferred"]
            await observer.started(None if loader.reading else expected + len(loader.bad))
            if loader.bad:
                await observer.results(list(loader.bad))  # a copy: the list grows
            loader.go_on(observer, expected)
            await _send(
                campaign,
                template,
                personalizer,
                journal,
                tls_context,
                observer,
                options,
                report,
                loader,
            )
            await loader.finish()
        finally:
            await loader.cancel()
        report.bad_rows, report.duplicates = loader.bad, loader.duplicates
        report.list_read_to = loader.read_to
        await _fill_report(journal, report, observer)
    return report


async def _send(
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    journal: Journal,
    tls_context: ssl.SSLContext | None,
    observer: Observer,
    options: RunOptions,
    report: CampaignReport,
    loader: _Loader,
) -> None:
    server = campaign.server
    retry = _Retry(campaign)
    limiter = RateLimiter(campaign.rate) if campaign.rate else None
    size = campaign.connections
    # Claim well ahead: a worker pipelines the next item only if one is at hand.
    scheduler = _Scheduler(journal, max(8 * size, 64), options.stop, loader)
    connected = False  # a server unreachable from the start is fatal; later, it is retried

    def new_session() -> Session:
        return Session(
            server,
            tls_context=tls_context,
            local_hostname=options.local_hostname,
        )

    def headers(item: WorkItem) -> tuple[tuple[Mailbox, ...], tuple[Mailbox, ...]]:
        if item.headers:
            return campaign.to, campaign.cc
        if campaign.group_size == 1 and len(item.recipients) == 1:
            return item.recipients, ()  # alone in the message: named in To
        return (), ()  # list recipients never see each other

    failures: list[BaseException] = []

    def check_stored(stored: asyncio.Future[None]) -> None:
        """A result the journal could not store stops the run (disk full, I/O error)."""
        if not stored.cancelled() and stored.exception() is not None:
            failures.append(stored.exception())  # type: ignore[arg-type]
            options.stop.set()

    quota = _Quota(campaign.daily_quota, journal)
    await quota.load()

    def admit(item: WorkItem) -> bool:
        """Check and count the daily quota in one step, so workers cannot overshoot it."""
        if not quota.allows(len(item.recipients)):
            report.quota_reached = True
            options.stop.set()
            return False
        if (counted := quota.take(len(item.recipients))) is not None:
            counted.add_done_callback(check_stored)
        return True

    async def mark_data(ids: tuple[int, ...]) -> None:
        """Commit "past DATA" before the final "."; if the commit fails or the run is cancelled
        meanwhile, the "." is never written: put the rows back, so they are not unknown."""
        try:
            await journal.mark_data(ids)
        except BaseException:
            journal.unmark_data(ids)
            raise

    def render(item: WorkItem) -> tuple[bytes, ...]:
        """The item's message parts.

        :raises ValueError: a personalised message cannot be made from the row kept in the
            journal (the list changed since it was loaded).
        """
        to, cc = headers(item)
        if personalizer is None:
            return template.render_parts(to=to, cc=cc, message_id=item.message_id)
        context = personalizer.context(item.recipients[0], item.fields[0] if item.fields else {})
        return template.render_parts(
            to=to,
            cc=cc,
            message_id=item.message_id,
            subject=personalizer.subject(context),
            text=personalizer.body(context),
        )

    async def unrenderable(item: WorkItem, err: ValueError) -> None:
        results = [
            RecipientResult(m.addr, Status.SKIPPED, None, f"not sent: {err}", 0)
            for m in item.recipients
        ]
        finish(item, results)
        await observer.results(results)

    watched: list[asyncio.Future[None]] = []  # the last batch of results check_stored watches

    def finish(item: WorkItem, results: list[RecipientResult]) -> None:
        scheduler.done()
        stored = journal.record(item, results, retry_at=retry.at, max_attempts=retry.attempts)
        if not watched or stored is not watched[0]:  # one commit holds many transactions'
            watched[:] = [stored]
            stored.add_done_callback(check_stored)

    def follow_up(session: Session) -> WorkItem | None:
        """The next item, to pipeline after this one's final ".", if one is ready right now
        (never with a rate limit: its envelope would leave before its turn)."""
        if (
            limiter is not None
            or not session.pipelining
            or not session.usable
            or options.stop.is_set()
        ):
            return None
        item = scheduler.take_ready()
        if item is not None and not admit(item):
            scheduler.done()
            scheduler.buffer.appendleft(item)  # released with the rest at the end
            return None
        return item

    async def run(item: WorkItem, pool: SessionPool) -> WorkItem | None:
        """Send `item` and, on the same connection, every item pipelined after it. Returns
        an item already admitted but not sent (its connection failed first), if any."""
        nonlocal connected
        try:
            parts = render(item)
        except ValueError as err:
            await unrenderable(item, err)
            return None
        try:
            async with pool.session() as session:
                connected = True
                addrs = [m.addr for m in item.recipients]
                while True:
                    nxt = follow_up(session)
                    nxt_parts = None
                    if nxt is not None:
                        try:
                            nxt_parts = render(nxt)
                        except ValueError as err:
                            await unrenderable(nxt, err)
                            nxt = None
                    then = None
                    nxt_addrs: list[str] = []
                    if nxt is not None and nxt_parts is not None:
                        size = message_size(nxt_parts)
                        nxt_addrs = [m.addr for m in nxt.recipients]
                        then = (campaign.sender.addr, nxt_addrs, size)
                    results = await session.send(
                        campaign.sender.addr,
                        addrs,
                        parts,
                        before_end=functools.partial(mark_data, item.ids),
                        then=then,
                    )
                    finish(item, results)
                    await observer.results(results)
                    if nxt is None or nxt_parts is None:
                        return None
                    if not session.preloaded or not session.usable:
                        # Its envelope never went out, or its connection died before its
                        # message: not tried, so it goes again afresh.
                        return nxt
                    item, parts, addrs = nxt, nxt_parts, nxt_addrs
        except ConnectError as err:
            # Unreachable from the start: a wrong host, port or certificate; stop. A 4xx
            # greeting (busy) or a failure once we were sending: retry with backoff.
            if not connected and not (err.code and 400 <= err.code < 500):
                raise
            note = f"not delivered: {err}"
            results = [
                RecipientResult(m.addr, Status.DEFERRED, err.code, note) for m in item.recipients
            ]
            finish(item, results)
            await observer.results(results)
            return None

    async def worker(pool: SessionPool) -> None:
        item: WorkItem | None = await scheduler.next()
        admitted = False
        while item is not None:
            if not admitted and not admit(item):
                scheduler.done()
                await journal.release(item)
                return
            if limiter is not None:
                await limiter.wait()
            try:
                pending = await run(item, pool)
            except (AuthError, TLSRequiredError, ConnectError) as err:
                report.fatal = report.fatal or err
                options.stop.set()
                scheduler.done()
                await journal.release(item)
                return
            item, admitted = (pending, True) if pending else (await scheduler.next(), False)

    try:
        async with SessionPool(new_session, size=size) as pool, asyncio.TaskGroup() as workers:
            for _ in range(size):
                workers.create_task(worker(pool))
    except BaseExceptionGroup as failed:
        # A bug or an interrupt in one worker stopped them all; surface the first cause.
        raise failed.exceptions[0] from None
    finally:
        await asyncio.shield(scheduler.release_buffered())
    if scheduler.failed is not None:
        raise scheduler.failed
    if failures:
        raise JournalError(f"cannot write the journal: {failures[0]}", path=journal.path)


class _Quota:
    """`daily_quota` recipients per calendar day (local time), counted in the journal so it
    holds across runs."""

    def __init__(self, limit: int, journal: Journal) -> None:
        self.limit = limit
        self.journal = journal
        self.day = ""
        self.used = 0

    async def load(self) -> None:
        self.day = time.strftime("%Y-%m-%d")
        self.used = await self.journal.sent_on(self.day) if self.limit else 0

    def allows(self, count: int) -> bool:
        if not self.limit:
            return True
        if time.strftime("%Y-%m-%d") != self.day:  # midnight passed: a new day's quota
            self.day, self.used = time.strftime("%Y-%m-%d"), 0
        return self.used + count <= self.limit

    def take(self, count: int) -> asyncio.Future[None] | None:
        if not self.limit:
            return None
        self.used += count
        return self.journal.count_sent(self.day, count)


async def _fill_report(journal: Journal, report: CampaignReport, observer: Observer) -> None:
    """The campaign's state from the journal: this run and every run before it, read once
    for the report and the observer."""
    report.add(report.bad_rows)
    if report.bad_rows:
        await observer.final(report.bad_rows)
    after = 0
    while page := await journal.results(after):
        if report.fatal is None:  # nothing to explain: a million rows at the end of a long list
            explained = [result for _, result in page]
        else:
            explained = [_explain(result, report) for _, result in page]
        report.add(explained)
        await observer.final(explained)
        after = page[-1][0]


def _explain(result: RecipientResult, report: CampaignReport) -> RecipientResult:
    """A recipient this run never got to, when the run stopped on a fatal error: say why."""
    if result.status is Status.SKIPPED and not result.attempts:
        return dataclasses.replace(result, message=f"{NOT_ATTEMPTED}: {report.fatal}")
    return result
