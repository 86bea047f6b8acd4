"""Run a campaign: load its files without blocking, build the message once, record every
recipient in the journal, then send what is due through the session pool, retrying temporary
failures, and report a result for each recipient as it comes.

Re-running the same campaign resumes from its journal: accepted and refused recipients are never
sent again; pending and deferred ones are; ``unknown`` ones only when asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Campaign, Security
from .errors import AuthError, ConnectError, JournalError, TLSRequiredError
from .journal import Journal, WorkItem, journal_path
from .message import MessageTemplate, load_attachments, load_body
from .pool import SessionPool
from .recipient_list import BadRow, Recipient, RecipientFile
from .recipients import Mailbox
from .results import NOT_ATTEMPTED, CampaignReport, RecipientResult, Status
from .session import Session, build_tls_context
from .throttle import RateLimiter

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from .personalize import Personalizer

__all__ = [
    "MAX_RETRY_DELAY",
    "Observer",
    "RunOptions",
    "prepare_message",
    "prepare_personalizer",
    "run_campaign",
]

MAX_RETRY_DELAY = 300.0
_LOAD_BATCH = 5000


class Observer:
    """What a run tells as it goes. Subclass and override what you need."""

    async def started(self, expected: int | None) -> None:
        """Sending begins; `expected` is how many recipients this run has to try."""

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
    from .personalize import Personalizer

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
    recipients to come due while anything may still change."""

    def __init__(self, journal: Journal, batch: int, stop: asyncio.Event) -> None:
        self.journal = journal
        self.batch = batch
        self.stop = stop
        self.buffer: deque[WorkItem] = deque()
        self.in_flight = 0
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()

    async def next(self) -> WorkItem | None:
        async with self.lock:
            while not self.stop.is_set():
                if self.buffer:
                    self.in_flight += 1
                    return self.buffer.popleft()
                claimed = await self.journal.claim(self.batch, time.time())
                if claimed:
                    self.buffer.extend(claimed)
                    continue
                self.changed.clear()
                if self.in_flight:
                    await self._wait(None)  # a transaction in flight may defer recipients
                    continue
                due = await self.journal.next_due()
                if due is None:
                    return None
                await self._wait(max(due - time.time(), 0.0))
            return None

    def take_ready(self) -> WorkItem | None:
        """An item already claimed, without waiting; None if there is none at hand."""
        if self.buffer and not self.stop.is_set():
            self.in_flight += 1
            return self.buffer.popleft()
        return None

    def done(self) -> None:
        self.in_flight -= 1
        self.changed.set()

    async def _wait(self, timeout: float | None) -> None:
        waiters = [
            asyncio.ensure_future(self.changed.wait()),
            asyncio.ensure_future(self.stop.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def release_buffered(self) -> None:
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


async def _load(
    campaign: Campaign,
    journal: Journal,
    report: CampaignReport,
    personalizer: Personalizer | None,
) -> None:
    """Record every recipient in the journal (each address once); report bad list rows (and,
    when personalising, rows that cannot fill the templates)."""
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
    duplicates = 0
    checked = personalizer is None  # the templates' names against the list's header, once

    async def add(rows: list[Recipient]) -> int:
        fields = [r.fields for r in rows] if personalizer is not None else None
        return await journal.add_list([r.mailbox for r in rows], campaign.group_size, fields)

    async for item in source:
        if not checked and personalizer is not None:
            personalizer.check_fields(source.columns, source.path)
            checked = True
        if isinstance(item, BadRow):
            bad.append(RecipientResult(item.text, Status.SKIPPED, None, str(item), 0))
            continue
        if personalizer is not None and (problem := _check_row(personalizer, item)):
            where = BadRow(source.path, item.line, item.mailbox.addr, problem)
            bad.append(RecipientResult(item.mailbox.addr, Status.SKIPPED, None, str(where), 0))
            continue
        batch.append(item)
        if len(batch) == _LOAD_BATCH:
            duplicates += await add(batch)
            batch = []
    if batch:
        duplicates += await add(batch)
    report.bad_rows = bad
    report.duplicates = duplicates


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
        await _load(campaign, journal, report, personalizer)
        await journal.start_run(resend_unknown=options.resend_unknown)
        counts = await journal.counts()
        await observer.started(counts["pending"] + counts["deferred"] + len(report.bad_rows))
        if report.bad_rows:
            await observer.results(report.bad_rows)
        await _send(
            campaign, template, personalizer, journal, tls_context, observer, options, report
        )
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
) -> None:
    server = campaign.server
    retry = _Retry(campaign)
    limiter = RateLimiter(campaign.rate) if campaign.rate else None
    size = campaign.connections
    # Claim well ahead: a worker pipelines the next item only if one is at hand.
    scheduler = _Scheduler(journal, max(8 * size, 64), options.stop)
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

    def finish(item: WorkItem, results: list[RecipientResult]) -> None:
        scheduler.done()
        stored = journal.record(item, results, retry_at=retry.at, max_attempts=retry.attempts)
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
                    if nxt is not None and nxt_parts is not None:
                        size = sum(map(len, nxt_parts)) + 3
                        then = (campaign.sender.addr, [m.addr for m in nxt.recipients], size)
                    results = await session.send(
                        campaign.sender.addr,
                        [m.addr for m in item.recipients],
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
                    item, parts = nxt, nxt_parts
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
        explained = [_explain(result, report) for _, result in page]
        report.add(explained)
        await observer.final(explained)
        after = page[-1][0]


def _explain(result: RecipientResult, report: CampaignReport) -> RecipientResult:
    """A recipient this run never got to, when the run stopped on a fatal error: say why."""
    if report.fatal is not None and result.status is Status.SKIPPED and not result.attempts:
        return dataclasses.replace(result, message=f"{NOT_ATTEMPTED}: {report.fatal}")
    return result
