"""The dispatcher: takes due work from the scheduler and sends it through the transport, one
worker per connection, pipelining the next message where it can, and stores what the run's
policy decides of every result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Campaign
from ..errors import AuthError, ConnectError, DeliveryError, RefusedError, TLSRequiredError
from ..ledger import Ledger, Pacer, WorkItem
from ..message import UNRECORDED_RUN, MessageTemplate, envelope_id
from ..observer import Observer
from ..results import CampaignReport, RecipientResult, Status
from ..schedule import local_due
from ..suppression import Suppression
from ..transport import Connection, Envelope, Transaction, Transport
from .limits import DailyQuota, MessageLimit, Pause, RateLimiter, SharedRateLimiter
from .policy import MAX_RETRY_DELAY, Retry, decide, later, stops_the_run, suppressed, unsent
from .scheduler import LoadState, Scheduler

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from ..personalize import Personalizer

__all__ = ["Dispatcher", "render"]


def render(
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    item: WorkItem,
    run_id: str = UNRECORDED_RUN,
) -> Transaction:
    """The item's envelope and message, as it is sent (and as `asyncmailer check` renders
    every row); `run_id` begins the DSN envelope id.

    :raises ValueError: a personalised message cannot be made from the item's row (a template
        fails on its values, or the subject would hold a line break).
    """
    if item.headers:
        to, cc = campaign.to, campaign.cc
    elif campaign.group_size == 1 and len(item.recipients) == 1:
        to, cc = item.recipients, ()  # alone in the message: named in To
    else:
        to, cc = (), ()  # list recipients never see each other
    envelope = Envelope(
        campaign.sender.addr,
        [m.addr for m in item.recipients],
        envelope_id(run_id, item.message_id),
    )
    if personalizer is None:
        parts = template.render_parts(to=to, cc=cc, message_id=item.message_id)
        return Transaction(envelope, parts)
    context = personalizer.context(item.recipients[0], item.fields[0] if item.fields else {})
    parts = template.render_parts(
        to=to,
        cc=cc,
        message_id=item.message_id,
        subject=personalizer.subject(context),
        text=personalizer.body(context),
        html=personalizer.html(context),
        headers=personalizer.headers(context),
    )
    return Transaction(envelope, parts)


class Dispatcher:
    """Runs a campaign's transactions: `await Dispatcher(...).run()`.

    Stops taking work when `stop` is set (transactions in flight finish), when the daily
    quota or the message limit is reached, when no connection can be opened at all, when the
    server refuses TLS, the login, the sender or the session for good (`report.fatal`), or
    when the ledger fails.
    """

    def __init__(
        self,
        *,
        campaign: Campaign,
        template: MessageTemplate,
        personalizer: Personalizer | None,
        ledger: Ledger,
        transport: Transport,
        workers: int,
        observer: Observer,
        report: CampaignReport,
        loader: LoadState,
        stop: asyncio.Event,
        limit: int | None = None,
        quota_used: int = 0,
        suppression: Suppression | None = None,
        run_id: str = UNRECORDED_RUN,
    ) -> None:
        self.campaign = campaign
        self.template = template
        self.personalizer = personalizer
        self.ledger = ledger
        self.transport = transport
        self.workers = workers
        self.observer = observer
        self.report = report
        self.stop = stop
        self.run_id = run_id  # the first part of every message's DSN envelope id
        self.retry = Retry(campaign)
        self.limiter: RateLimiter | SharedRateLimiter | None = None
        if campaign.rate:  # a ledger shared by workers paces them all together
            self.limiter = (
                SharedRateLimiter(campaign.rate, ledger)
                if isinstance(ledger, Pacer)
                else RateLimiter(campaign.rate)
            )
        self.quota = DailyQuota(campaign.daily_quota, ledger, elsewhere=quota_used)
        self.limit = MessageLimit(limit)
        self.suppression = suppression or Suppression()
        # Claim well ahead: a worker pipelines the next item only if one is at hand.
        self.scheduler = Scheduler(
            ledger, max(8 * workers, 64), stop, loader, self._screen if self.suppression else None
        )
        self.connected = False  # a connection has worked in this run
        self.connecting = 0  # workers opening a connection now
        self.open = 0  # workers holding an open connection
        self.ended = asyncio.Event()  # a worker found no more work
        self.started = datetime.now(UTC)  # send_at_local: each recipient's day begins here
        self.pause = Pause(
            delay=campaign.retry_delay,
            ceiling=MAX_RETRY_DELAY,
            threshold=workers,
            deadline=self.retry.deadline,
        )
        ledger.on_failure(lambda _: stop.set())

    def __repr__(self) -> str:
        return (
            f"<Dispatcher workers={self.workers} in_flight={self.scheduler.in_flight} "
            f"messages={self.limit.started}>"
        )

    async def run(self) -> None:
        """Send until nothing is due or the run stops.

        :raises JournalError: the ledger could not store a result or a claim.
        """
        await self.quota.load()
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(self.workers):
                    workers.create_task(self._worker())
        except BaseExceptionGroup as failed:
            # A bug or an interrupt in one worker stopped them all; surface the first cause.
            raise failed.exceptions[0] from None
        finally:
            await asyncio.shield(self.scheduler.release_buffered())
            self.quota.release()
        if self.scheduler.failed is not None:
            raise self.scheduler.failed
        if self.ledger.failure is not None:
            raise self.ledger.failure

    async def _worker(self) -> None:
        item: WorkItem | None = await self.scheduler.next()
        admitted = False
        failures = 0  # this worker's connections that failed in a row
        while item is not None:
            if admitted and self.stop.is_set():  # admitted before the stop, not yet sent
                await self._give_back(item)
                break
            await self.pause.wait(self.stop)
            if self.limiter is not None:
                await self.limiter.wait()
            if not admitted and self._later(item):
                item = await self.scheduler.next()  # not its local time yet: waits for it
                continue
            if not admitted and not await self._admit(item):
                await self._give_back(item, admitted=False)
                break
            try:
                pending = await self._send_chain(item)
            except (AuthError, TLSRequiredError) as err:
                await self._give_back(item)
                self._fatal(err)
                break
            except ConnectError as err:
                await self._give_back(item)
                failures += 1
                if not await self._rest(err, failures):
                    break
                item, admitted = await self.scheduler.next(), False
                continue
            failures = 0
            item, admitted = (pending, True) if pending else (await self.scheduler.next(), False)
        self.ended.set()  # workers resting after a failed connection need not wait any longer

    def _fatal(self, err: DeliveryError) -> None:
        self.report.fatal = self.report.fatal or err
        self.stop.set()

    async def _give_back(self, item: WorkItem, *, admitted: bool = True) -> None:
        """An item taken and not sent: back to pending, untried, and uncounted."""
        self._uncount(item, admitted=admitted)
        await self.ledger.release(item)

    def _uncount(self, item: WorkItem, *, admitted: bool = True) -> None:
        """The item is done with, not sent: its message and recipients no longer count."""
        self.scheduler.done()
        if admitted:
            self.limit.started -= 1
            self.quota.give_back(len(item.recipients))

    async def _rest(self, err: ConnectError, failures: int) -> bool:
        """A connection could not be opened: the pool is one smaller for a while (a server
        limiting connections closes the surplus ones), unless no connection can be made at
        all. Returns False when the run stops."""
        alone = self.connecting == 0 and self.open == 0  # nobody else has or makes one
        busy = err.code is not None and 400 <= err.code < 500  # a 4xx greeting
        if alone and (
            (stops_the_run(err, connected=self.connected) and not busy)
            or failures >= self.retry.attempts
        ):
            self._fatal(err)
            return False
        delay = min(self.retry.delay * 2 ** (failures - 1), MAX_RETRY_DELAY)
        if alone and time.time() + delay > self.retry.deadline:
            self._fatal(err)
            return False
        waiters = [
            asyncio.ensure_future(self.stop.wait()),
            asyncio.ensure_future(self.ended.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not self.stop.is_set()

    async def _refused(self, item: WorkItem, refusal: RefusedError) -> None:
        """The server refused the sender or the session: the recipients go back to pending,
        untried (also past DATA: the server answered the final "." with the refusal, so the
        message was not taken). A permanent refusal stops the run; a temporary one may pause
        it (`Pause`)."""
        self._uncount(item)
        self.ledger.record(unsent(item, f"not sent: {refusal}"))
        if not refusal.temporary:
            self._fatal(refusal)
            return
        if self.pause.hit() is None:  # it went on for longer than retry_max_age
            self._fatal(refusal)

    async def _screen(self, items: list[WorkItem]) -> list[WorkItem]:
        """Claimed work less its suppressed recipients, who are recorded as such and never
        sent (an item left with nobody goes no further). Here, as each claim comes, and not
        when the list is loaded: a resumed run's pending recipients meet the store as it is
        now. For the config's to/cc group, a suppressed address leaves the envelope only: the
        To and Cc headers are the message's, the same for everyone."""
        why = self.suppression.why
        kept: list[WorkItem] = []
        ids: list[int] = []
        told: list[RecipientResult] = []
        for item in items:
            notes = [why(mailbox.addr) for mailbox in item.recipients]
            if not any(notes):  # nearly always
                kept.append(item)
                continue
            stay = [i for i, note in enumerate(notes) if note is None]
            for row_id, mailbox, note in zip(item.ids, item.recipients, notes, strict=True):
                if note is not None:
                    ids.append(row_id)
                    told.append(RecipientResult(mailbox.addr, Status.SUPPRESSED, None, note, 0))
            if stay:
                fields = item.fields
                kept.append(
                    dataclasses.replace(
                        item,
                        ids=tuple(item.ids[i] for i in stay),
                        recipients=tuple(item.recipients[i] for i in stay),
                        fields=tuple(fields[i] for i in stay) if fields else fields,
                    )
                )
        if told:
            self.ledger.record(suppressed(ids, [r.message for r in told]))
            self.report.this_run.update(r.status for r in told)
            await self.observer.results(told)
        return kept

    def _later(self, item: WorkItem) -> bool:
        """With send_at_local, an item whose recipient's time has not come: stored back as
        pending until then (no try counted), and True."""
        clock = self.campaign.send_at_local
        if clock is None:
            return False
        fields = item.fields[0] if item.fields else {}
        column = self.campaign.timezone_column
        campaign_zone = self.campaign.timezone or ZoneInfo("UTC")
        try:
            place = ZoneInfo(fields[column]) if column and fields.get(column) else campaign_zone
        except (ValueError, OSError, ZoneInfoNotFoundError):
            place = campaign_zone  # not a zone: the campaign's
        due = local_due(clock, place, self.started)
        if due <= datetime.now(UTC):
            return False
        self.scheduler.done()
        note = f"waits until {due.astimezone(place):%Y-%m-%d %H:%M:%S %Z} (send_at_local)"
        self.ledger.record(later(item, note, due.timestamp()))
        return True

    async def _admit(self, item: WorkItem) -> bool:
        """May this item go now? Counts it against the quota and the message limit."""
        if self.stop.is_set():  # stopped while it waited for its turn (the rate)
            return False
        if not self.limit.take():
            self.report.limit_reached = True
            self.stop.set()
            return False
        if not await self.quota.take(len(item.recipients)):
            self.limit.started -= 1
            self.report.quota_reached = True
            self.stop.set()
            return False
        return True

    async def _follow_up(self, connection: Connection) -> WorkItem | None:
        """The next item, to pipeline after this one's final ".", if one is ready right now
        (never with a rate limit: its envelope would leave before its turn)."""
        if self.limiter is not None or not connection.pipelines or self.stop.is_set():
            return None
        item = self.scheduler.take_ready()
        if item is not None and self._later(item):
            return None
        if item is not None and not await self._admit(item):
            self.scheduler.put_back(item)  # released with the rest at the end
            return None
        return item

    def _render(self, item: WorkItem) -> Transaction:
        return render(self.campaign, self.template, self.personalizer, item, self.run_id)

    async def _prepare(self, item: WorkItem) -> Transaction | None:
        """The item's transaction, or None: it cannot be made, and is skipped."""
        try:
            if self.template.renders_slowly:  # a spooled attachment hashed per message
                return await asyncio.to_thread(self._render, item)
            return self._render(item)
        except ValueError as err:
            note = f"not sent: {err}"
            await self._finish(
                item,
                [RecipientResult(m.addr, Status.SKIPPED, None, note, 0) for m in item.recipients],
            )
            return None

    async def _finish(self, item: WorkItem, results: list[RecipientResult]) -> None:
        """Store what the policy decides of a transaction's results, and tell them."""
        if self.pause.hits and any(r.status is Status.ACCEPTED for r in results):
            self.pause.progress()
        self.scheduler.done()
        self.ledger.record(decide(item, results, self.retry))
        self.report.this_run.update(r.status for r in results)
        await self.observer.results(results)

    async def _send_chain(self, item: WorkItem) -> WorkItem | None:
        """Send `item` and, on the same connection, every item pipelined after it. Returns
        an item already admitted but not sent (its connection failed first), if any.

        :raises ConnectError: the connection could not be opened (`item` was not tried).
        """
        transaction = await self._prepare(item)
        if transaction is None:
            return None
        async with contextlib.AsyncExitStack() as stack:
            self.connecting += 1
            try:
                connection = await stack.enter_async_context(self.transport.connection())
            finally:
                self.connecting -= 1
            self.connected = True
            self.open += 1
            stack.callback(self._closed)
            while True:
                nxt = await self._follow_up(connection)
                then = await self._prepare(nxt) if nxt is not None else None
                if then is None:
                    nxt = None
                sent = await connection.send(
                    transaction, commit=functools.partial(self._mark_data, item.ids), then=then
                )
                if sent.refusal is not None:
                    await self._refused(item, sent.refusal)
                    if nxt is not None:
                        await self._give_back(nxt)  # begun on this connection or not, unsent
                    return None
                if any(r.status is Status.ACCEPTED for r in sent.results):
                    self.report.messages += 1  # the server took the message
                await self._finish(item, sent.results)
                if nxt is None:
                    return None
                if not sent.then_sent:
                    # Its envelope never went out, or its connection died before its
                    # message: not tried, so it goes again afresh.
                    return nxt
                assert then is not None
                item, transaction = nxt, then
        raise AssertionError("unreachable")  # pragma: no cover (the loop returns)

    def _closed(self) -> None:
        self.open -= 1

    async def _mark_data(self, ids: tuple[int, ...]) -> None:
        """Commit "past DATA" before the final "."; if the commit fails or the run is cancelled
        meanwhile, the "." is never written: put the rows back, so they are not unknown."""
        try:
            await self.ledger.mark_data(ids)
        except BaseException:
            self.ledger.unmark_data(ids)
            raise
