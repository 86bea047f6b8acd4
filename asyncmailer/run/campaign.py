"""Run a campaign: load its files without blocking, build the message once, record every
recipient in the ledger, then send what is due through the transport, retrying temporary
failures, and report a result for each recipient as it comes.

Re-running the same campaign resumes from its journal: accepted and refused recipients are never
sent again; pending and deferred ones are; ``unknown`` ones only when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..attachments import Attachment, load_attachments
from ..config import Campaign, RelaySettings, Security
from ..html_body import MARKDOWN, inline_images, render_markdown
from ..html_text import html_to_text
from ..journal.files import journal_path
from ..journal.sqlite import Journal
from ..ledger import JournalState, Ledger
from ..message import MessageTemplate, load_body
from ..observer import Observer
from ..results import CampaignReport, RecipientResult
from ..smtp.pool import SessionPool
from ..smtp.session import Session, build_tls_context
from ..transport import Transport
from .dispatcher import Dispatcher
from .loader import FIRST_BATCH, LOAD_BATCH, Loader
from .policy import Retry
from .relays import GIVEN, Relay, Relays

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from ..personalize import Personalizer

__all__ = [
    "RunOptions",
    "prepare_message",
    "prepare_personalizer",
    "run_campaign",
    "smtp_transport",
]


@dataclass(slots=True)
class RunOptions:
    """How this run treats the journal, and how it is stopped."""

    resend_unknown: bool = False
    # Set it to stop taking new work; transactions in flight finish.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    local_hostname: str | None = None
    limit: int | None = None  # at most this many messages in this run
    # Send again to recipients recorded as refused (with one of these codes, when given).
    retry_refused: bool = False
    retry_codes: tuple[str, ...] = ()
    # Recipients the campaign's earlier runs tried today, against its daily_quota.
    quota_used: int = 0
    # List rows read into the ledger before sending starts, then per ledger write.
    first_batch: int = FIRST_BATCH
    load_batch: int = LOAD_BATCH


async def prepare_message(campaign: Campaign) -> MessageTemplate:
    """Read the body and attachments without blocking and build the message once.

    :raises InputError: the message file or an attachment cannot be read or is not UTF-8.
    """
    body, html, images = await load_bodies(campaign)
    attachments = await load_attachments(
        campaign.attachments_dir, follow_symlinks=campaign.follow_symlinks
    )
    # Encoding attachments is CPU work: do it once, off the event loop.
    return await asyncio.to_thread(
        MessageTemplate,
        sender=campaign.sender,
        subject=campaign.subject,
        body=body,
        attachments=attachments,
        personal=campaign.personalize,
        reply_to=campaign.reply_to,
        headers=campaign.headers,
        list_unsubscribe=campaign.list_unsubscribe,
        html=html,
        images=images,
    )


async def load_bodies(campaign: Campaign) -> tuple[str, str | None, list[Attachment]]:
    """The message's text, its HTML (None for a text message) and the HTML's images.

    :raises InputError: a file cannot be read, or an image the HTML shows is missing.
    """
    source = await load_body(campaign.message_file)
    if not campaign.html:
        return source, None, []
    html = source
    if campaign.message_file.suffix.lower() in MARKDOWN:
        html = render_markdown(source, campaign.subject)
    html, images = await inline_images(html, campaign.message_file.parent)
    if campaign.text_file is not None:
        text = await load_body(campaign.text_file)
    else:
        text = html_to_text(html)
    return text, html, images


async def prepare_personalizer(campaign: Campaign) -> Personalizer | None:
    """The subject and body templates of a `personalize` campaign, compiled (None otherwise).

    :raises InputError: the message file cannot be read, or a template does not parse.
    """
    if not campaign.personalize:
        return None
    from ..personalize import Personalizer

    text, html, _ = await load_bodies(campaign)
    return Personalizer(
        subject=campaign.subject,
        body=text,
        html=html,
        config=campaign.source,
        body_file=campaign.message_file,
    )


async def smtp_transport(relay: RelaySettings, options: RunOptions) -> SessionPool:
    """One relay's SMTP server as a transport: a pool of its `connections` sessions."""
    server = relay.server
    tls_context = (
        await asyncio.to_thread(build_tls_context, server)  # reads files
        if server.security is not Security.NONE
        else None
    )

    def new_session() -> Session:
        return Session(
            server,
            tls_context=tls_context,
            local_hostname=options.local_hostname,
            relay=relay.name,
        )

    return SessionPool(new_session, size=relay.connections)


async def _relays(
    campaign: Campaign,
    options: RunOptions,
    ledger: Ledger,
    transport: Transport | None,
    stack: contextlib.AsyncExitStack,
) -> Relays:
    """The campaign's relays, each with its transport (closed with `stack`); a `transport`
    given (a dry run) is the one relay, named ``dry run``, without limits of its own."""
    retry = Retry(campaign)
    if transport is not None:
        settings = [
            RelaySettings(name=GIVEN, server=campaign.server, concurrency=campaign.connections)
        ]
        transports = [transport]
    else:
        settings = list(campaign.relays)
        transports = []
        for relay in settings:
            pool = await smtp_transport(relay, options)
            stack.push_async_callback(pool.close)
            transports.append(pool)
    return Relays(
        [
            Relay(s, t, campaign=campaign, ledger=ledger, deadline=retry.deadline)
            for s, t in zip(settings, transports, strict=True)
        ],
        options.stop,
    )


async def run_campaign(
    campaign: Campaign,
    *,
    template: MessageTemplate | None = None,
    observer: Observer | None = None,
    options: RunOptions | None = None,
    personalizer: Personalizer | None = None,
    ledger: Ledger | None = None,
    transport: Transport | None = None,
) -> CampaignReport:
    """Send (or resume) the campaign and return its report.

    Temporary failures are retried within the run (`retry_attempts`, `retry_delay`,
    `retry_max_age`); what is still deferred stays in the journal for the next run. A server
    that refuses TLS or the login, or cannot be reached when the run starts, stops the run:
    transactions in flight finish and `report.fatal` holds the error. `template` and
    `personalizer` are made from the campaign when not given; `ledger` is the campaign's
    journal and `transport` its SMTP server unless given (a dry run gives both).

    :raises InputError: the message file, an attachment or the recipient list cannot be read.
    :raises JournalError: the journal is locked by another run, or cannot be written.
    """
    observer = observer or Observer()
    options = options or RunOptions()
    async with contextlib.AsyncExitStack() as stack:
        if template is None:  # made here, so closed here (its temporary files)
            template = stack.enter_context(await prepare_message(campaign))
        if personalizer is None:
            personalizer = await prepare_personalizer(campaign)
        report = CampaignReport()
        if ledger is None:
            path = journal_path(campaign.state_dir, campaign.id)
            report.journal = path
            ledger = await stack.enter_async_context(
                await Journal.open(
                    path, msgid_domain=campaign.sender.domain, sync=campaign.journal_sync.value
                )
            )
        loader = Loader(
            campaign,
            ledger,
            personalizer,
            options.stop,
            first_batch=options.first_batch,
            batch=options.load_batch,
        )
        await loader.start()
        try:
            await ledger.start_run(resend_unknown=options.resend_unknown)
            if options.retry_refused:
                await ledger.requeue_refused(options.retry_codes)
            counts = await ledger.counts()
            expected = counts[JournalState.PENDING] + counts[JournalState.DEFERRED]
            await observer.started(None if loader.reading else expected + len(loader.bad))
            if loader.bad:
                await observer.results(list(loader.bad))  # a copy: the list grows
            loader.go_on(observer, expected)
            async with contextlib.AsyncExitStack() as transports:
                relays = await _relays(campaign, options, ledger, transport, transports)
                if transport is not None:
                    transports.push_async_callback(transport.close)
                await _dispatch(
                    campaign,
                    template=template,
                    personalizer=personalizer,
                    ledger=ledger,
                    relays=relays,
                    observer=observer,
                    report=report,
                    loader=loader,
                    options=options,
                )
            await loader.finish()
        finally:
            await loader.cancel()
        report.bad_rows, report.duplicates = loader.bad, loader.duplicates
        report.list_read_to = loader.read_to
        await _fill_report(ledger, report, observer)
    return report


async def _dispatch(
    campaign: Campaign,
    *,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    ledger: Ledger,
    relays: Relays,
    observer: Observer,
    report: CampaignReport,
    loader: Loader,
    options: RunOptions,
) -> None:
    """Run the dispatcher over the relays."""
    dispatcher = Dispatcher(
        campaign=campaign,
        template=template,
        personalizer=personalizer,
        ledger=ledger,
        relays=relays,
        workers=sum(r.settings.connections for r in relays.relays),
        observer=observer,
        report=report,
        loader=loader,
        stop=options.stop,
        limit=options.limit,
        quota_used=options.quota_used,
    )
    await dispatcher.run()


async def _fill_report(ledger: Ledger, report: CampaignReport, observer: Observer) -> None:
    """The campaign's state from the journal: this run and every run before it, read once
    for the report and the observer."""
    report.add(report.bad_rows)
    if report.bad_rows:
        await observer.final(report.bad_rows)
    after = 0
    while page := await ledger.results(after):
        after = page.last_id
        # Nothing to explain: the page goes on as rows (a million at the end of a long list),
        # made objects only where the report keeps them.
        explained = page if report.fatal is None else [_explain(r, report) for r in page]
        report.add(explained)
        await observer.final(explained)


def _explain(result: RecipientResult, report: CampaignReport) -> RecipientResult:
    """A recipient this run never got to, when the run stopped on a fatal error: say why."""
    if result.untried:
        return dataclasses.replace(result, message=f"not attempted: {report.fatal}")
    return result
