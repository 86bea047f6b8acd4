"""Run a campaign: load its files without blocking, build the message once, send every group
through the session pool, and report a result for each recipient as it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from .config import Campaign, Security
from .errors import DeliveryError
from .message import MessageTemplate, load_attachments, load_body
from .pool import SessionPool
from .recipients import Mailbox, dedupe
from .results import CampaignReport, RecipientResult, Status
from .session import Session, build_tls_context

__all__ = ["Group", "ResultCallback", "prepare_message", "run_campaign"]

ResultCallback = Callable[[Sequence[RecipientResult]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Group:
    """Recipients that share one message and one SMTP transaction."""

    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()

    @property
    def envelope(self) -> list[str]:
        """Every address the transaction sends to, each once: to, cc and bcc."""
        return [m.addr for m in dedupe([*self.to, *self.cc, *self.bcc])]


def campaign_groups(campaign: Campaign) -> list[Group]:
    """The config's to/cc/bcc form one group: one message, as the original program sent it."""
    return [Group(campaign.to, campaign.cc, campaign.bcc)]


async def _aiter(groups: Iterable[Group]) -> AsyncIterator[Group]:
    for group in groups:
        yield group


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


async def run_campaign(
    campaign: Campaign,
    *,
    template: MessageTemplate | None = None,
    on_results: ResultCallback | None = None,
    groups: Iterable[Group] | None = None,
    local_hostname: str | None = None,
) -> CampaignReport:
    """Send the campaign and return every recipient's result.

    Results are also passed to `on_results` as each transaction ends. A server that cannot be
    reached or refuses TLS or the login stops the run: transactions in flight finish, every
    recipient not attempted is reported `skipped`, and `report.fatal` holds the error.

    :raises InputError: the message file or an attachment cannot be read.
    """
    if template is None:
        template = await prepare_message(campaign)
    server = campaign.server
    tls_context = (
        await asyncio.to_thread(build_tls_context, server)
        if server.security is not Security.NONE
        else None
    )

    report = CampaignReport()
    pending = _aiter(campaign_groups(campaign) if groups is None else groups)
    lock = asyncio.Lock()
    stop = asyncio.Event()

    async def deliver(results: Sequence[RecipientResult]) -> None:
        report.add(results)
        if on_results is not None:
            await on_results(results)

    async def next_group() -> Group | None:
        async with lock:
            if stop.is_set():
                return None
            return await anext(pending, None)

    def new_session() -> Session:
        return Session(server, tls_context=tls_context, local_hostname=local_hostname)

    async def worker(pool: SessionPool) -> None:
        while (group := await next_group()) is not None:
            envelope = group.envelope
            try:
                async with pool.session() as session:
                    data = template.render(to=group.to, cc=group.cc)
                    results = await session.send(campaign.sender.addr, envelope, data)
            except DeliveryError as err:
                if report.fatal is None:
                    report.fatal = err
                stop.set()
                await deliver([_skipped(r, err) for r in envelope])
                return
            await deliver(results)

    async with SessionPool(new_session, size=campaign.concurrency) as pool:
        await asyncio.gather(*(worker(pool) for _ in range(campaign.concurrency)))

    if report.fatal is not None:
        async for group in pending:
            await deliver([_skipped(r, report.fatal) for r in group.envelope])
    return report


def _skipped(recipient: str, reason: DeliveryError) -> RecipientResult:
    return RecipientResult(recipient, Status.SKIPPED, reason.code, f"not attempted: {reason}", 0)
