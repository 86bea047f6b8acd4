"""The dispatcher: takes due work from the scheduler and sends it through the transport, one
worker per connection, pipelining the next message where it can, and stores what the run's
policy decides of every result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Campaign
from ..errors import AuthError, ConnectError, DeliveryError, RefusedError, TLSRequiredError
from ..ledger import Ledger, Pacer, WorkItem
from ..message import UNRECORDED_RUN, MessageTemplate, envelope_id
from ..observer import Observer
from ..results import CampaignReport, RecipientResult, Status
from ..schedule import local_due
from ..smtp.refusals import is_throttling
from ..suppression import Suppression
from ..transport import Connection, Envelope, Transaction
from .limits import DailyQuota, MessageLimit, RateLimiter, SharedRateLimiter
from .policy import MAX_RETRY_DELAY, Retry, decide, later, stops_the_run, suppressed, unsent
from .relays import Relay, Relays
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
    quota or the message limit is reached, when no relay is left: none can be reached at
    all, or every one refused TLS, the login, the sender or the session for good
    (`report.fatal`, the last one's error), or when the ledger fails. With several relays, what
    would stop a one-relay run takes that relay out of rotation instead (docs/failures.md).
    """

    def __init__(
        self,
        *,
        campaign: Campaign,
        template: MessageTemplate,
        personalizer: Personalizer | None,
        ledger: Ledger,
        relays: Relays,
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
        self.relays = relays
        self.workers = workers
        self.observer = observer
        self.report = report
        self.stop = stop
        self.run_id = run_id  # the first part of every message's DSN envelope id
        self.retry = Retry(campaign)
        # The campaign's own rate over every relay: with one relay, its `rate` key; a ledger
        # shared by workers paces them all together.
        self.limiter: RateLimiter | SharedRateLimiter | None = None
        if campaign.rate:
            self.limiter = (
                SharedRateLimiter(campaign.rate, ledger)
                if isinstance(ledger, Pacer)
                else RateLimiter(campaign.rate)
            )
        self.quota = DailyQuota(campaign.daily_quota, ledger, elsewhere=quota_used)
        self.limit = MessageLimit(limit)
        self.suppression = suppression or Suppression()
        # Claim well ahead: a worker pipelines the next item only if one is at hand.
        split = relays.split if relays.routed else None
        self.scheduler = Scheduler(
            ledger,
            max(8 * workers, 64),
            stop,
            loader,
            self._screen if self.suppression else None,
            split,
        )
        self.connected = False  # a connection has worked in this run
        self.connecting = 0  # workers opening a connection now
        self.open = 0  # workers holding an open connection
        self.ended = asyncio.Event()  # a worker found no more work
        self.started = datetime.now(UTC)  # send_at_local: each recipient's day begins here
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
        for relay in self.relays.relays:
            await relay.quota.load()
            await self._tell(relay)
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
        while item is not None:
            if admitted and self.stop.is_set():  # admitted before the stop, not yet sent
                await self._give_back(item)
                break
            if not admitted and self.limiter is not None:
                await self._turn()
            if not admitted and self._later(item):
                item = await self.scheduler.next()  # not its local time yet: waits for it
                continue
            if not admitted and not await self._admit(item):
                await self._give_back(item, admitted=False)
                break
            admitted = True
            relay = await self.relays.acquire(item)
            if relay is None:  # stopped, or no relay is left (the stop is set)
                await self._give_back(item)
                break
            try:
                pending = await self._through(relay, item)
            finally:
                self.relays.release(relay)
            if pending is _AGAIN:  # not sent: the same item, through a relay still left
                continue
            item, admitted = (pending, True) if pending else (await self.scheduler.next(), False)

    async def _turn(self) -> None:
        """Wait for the rate's next slot, unless the run stops first (the slot then goes
        unused: with `--limit N` and a slow rate, the run ends after its Nth message instead
        of when each worker's reserved slot comes). No wait once the limit is used up: the
        admission that follows refuses the item and stops the run."""
        assert self.limiter is not None
        if self.limit.used_up or self.stop.is_set():
            return
        slot = asyncio.ensure_future(self.limiter.wait())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((slot, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            slot.cancel()
            stopped.cancel()
        if slot.done() and not slot.cancelled():
            slot.result()  # a shared rate's reservation may fail: the ledger's error

    async def _through(self, relay: Relay, item: WorkItem) -> WorkItem | None:
        """Send `item` (and what is pipelined after it) through `relay`. Returns an item
        admitted and not sent, `_AGAIN` when `item` itself was not tried (its relay could
        not take it), or None."""
        if not await relay.quota.take(len(item.recipients)):
            self._spent(relay)
            return _AGAIN
        if relay.shared_rate is not None:
            await relay.shared_rate.wait()
        epoch = await relay.throttle.wait()
        try:
            return await self._send_chain(item, relay, epoch)
        except (AuthError, TLSRequiredError) as err:
            relay.quota.give_back(len(item.recipients))
            self._lost(relay, err)
        except ConnectError as err:
            relay.quota.give_back(len(item.recipients))
            await self._connect_failed(relay, err)
        return _AGAIN

    def _fatal(self, err: DeliveryError) -> None:
        self.report.fatal = self.report.fatal or err
        self.stop.set()

    def _lost(self, relay: Relay, err: DeliveryError) -> None:
        """What would stop a one-relay run: `relay` out of rotation for a back-off while
        another relay is left; else the run stops with `err`, as with one relay."""
        if self.relays.left(relay):
            self.relays.take_out(relay, self.relays.back_off(relay, self.retry.delay), gone=err)
        else:
            self._fatal(err)

    def _spent(self, relay: Relay) -> None:
        """`relay`'s own daily quota is reached: out until tomorrow; the run stops at the
        quota only when no relay with some left remains."""
        relay.spent = True
        tomorrow = datetime.now().astimezone().replace(hour=0, minute=0, second=0) + _DAY
        self.relays.take_out(relay, time.monotonic() + (tomorrow.timestamp() - time.time()))
        if not self.relays.left(relay):
            self.report.quota_reached = True
            self.stop.set()

    async def _give_back(self, item: WorkItem, *, admitted: bool = True) -> None:
        """An item taken and not sent: back to pending, untried, and uncounted."""
        self._uncount(item, admitted=admitted)
        await self.ledger.release(item)

    def _uncount(
        self, item: WorkItem, *, admitted: bool = True, relay: Relay | None = None
    ) -> None:
        """The item is done with, not sent: its message and recipients no longer count."""
        self.scheduler.done()
        if admitted:
            self.limit.started -= 1
            self.quota.give_back(len(item.recipients))
        if relay is not None:
            relay.quota.give_back(len(item.recipients))

    async def _connect_failed(self, relay: Relay, err: ConnectError) -> None:
        """A connection to `relay` could not be opened. While others to it are open or
        opening, it takes one connection fewer at once (a relay limiting connections resets
        the surplus ones). Alone, the relay is out of rotation for a while (its work goes to
        the others; with one relay, every worker waits), `retry_delay` doubling with each
        failure in a row; what would stop a one-relay run (nothing has worked and it did not
        say it is busy, `retry_attempts` failures in a row, or a wait past `retry_max_age`)
        takes it out until no relay is left."""
        relay.connect_failures += 1
        if relay.connecting or relay.open:
            relay.throttle.refused_connection()
            await self._tell(relay)
            return
        busy = err.code is not None and 400 <= err.code < 500  # a 4xx greeting
        failures = relay.connect_failures
        delay = min(self.retry.delay * 2 ** (failures - 1), MAX_RETRY_DELAY)
        if (
            (stops_the_run(err, connected=relay.connected) and not busy)
            or failures >= self.retry.attempts
            or time.monotonic() + delay > self.retry.deadline
        ):
            self._lost(relay, err)
            return
        self.relays.take_out(relay, time.monotonic() + delay)

    async def _refused(
        self, item: WorkItem, refusal: RefusedError, relay: Relay, *, echo: bool = False
    ) -> None:
        """The server refused the sender or the session: the recipients go back to pending,
        untried (also past DATA: the server answered the final "." with the refusal, so the
        message was not taken). A permanent refusal takes the relay out (the run stops when
        it was the last); temporary ones may pause it (`Pause`): out of rotation a while.
        An `echo` (a throttling reply to a transaction begun before the relay's rate was
        last cut: the overshoot already answered) is not counted."""
        self._uncount(item, relay=relay)
        self.ledger.record(unsent(item, f"not sent: {refusal}"))
        if not refusal.temporary:
            self._lost(relay, refusal)
            return
        if echo:
            return
        wait = relay.pause.hit()
        if wait is None:  # it went on for longer than retry_max_age
            self._lost(relay, refusal)
        elif wait:
            self.relays.take_out(relay, relay.pause.until)

    async def _tell(self, relay: Relay) -> None:
        throttle = relay.throttle
        await self.observer.relay(relay.name, throttle.rate, throttle.connections)

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
        # Without a daily quota nothing is counted: no coroutine per message to say so.
        if self.quota.limit and not await self.quota.take(len(item.recipients)):
            self.limit.started -= 1
            self.report.quota_reached = True
            self.stop.set()
            return False
        return True

    async def _follow_up(self, connection: Connection, relay: Relay) -> WorkItem | None:
        """The next item, to pipeline after this one's final ".", if one is ready right now
        and goes through the same relay (never with a rate: its envelope would leave before
        its turn)."""
        if (
            self.limiter is not None
            or relay.throttle.paced
            or not connection.pipelines
            or self.stop.is_set()
        ):
            return None
        item = self.scheduler.take_ready()
        if item is None:
            return None
        if not self.relays.may_follow(relay, item):
            self.scheduler.put_back(item)  # for a worker of its own relay
            return None
        if self._later(item):
            return None
        if not await self._admit(item):
            self.scheduler.put_back(item)  # released with the rest at the end
            return None
        if relay.quota.limit and not await relay.quota.take(len(item.recipients)):
            self.limit.started -= 1
            self.quota.give_back(len(item.recipients))
            self.scheduler.put_back(item)
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

    async def _finish(
        self,
        item: WorkItem,
        results: list[RecipientResult],
        relay: Relay | None = None,
        epoch: int = 0,
        accepted: bool = False,
    ) -> None:
        """Store what the policy decides of a transaction's results through `relay` (None:
        not sent), tell them, and let the relay's throttle learn from them. `accepted`: one
        of `results` is (`_accepted`)."""
        self.scheduler.done()
        self.ledger.record(decide(item, results, self.retry, relay.name if relay else ""))
        counts = self.report.this_run
        for result in results:
            counts[result.status] += 1
        await self.observer.results(results)
        if relay is None:
            return
        throttle = relay.throttle
        rate, connections = throttle.rate, throttle.connections
        if accepted:
            relay.pause.progress()
            self.relays.carried(relay)
            throttle.accepted()
        elif any(r.status is Status.DEFERRED and is_throttling(r.code, r.message) for r in results):
            throttle.throttled(epoch)
        if connections != throttle.connections or (
            rate != throttle.rate and _step(rate, throttle.rate)
        ):
            await self._tell(relay)

    async def _send_chain(self, item: WorkItem, relay: Relay, epoch: int) -> WorkItem | None:
        """Send `item` through `relay` and, on the same connection, every item pipelined
        after it. Returns an item already admitted but not sent (its connection failed
        first), if any.

        :raises ConnectError: the connection could not be opened (`item` was not tried).
        """
        transaction = await self._prepare(item)
        if transaction is None:
            relay.quota.give_back(len(item.recipients))
            return None
        async with contextlib.AsyncExitStack() as stack:
            relay.connecting += 1
            try:
                connection = await stack.enter_async_context(relay.transport.connection())
            finally:
                relay.connecting -= 1
            relay.connected = True
            relay.connect_failures = 0
            relay.open += 1
            stack.callback(_closed, relay)
            while True:
                nxt = await self._follow_up(connection, relay)
                then = await self._prepare(nxt) if nxt is not None else None
                if then is None and nxt is not None:  # skipped: its row cannot make it
                    relay.quota.give_back(len(nxt.recipients))
                    nxt = None
                sent = await connection.send(
                    transaction, commit=functools.partial(self._mark_data, item.ids), then=then
                )
                if sent.refusal is not None:
                    # The server's own text is at the end of the refusal's: "... 421 4.7.0 ...".
                    text = str(sent.refusal).rpartition(f": {sent.refusal.code} ")[2]
                    echo = False
                    if is_throttling(sent.refusal.code, text):
                        echo = not relay.throttle.throttled(epoch)
                        await self._tell(relay)
                    await self._refused(item, sent.refusal, relay, echo=echo)
                    if nxt is not None:
                        # Begun on this connection or not, unsent.
                        relay.quota.give_back(len(nxt.recipients))
                        await self._give_back(nxt)
                    return None
                accepted = _accepted(sent.results)
                self.report.messages += accepted  # the server took the message
                await self._finish(item, sent.results, relay, epoch, accepted)
                if nxt is None:
                    return None
                if not sent.then_sent:
                    # Its envelope never went out, or its connection died before its
                    # message: not tried, so it goes again afresh.
                    relay.quota.give_back(len(nxt.recipients))
                    return nxt
                assert then is not None
                item, transaction = nxt, then
        raise AssertionError("unreachable")  # pragma: no cover (the loop returns)

    async def _mark_data(self, ids: tuple[int, ...]) -> None:
        """Commit "past DATA" before the final "."; if the commit fails or the run is cancelled
        meanwhile, the "." is never written: put the rows back, so they are not unknown."""
        try:
            await self.ledger.mark_data(ids)
        except BaseException:
            self.ledger.unmark_data(ids)
            raise


# `Dispatcher._through`: the item was not tried; the worker takes it again.
_AGAIN: WorkItem = WorkItem(0, "", False, (), (), 0)
_DAY = timedelta(days=1)


def _closed(relay: Relay) -> None:
    relay.open -= 1


def _accepted(results: list[RecipientResult]) -> bool:
    """Some recipient of the transaction was accepted."""
    for result in results:  # noqa: SIM110 (a loop: no generator object per message)
        if result.status is Status.ACCEPTED:
            return True
    return False


def _step(before: float | None, after: float | None) -> bool:
    """A change of a relay's rate worth telling: paced or not, or by a whole message/s."""
    if before is None or after is None:
        return before is not after
    return int(before) != int(after)
