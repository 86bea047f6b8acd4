"""Run a campaign: load its files without blocking, build the message once, record every
recipient in the ledger, then send what is due through the transport, retrying temporary
failures, and report a result for each recipient as it comes.

Re-running the same campaign resumes from its journal: accepted and refused recipients are never
sent again; pending and deferred ones are; ``unknown`` ones only when asked. Suppressed
recipients are never sent; a run's permanent address failures join the shared suppression
store as it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..attachments import Attachment, load_attachments
from ..config import Campaign, DkimSettings, RelaySettings, Security
from ..html_body import MARKDOWN, inline_images, render_markdown
from ..journal.files import journal_path
from ..journal.sqlite import Journal
from ..journal.suppressions import Entry, campaign_store, campaign_suppression
from ..ledger import ConnectionBank, JournalState, Ledger
from ..message import UNRECORDED_RUN, MessageTemplate, load_body
from ..observer import Observer
from ..results import CampaignReport, RecipientResult, Status
from ..run_choice import LEFT
from ..smtp.oauth import TokenSource
from ..smtp.pool import SessionPool
from ..smtp.refusals import address_gone
from ..smtp.session import Session, build_tls_context, helo_name
from ..suppression import Reason, Suppression
from ..transport import Transport
from .dispatcher import Dispatcher
from .loader import FIRST_BATCH, LOAD_BATCH, Loader
from .policy import Retry
from .relays import GIVEN, Relay, Relays
from .scheduler import wait_first

if TYPE_CHECKING:  # jinja2 is imported only by campaigns that personalise (start-up time)
    from ..personalize import Personalizer

__all__ = [
    "RunOptions",
    "personal_headers",
    "prepare_message",
    "prepare_personalizer",
    "run_campaign",
    "smtp_transport",
]

# Where Jinja's default syntax begins a tag (personalize.is_template, without importing jinja2).
_TAG = re.compile(r"\{[{%#]")


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
    # Add the journal's permanent address failures to the shared store at the end (not in a
    # dry run); the run began at this time (its first send, for a resumed run; 0: now): an
    # entry removed by hand since then is not added back.
    store_bounces: bool = True
    began: float = 0.0
    # The run's id in the campaign's catalog: the first part of each message's DSN envelope id.
    run_id: str | None = None


def personal_headers(campaign: Campaign) -> tuple[tuple[str, str], ...]:
    """The extra headers made for each recipient: with `personalize`, those whose value holds
    a template tag (the rest are the same in every message, built once with it)."""
    if not campaign.personalize:
        return ()
    return tuple(header for header in campaign.headers if _TAG.search(header[1]))


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
        headers=[h for h in campaign.headers if h not in personal_headers(campaign)],
        list_unsubscribe=campaign.list_unsubscribe,
        html=html,
        images=images,
        dkim=campaign.dkim.signer if isinstance(campaign.dkim, DkimSettings) else None,
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
        html = render_markdown(source, campaign.subject, templates=campaign.personalize)
    html, images = await inline_images(html, campaign.message_file.parent)
    if campaign.text_file is not None:
        text = await load_body(campaign.text_file)
    else:
        from ..html_text import html_to_text  # html.parser: only for HTML campaigns

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
        headers=personal_headers(campaign),
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

    tokens = TokenSource.of(server)
    local_hostname = await helo_name(server, options.local_hostname)

    def new_session() -> Session:
        return Session(
            server,
            tls_context=tls_context,
            local_hostname=local_hostname,
            tokens=tokens,
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
    suppression: Suppression | None = None,
) -> CampaignReport:
    """Send (or resume) the campaign and return its report.

    Temporary failures are retried within the run (`retry_attempts`, `retry_delay`,
    `retry_max_age`); what is still deferred stays in the journal for the next run. A server
    that refuses TLS or the login, or cannot be reached when the run starts, stops the run:
    transactions in flight finish and `report.fatal` holds the error. `template` and
    `personalizer` are made from the campaign when not given; `ledger` is the campaign's
    journal and `transport` its SMTP server unless given (a dry run gives both).
    `suppression` is what is never sent to: the campaign's file and shared store unless given.

    :raises InputError: the message file, an attachment, the recipient list or the
        suppression file cannot be read.
    :raises JournalError: the journal is locked by another run, or cannot be written; the
        suppression store cannot be read or written.
    """
    observer = observer or Observer()
    options = options or RunOptions()
    began = time.time()
    if suppression is None:
        suppression = await campaign_suppression(campaign)
    async with contextlib.AsyncExitStack() as stack:
        if template is None:  # made here, so closed here (its temporary files)
            template = stack.enter_context(await prepare_message(campaign))
        if personalizer is None:
            personalizer = await prepare_personalizer(campaign)
        report = CampaignReport(started=began)
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
            if isinstance(ledger, ConnectionBank) and _connection_limits(campaign):
                # After the requeues (a finished run they reopen has work for connections),
                # and with the loader reading on: the workers holding every connection may be
                # waiting for its rows, and would never free one.
                campaign = await _share_connections(campaign, ledger, ledger, options.stop)
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
                    suppression=suppression,
                )
            await loader.finish()
        finally:
            await loader.cancel()
        report.bad_rows, report.duplicates = loader.bad, loader.duplicates
        report.list_read_to = loader.read_to
        bounces = await _fill_report(ledger, report, observer, campaign.id)
    if options.store_bounces and bounces:
        await campaign_store(campaign).add(bounces, unless_removed_after=options.began or began)
    report.ended = time.time()
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
    suppression: Suppression | None,
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
        suppression=suppression,
        run_id=options.run_id or UNRECORDED_RUN,
    )
    await dispatcher.run()


CONNECTION_POLL = 2.0  # seconds between asks while other workers hold every connection


def _connection_limits(campaign: Campaign) -> dict[str, tuple[int, int]]:
    """The connection limits a ledger shared by workers holds for all of them, by key: the
    campaign's `max_connections` (""), or with `servers:` each relay's (``@name``); each
    with how many this worker would open (`connections`) and the limit."""
    if campaign.max_connections is not None:
        return {"": (campaign.connections, campaign.max_connections)}
    return {
        f"@{relay.name}": (relay.connections, relay.max_connections)
        for relay in campaign.relays
        if relay.max_connections is not None
    }


async def _share_connections(
    campaign: Campaign, bank: ConnectionBank, ledger: Ledger, stop: asyncio.Event
) -> Campaign:
    """The campaign with this worker's share of each connection limit, held in a ledger
    shared by workers: waits while others hold all of one of them (until the run stops, or
    nothing is left to send, when no connection will be opened anyway)."""
    limits = _connection_limits(campaign)
    while True:
        granted = await bank.reserve_connections(limits)
        if all(granted.values()):
            return _with_connections(campaign, granted)
        left = await ledger.counts()
        done = not sum(left[state] for state in LEFT) and not await ledger.loading()
        if stop.is_set() or done:
            return _with_connections(campaign, dict.fromkeys(limits, 1))
        await wait_first((stop,), CONNECTION_POLL)


def _with_connections(campaign: Campaign, granted: dict[str, int]) -> Campaign:
    """The campaign with the connections granted: `max_connections` ("") is the campaign's
    and its one relay's; ``@name`` a relay's."""
    if "" in granted:
        count = granted[""]
        relays = campaign.relays
        if len(relays) == 1:
            relays = (dataclasses.replace(relays[0], max_connections=count),)
        return dataclasses.replace(campaign, max_connections=count, relays=relays)
    relays = tuple(
        dataclasses.replace(
            relay, max_connections=granted.get(f"@{relay.name}", relay.max_connections)
        )
        for relay in campaign.relays
    )
    return dataclasses.replace(campaign, relays=relays)


async def _fill_report(
    ledger: Ledger, report: CampaignReport, observer: Observer, campaign_id: str
) -> list[Entry]:
    """The campaign's state from the journal: this run and every run before it, read once
    for the report and the observer. Returns the permanent address failures among them,
    as entries of the shared suppression store (read from the journal, not gathered as they
    come: a run that was killed has its refusals added by the next one)."""
    report.add(report.bad_rows)
    if report.bad_rows:
        await observer.final(report.bad_rows)
    bounces: list[Entry] = []
    after = 0
    while page := await ledger.results(after):
        after = page.last_id
        # Nothing to explain: the page goes on as rows (a million at the end of a long list),
        # made objects only where the report keeps them.
        explained = page if report.fatal is None else [_explain(r, report) for r in page]
        report.add(explained)
        bounces.extend(_bounces(page.not_accepted(), campaign_id))
        await observer.final(explained)
    return bounces


def _bounces(results: Iterable[RecipientResult], campaign_id: str) -> Iterable[Entry]:
    """The refused recipients whose refusal says their address does not exist."""
    for result in results:
        if result.status is Status.REFUSED:
            code = address_gone(result.code, result.message)
            if code is not None:
                yield Entry(
                    result.recipient.lower(), Reason.BOUNCE, code, result.message, campaign_id
                )


def _explain(result: RecipientResult, report: CampaignReport) -> RecipientResult:
    """A recipient this run never got to, when the run stopped on a fatal error: say why (the
    status already says "not attempted")."""
    if result.status is Status.NOT_ATTEMPTED:
        return dataclasses.replace(result, message=str(report.fatal))
    return result
