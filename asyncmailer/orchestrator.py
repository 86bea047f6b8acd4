"""Run a campaign: load its files without blocking, build the message once, stream the
recipients into groups, send every group through the session pool, and report a result for each
recipient as it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from .config import Campaign, Security
from .errors import DeliveryError
from .message import MessageTemplate, load_attachments, load_body
from .pool import SessionPool
from .recipient_list import BadRow, FingerprintSet, RecipientFile
from .recipients import Mailbox, dedupe
from .results import CampaignReport, RecipientResult, Status
from .session import Session, build_tls_context
from .throttle import RateLimiter

__all__ = ["Group", "Observer", "prepare_message", "run_campaign"]


@dataclass(frozen=True, slots=True)
class Group:
    """Recipients that share one message and one SMTP transaction.

    `to` and `cc` are shown in the headers; `bcc` only travels in the envelope.
    """

    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()

    @property
    def envelope(self) -> list[str]:
        """Every address the transaction sends to, each once: to, cc and bcc."""
        return [m.addr for m in dedupe([*self.to, *self.cc, *self.bcc])]


class Observer:
    """What a run tells as it goes. Subclass and override what you need."""

    async def started(self, expected: int | None) -> None:
        """Sending begins; `expected` is about how many recipients there are, if known."""

    async def results(self, results: Sequence[RecipientResult]) -> None:
        """Results of one transaction (or skipped recipients), as they come."""


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
    )


class _Plan:
    """The campaign's groups, made lazily: the config's to/cc/bcc as one message (as the
    original program sent it), then the recipient list in groups of `group_size`."""

    def __init__(self, campaign: Campaign, report: CampaignReport) -> None:
        self.campaign = campaign
        self.report = report
        self.seen = FingerprintSet()
        self.list = (
            RecipientFile(
                campaign.recipients_file,
                column=campaign.recipients_column,
                name_column=campaign.name_column,
                seen=self.seen,
            )
            if campaign.recipients_file
            else None
        )
        self.skipped: list[RecipientResult] = []  # bad rows waiting to be reported

    async def expected(self) -> int:
        """Check the list file (UTF-8, no NUL) and estimate the recipient count from it.

        :raises InputError: the list cannot be read or is not UTF-8.
        """
        campaign = self.campaign
        count = len(campaign.recipients)
        if self.list is not None:
            scan = await self.list.scan()
            count += max(scan.lines - (1 if self.list.path.suffix.lower() == ".csv" else 0), 0)
        return count

    async def groups(self) -> AsyncIterator[Group]:
        campaign = self.campaign
        if campaign.to or campaign.cc or campaign.bcc:
            for mailbox in campaign.recipients:
                self.seen.add(mailbox.key)
            yield Group(campaign.to, campaign.cc, campaign.bcc)
        if self.list is None:
            return
        size = campaign.group_size
        batch: list[Mailbox] = []
        async for item in self.list:
            if isinstance(item, BadRow):
                self.skipped.append(RecipientResult(item.text, Status.SKIPPED, None, str(item), 0))
                continue
            batch.append(item.mailbox)
            if len(batch) == size:
                yield _list_group(batch)
                batch = []
        if batch:
            yield _list_group(batch)
        self.report.duplicates = self.list.duplicates


def _list_group(mailboxes: list[Mailbox]) -> Group:
    """List recipients never see each other: alone, one is named in To; together, none is."""
    if len(mailboxes) == 1:
        return Group(to=(mailboxes[0],))
    return Group(bcc=tuple(mailboxes))


async def run_campaign(
    campaign: Campaign,
    *,
    template: MessageTemplate | None = None,
    observer: Observer | None = None,
    groups: Iterable[Group] | None = None,
    local_hostname: str | None = None,
) -> CampaignReport:
    """Send the campaign and return its report.

    A server that cannot be reached or refuses TLS or the login stops the run: transactions in
    flight finish, every recipient not attempted is reported `skipped`, and `report.fatal`
    holds the error. Bad list rows are reported `skipped` with file and line.

    :raises InputError: the message file, an attachment or the recipient list cannot be read.
    """
    observer = observer or Observer()
    if template is None:
        template = await prepare_message(campaign)
    server = campaign.server
    tls_context = (
        await asyncio.to_thread(build_tls_context, server)
        if server.security is not Security.NONE
        else None
    )
    report = CampaignReport()
    plan = _Plan(campaign, report)
    if groups is None:
        expected: int | None = await plan.expected()
        pending = plan.groups()
    else:
        groups = list(groups)
        expected = sum(len(g.envelope) for g in groups)
        pending = _aiter(groups)
    await observer.started(expected)

    limiter = RateLimiter(campaign.rate) if campaign.rate else None
    lock = asyncio.Lock()
    stop = asyncio.Event()

    async def deliver(results: Sequence[RecipientResult]) -> None:
        report.add(results)
        await observer.results(results)

    async def next_group() -> Group | None:
        async with lock:
            group = None if stop.is_set() else await anext(pending, None)
        if plan.skipped:
            skipped, plan.skipped = plan.skipped, []
            await deliver(skipped)
        return group

    def new_session() -> Session:
        return Session(server, tls_context=tls_context, local_hostname=local_hostname)

    async def worker(pool: SessionPool) -> None:
        while (group := await next_group()) is not None:
            envelope = group.envelope
            try:
                if limiter is not None:
                    await limiter.wait()
                async with pool.session() as session:
                    parts = template.render_parts(to=group.to, cc=group.cc)
                    results = await session.send(campaign.sender.addr, envelope, parts)
            except DeliveryError as err:
                if report.fatal is None:
                    report.fatal = err
                stop.set()
                await deliver([_skipped(r, err) for r in envelope])
                return
            await deliver(results)

    size = campaign.connections
    try:
        async with SessionPool(new_session, size=size) as pool, asyncio.TaskGroup() as workers:
            for _ in range(size):
                workers.create_task(worker(pool))
    except BaseExceptionGroup as failed:
        # A bug or an interrupt in one worker stopped them all; surface the first cause.
        raise failed.exceptions[0] from None

    if report.fatal is not None:
        async for group in pending:
            await deliver([_skipped(r, report.fatal) for r in group.envelope])
    if plan.skipped:
        await deliver(plan.skipped)
    return report


async def _aiter(groups: Iterable[Group]) -> AsyncIterator[Group]:
    for group in groups:
        yield group


def _skipped(recipient: str, reason: DeliveryError) -> RecipientResult:
    return RecipientResult(recipient, Status.SKIPPED, reason.code, f"not attempted: {reason}", 0)
