"""`asyncmailer check`: what can be known of a campaign before it is sent, as a verdict.

Every row is rendered as the run would render it (`run.dispatcher.render`), without sending;
the rendered message is checked for the headers bulk senders need (Gmail's and Yahoo's rules of
February 2024: List-Unsubscribe with one-click, SPF, DKIM, DMARC); the From domain's records
are looked up (`dns_records`); the server is connected to (EHLO, TLS, login as configured, no
mail) for its SIZE. Each finding is an error (sending would fail, or the mail would be refused
or go to spam), a warning, or ok, with a code and one line of text.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import sqlite3
import ssl
from base64 import b64decode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from enum import StrEnum
from typing import TYPE_CHECKING

from .addresses import Mailbox
from .attachments import Part
from .config import (
    Campaign,
    DkimSettings,
    RelaySettings,
    Security,
    ServerSettings,
    is_loopback,
)
from .display import printable, shorten
from .dns_records import DnsRecords, Lookup, Outcome, tags
from .errors import DeliveryError, InputError, RefusedError
from .journal.schema import check_sqlite
from .ledger import WorkItem
from .message import MessageTemplate, message_size
from .personalize import BUILT_IN_FIELDS
from .recipient_list import BadRow, RecipientFile, RowBatch
from .results import plural
from .run.campaign import prepare_message, prepare_personalizer
from .run.dispatcher import render
from .run.loader import check_row, list_file
from .smtp.oauth import TokenSource
from .smtp.outcome import ACCEPTED_RCPT
from .smtp.session import Session, build_tls_context, helo_name
from .unsubscribe import EMAIL, TOKEN

if TYPE_CHECKING:
    from .personalize import Personalizer

__all__ = [
    "CheckOptions",
    "Code",
    "Finding",
    "Severity",
    "Verdict",
    "check_campaign",
]

ROWS_SHOWN = 20  # findings about rows shown per code; the rest are counted


class Severity(StrEnum):
    """How much a finding matters."""

    ERROR = "error"  # blocks: sending would fail, or the mail would be refused or go to spam
    WARNING = "warning"  # worth a look; sending goes on
    OK = "ok"


class Code(StrEnum):
    """What a finding is about."""

    TEMPLATES = "templates"  # the templates use a name the list does not have
    LIST = "list"  # the recipient list cannot be read
    BAD_ROW = "bad-row"  # a list row the run skips, as the loader reports it
    ROW = "row"  # a row whose message cannot be made (a template, a header)
    EMPTY_FIELD = "empty-field"  # a field the templates use is empty in a row
    RECIPIENTS = "recipients"  # how many recipients the run sends to
    SUPPRESSION = "suppression"
    UNSUBSCRIBE = "list-unsubscribe"
    ONE_CLICK = "one-click"
    ENCRYPTION = "encryption"
    CERTIFICATE = "certificate"
    DKIM = "dkim"  # who signs
    DKIM_RECORD = "dkim-record"  # the public key in DNS
    DNS = "dns"  # the lookups as a whole (left out with --no-dns)
    SPF = "spf"
    DMARC = "dmarc"
    ALIGNMENT = "dmarc-alignment"
    SERVER = "server"
    SIZE = "size"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the check found: how much it matters, about what, in one line."""

    severity: Severity
    code: Code
    text: str
    count: int = 1  # findings it stands for ("... and 480 more rows": 480)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", printable(" ".join(self.text.split("\n"))))

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Every finding, and the recipients the run would send to."""

    findings: tuple[Finding, ...]
    recipients: int

    def of(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity is severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of(Severity.ERROR)

    @property
    def warnings(self) -> list[Finding]:
        return self.of(Severity.WARNING)

    @property
    def ready(self) -> bool:
        """Nothing blocks the send."""
        return not self.errors

    def count(self, severity: Severity) -> int:
        """How many findings of `severity`, those only counted included."""
        return sum(f.count for f in self.findings if f.severity is severity)

    def codes(self, severity: Severity) -> set[Code]:
        return {f.code for f in self.findings if f.severity is severity}


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """What the check may reach, and the suppression list to count against."""

    dns: DnsRecords | None = field(default_factory=DnsRecords)  # None: no DNS checks
    connect: bool = True  # connect to the server for its SIZE (and TLS, login)
    # Addresses the run never sends to (the suppression list): counted, not rendered.
    suppressed: Callable[[Mailbox], bool] | None = None
    local_hostname: str | None = None
    rows_shown: int = ROWS_SHOWN


async def check_campaign(campaign: Campaign, options: CheckOptions | None = None) -> Verdict:
    """Check `campaign` without sending it.

    :raises InputError: the message, an attachment or a template cannot be read or parsed
        (what `send` stops on before it begins).
    """
    options = options or CheckOptions()
    findings = [*_transport_findings(campaign), *_dkim_setting(campaign)]
    with await prepare_message(campaign) as template:
        personalizer = await prepare_personalizer(campaign)
        rows = _Rows(campaign, template, personalizer, options)
        try:
            async with asyncio.TaskGroup() as group:
                rendered = group.create_task(rows.run())
                looked_up = group.create_task(_dns_findings(campaign, options.dns))
                limit = group.create_task(_server(campaign, options))
            await rendered
        finally:
            rows.seen.close()
    findings += rows.findings()
    findings += _header_findings(rows.sample, campaign)
    findings += looked_up.result()
    probe = limit.result()
    findings += probe.findings
    findings += _size_findings(rows.largest, probe)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.OK: 2}
    findings.sort(key=lambda f: order[f.severity])  # stable: each kind in the order found
    return Verdict(tuple(findings), rows.recipients)


# ---------------------------------------------------------------------------------------------
# The rows


class _Seen:
    """The addresses met so far, in a private temporary SQLite database (on disk, deleted
    when closed): memory stays flat however long the list (docs/design.md: flat memory).
    Used by one thread at a time."""

    def __init__(self) -> None:
        check_sqlite()  # RETURNING: 3.35, as the journal
        self._db = sqlite3.connect("", check_same_thread=False)  # "": a temporary file
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY) WITHOUT ROWID")
        self.count = 0

    def add(self, keys: Sequence[str]) -> set[str]:
        """Remember `keys`; returns those not met before."""
        new = {
            key
            for (key,) in self._db.execute(
                "INSERT OR IGNORE INTO seen SELECT value FROM json_each(?) RETURNING key",
                (json.dumps(keys),),
            )
        }
        self.count += len(new)
        return new

    def forget(self, key: str) -> None:
        self._db.execute("DELETE FROM seen WHERE key = ?", (key,))
        self.count -= 1

    def close(self) -> None:
        self._db.close()


class _Rows:
    """Reads the campaign's recipients as the loader does, renders each one's message as the
    dispatcher does (in a worker thread, a batch at a time), and counts them as the journal
    keeps them: each address once, the first good row of it."""

    def __init__(
        self,
        campaign: Campaign,
        template: MessageTemplate,
        personalizer: Personalizer | None,
        options: CheckOptions,
    ) -> None:
        self.campaign = campaign
        self.template = template
        self.personalizer = personalizer
        self.suppressed = options.suppressed
        self.shown = options.rows_shown
        self.message_id = template.new_message_id()
        self.seen = _Seen()
        self.duplicates = 0
        self.suppressed_count = 0
        self.unsent = 0  # addresses the journal keeps whose message cannot be made
        self.rows = 0  # good and bad, blank lines and comments left out
        self.largest = 0  # bytes of the largest message
        self.sample = b""  # the headers of one rendered message
        self.fatal: list[Finding] = []
        self._listed: dict[Code, list[str]] = {}
        self._counted: dict[Code, int] = {}
        self._used: frozenset[str] = frozenset()
        self._columns: set[str] = set()
        # A message per row (else one for the list's groups: they differ in recipients only).
        self._render_each = personalizer is not None or campaign.group_size == 1
        self._list_rendered = False

    @property
    def recipients(self) -> int:
        """Whom the run sends to: each address once, the suppressed and those whose message
        cannot be made left out."""
        return self.seen.count - self.suppressed_count - self.unsent

    def _note(self, code: Code, text: str) -> None:
        count = self._counted.get(code, 0)
        self._counted[code] = count + 1
        if count < self.shown:
            self._listed.setdefault(code, []).append(text)

    async def run(self) -> None:
        campaign = self.campaign
        if campaign.recipients:
            item = self._item(tuple(campaign.recipients), (), headers=True)
            self._measure(render(campaign, self.template, self.personalizer, item).message)
            for mailbox in campaign.recipients:
                self._add(mailbox)
        if campaign.recipients_file is None:
            return
        source = list_file(campaign, campaign.recipients_file)
        try:
            await source.scan()
            batches = source.batches(fields=self.personalizer is not None)
            async with contextlib.aclosing(batches):
                checked = False
                async for batch in batches:
                    if not checked:
                        checked = True
                        if not self._check_fields(source):
                            return
                    await asyncio.to_thread(self._batch, batch)
        except InputError as err:
            self.fatal.append(Finding(Severity.ERROR, Code.LIST, str(err)))

    def _check_fields(self, source: RecipientFile) -> bool:
        """The templates' names against the list's header, as the loader checks them."""
        if self.personalizer is None:
            return True
        try:
            self.personalizer.check_fields(source.columns, source.path)
        except InputError as err:
            self.fatal.append(Finding(Severity.ERROR, Code.TEMPLATES, str(err)))
            return False
        self._columns = set(source.columns)
        self._used = frozenset(self.personalizer.names - set(BUILT_IN_FIELDS))
        return True

    def _item(
        self,
        recipients: tuple[Mailbox, ...],
        fields: tuple[Mapping[str, str], ...],
        *,
        headers: bool,
    ) -> WorkItem:
        return WorkItem(
            group=0,
            message_id=self.message_id,
            headers=headers,
            ids=tuple(range(len(recipients))),
            recipients=recipients,
            attempts=0,
            fields=fields,
        )

    def _batch(self, batch: RowBatch) -> None:
        """One batch of rows (in a worker thread: rendering is CPU work)."""
        path = self.campaign.recipients_file
        rows = list(batch.items())
        # The batch's addresses not met before, each once: the first good row of it is kept.
        first = self.seen.add([r.mailbox.key for r in rows if not isinstance(r, BadRow)])
        skipped: set[str] = set()  # addresses the loader skipped a row of, not yet met again
        for row in rows:
            self.rows += 1
            if isinstance(row, BadRow):
                self._note(Code.BAD_ROW, str(row))
                continue
            mailbox = row.mailbox
            if mailbox.key in first:
                first.discard(mailbox.key)  # its later rows are duplicates
            elif mailbox.key in skipped:
                skipped.discard(mailbox.key)  # its row was skipped earlier in this batch
                self.seen.add([mailbox.key])
            else:
                self.duplicates += 1  # the journal keeps the first: its row is the one sent
                continue
            if self.suppressed is not None and self.suppressed(mailbox):
                self.suppressed_count += 1  # never sent: its row need not render
                continue
            if self._render_each or not self._list_rendered:
                item = self._item((mailbox,), (row.fields,) if row.fields else (), headers=False)
                try:
                    transaction = render(self.campaign, self.template, self.personalizer, item)
                except ValueError as err:
                    # The run skips such a row either way. If its subject or headers fail,
                    # the loader skips it before the journal, so a later row of the address
                    # may still be sent; if only its body fails, the journal has kept the
                    # address and the dispatcher skips it there: its later rows are duplicates.
                    self._note(Code.ROW, f"{path}:{row.line}: {mailbox.addr}: {err}")
                    if self.personalizer is not None and check_row(self.personalizer, row):
                        self.seen.forget(mailbox.key)
                        skipped.add(mailbox.key)
                    else:
                        self.unsent += 1
                    continue
                self._measure(transaction.message)
                self._list_rendered = True
            for name in sorted(self._used & self._columns):
                if not row.fields.get(name, "").strip():
                    self._note(
                        Code.EMPTY_FIELD, f"{path}:{row.line}: {mailbox.addr}: {name} is empty"
                    )

    def _add(self, mailbox: Mailbox) -> None:
        if not self.seen.add([mailbox.key]):
            self.duplicates += 1
            return
        if self.suppressed is not None and self.suppressed(mailbox):
            self.suppressed_count += 1

    def _measure(self, parts: Sequence[Part]) -> None:
        size = message_size(parts)
        self.largest = max(self.largest, size)
        if not self.sample:
            head = b""
            for part in parts:
                if not isinstance(part, bytes):
                    break
                head += part
                if b"\r\n\r\n" in head:
                    break
            self.sample = head.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"

    def findings(self) -> list[Finding]:
        found = list(self.fatal)
        for code, severity in (
            (Code.BAD_ROW, Severity.WARNING),
            (Code.ROW, Severity.WARNING),
            (Code.EMPTY_FIELD, Severity.WARNING),
        ):
            found += [Finding(severity, code, text) for text in self._listed.get(code, [])]
            hidden = self._counted.get(code, 0) - self.shown
            if hidden > 0:
                more = f"... and {plural(hidden, 'more row')} like these"
                found.append(Finding(severity, code, more, hidden))
        found += self._count_findings()
        return found

    def _count_findings(self) -> list[Finding]:
        campaign = self.campaign
        if self.fatal:
            return []
        skipped = self._counted.get(Code.BAD_ROW, 0) + self._counted.get(Code.ROW, 0)
        parts = [f"{plural(self.recipients, 'recipient')} to send to"]
        if campaign.recipients_file is not None:
            parts.append(f"from {plural(self.rows, 'list row')}")
        extra = [f"{plural(self.duplicates, 'duplicate')} left out"]
        if self.suppressed is not None:
            extra.append(f"{self.suppressed_count:,} suppressed")
        if skipped:
            extra.append(f"{plural(skipped, 'row')} skipped")
        text = " ".join(parts) + " (" + ", ".join(extra) + ")"
        found = [
            Finding(Severity.ERROR if not self.recipients else Severity.OK, Code.RECIPIENTS, text)
        ]
        if self.suppressed is None and campaign.suppression_file is not None:
            found.append(
                Finding(
                    Severity.WARNING,
                    Code.SUPPRESSION,
                    f"suppression_file {campaign.suppression_file} was not applied to this count",
                )
            )
        return found


# ---------------------------------------------------------------------------------------------
# The campaign's settings and the rendered message


def _servers(campaign: Campaign) -> list[tuple[str, ServerSettings]]:
    """Every relay's server (`servers:`), or the one server, each with what its findings
    begin with: its name when it has one of its own (two relays may share a host)."""
    relays = campaign.relays or (
        RelaySettings(name=campaign.server.address, server=campaign.server),
    )
    return [
        ("" if relay.name == relay.server.address else f"{relay.name}: ", relay.server)
        for relay in relays
    ]


def _transport_findings(campaign: Campaign) -> list[Finding]:
    return [
        Finding(f.severity, f.code, name + f.text)
        for name, server in _servers(campaign)
        for f in _server_transport(server)
    ]


def _server_transport(server: ServerSettings) -> list[Finding]:
    local = is_loopback(server.host)
    found = []
    if server.security is Security.NONE:
        if local:
            text = (
                f"no TLS to {server.address}: only for a relay on this machine, which must use "
                "TLS onward"
            )
            found.append(Finding(Severity.WARNING, Code.ENCRYPTION, text))
        else:
            text = (
                f"no TLS to {server.address}: the mail and the password cross the network in clear"
            )
            found.append(Finding(Severity.ERROR, Code.ENCRYPTION, text))
        return found
    found.append(
        Finding(Severity.OK, Code.ENCRYPTION, f"{server.security.value} to {server.address}")
    )
    if server.tls_verify:
        trusted = f"tls_ca_file {server.tls_ca_file}" if server.tls_ca_file else "the system's CAs"
        text = f"{server.address}: the certificate must verify against {trusted}"
        found.append(Finding(Severity.OK, Code.CERTIFICATE, text))
    else:
        text = (
            f"tls_verify is false: {server.address}'s certificate is not checked, so whoever "
            "is in between can read the mail and the password"
        )
        found.append(Finding(Severity.WARNING if local else Severity.ERROR, Code.CERTIFICATE, text))
    return found


_NOT_BULK = " (a message to the config's own recipients need not; a list campaign must)"
# More config recipients than this (to, cc and bcc together) are a mailing, not a message to a
# few people: held to the bulk rules as a list is.
BULK_CONFIG_RECIPIENTS = 100


def _bulk_rule(campaign: Campaign, code: Code, text: str) -> Finding:
    """A bulk-sender requirement not met: an error for a list campaign, or a config's to/cc/bcc
    of more than `BULK_CONFIG_RECIPIENTS`, which are bulk mail; a warning for a message to a
    few people (the original program's report), which the rules only advise."""
    if campaign.recipients_file is not None or len(campaign.recipients) > BULK_CONFIG_RECIPIENTS:
        return Finding(Severity.ERROR, code, text)
    return Finding(Severity.WARNING, code, text + _NOT_BULK)


def _dkim_setting(campaign: Campaign) -> list[Finding]:
    dkim = campaign.dkim
    if isinstance(dkim, DkimSettings):
        text = f"signed here: d={dkim.domain}, s={dkim.selector}, key {dkim.key_file}"
        return [Finding(Severity.OK, Code.DKIM, text)]
    if dkim is not None:
        text = "declared done by the relay (dkim: relay); its signature is not checked here"
        return [Finding(Severity.OK, Code.DKIM, text)]
    text = (
        "no DKIM signature: bulk senders must sign; sign here (dkim: {domain, selector, "
        "key_file}), or write dkim: relay if the relay signs"
    )
    return [_bulk_rule(campaign, Code.DKIM, text)]


def _header_findings(sample: bytes, campaign: Campaign) -> list[Finding]:
    """List-Unsubscribe and its one-click companion (RFC 8058), read from a rendered
    message; shown as the config writes them (a rendered link holds a recipient's token)."""
    if not sample:
        return []
    headers = BytesHeaderParser(policy=default_policy).parsebytes(sample)
    found = []
    unsubscribe = headers.get("List-Unsubscribe")
    links = " ".join(str(unsubscribe).split()) if unsubscribe is not None else ""
    if unsubscribe is None:
        text = (
            "no List-Unsubscribe header: Gmail and Yahoo require one of bulk senders "
            "(list_unsubscribe: {url: https://...})"
        )
        found.append(_bulk_rule(campaign, Code.UNSUBSCRIBE, text))
    else:
        config = campaign.list_unsubscribe
        shown = [f"<{config.url}>"] if config is not None and config.url else []
        if config is not None and config.mailto:
            shown.append(f"<mailto:{config.mailto}>")
        text = shorten(" ".join(shown) or links, 160)
        found.append(Finding(Severity.OK, Code.UNSUBSCRIBE, text))
    post = headers.get("List-Unsubscribe-Post")
    if (
        post is not None
        and str(post).strip() == "List-Unsubscribe=One-Click"
        and "<https:" in links
    ):
        text = "List-Unsubscribe-Post: List-Unsubscribe=One-Click with an https link"
        found.append(Finding(Severity.OK, Code.ONE_CLICK, text))
        config = campaign.list_unsubscribe
        url = config.url if config is not None else None
        if url is not None and TOKEN not in url and EMAIL not in url:
            # RFC 8058 3.1: the POST carries nothing but the URL, so the URL must say who.
            text = (
                "the one-click link is the same for every recipient, so a click cannot say who "
                "asked to leave: put {{ unsubscribe_token }} in list_unsubscribe.url"
            )
            found.append(Finding(Severity.WARNING, Code.ONE_CLICK, text))
    else:
        text = (
            "no one-click unsubscribe (RFC 8058: List-Unsubscribe-Post and an https link; a "
            "mailto alone does not meet the 2024 rules): add list_unsubscribe.url"
        )
        found.append(_bulk_rule(campaign, Code.ONE_CLICK, text))
    return found


# ---------------------------------------------------------------------------------------------
# DNS


def _unreachable(what: str, lookup: Lookup) -> Finding:
    return Finding(
        Severity.WARNING,
        {"SPF": Code.SPF, "DKIM": Code.DKIM_RECORD, "DMARC": Code.DMARC}[what],
        f"could not check the {what} record at {lookup.name}: DNS not reachable ({lookup.reason})",
    )


async def _dns_findings(campaign: Campaign, dns: DnsRecords | None) -> list[Finding]:
    domain = campaign.sender.domain
    dkim = campaign.dkim if isinstance(campaign.dkim, DkimSettings) else None
    found: list[Finding] = []
    key = dkim.key.public_forms() if dkim is not None else None
    if dns is None:
        skipped = Finding(
            Severity.WARNING, Code.DNS, "SPF, DMARC and DKIM records not looked up (--no-dns)"
        )
        return [skipped, *_alignment(campaign, None)]
    async with asyncio.TaskGroup() as group:
        spf = group.create_task(dns.spf(domain))
        dmarc = group.create_task(dns.dmarc(domain))
        record = group.create_task(dns.dkim(dkim.selector, dkim.domain)) if dkim else None
    found += _spf(domain, spf.result())
    dmarc_lookup = dmarc.result()
    found += _dmarc(dmarc_lookup, campaign)
    if record is not None and dkim is not None:
        found += _dkim_record(record.result(), key)
    policy = tags(dmarc_lookup.records[0]) if len(dmarc_lookup.records) == 1 else None
    return found + _alignment(campaign, policy)


def _spf(domain: str, lookup: Lookup) -> list[Finding]:
    if lookup.outcome is Outcome.UNREACHABLE:
        return [_unreachable("SPF", lookup)]
    if lookup.outcome is Outcome.ABSENT:
        text = (
            f"no SPF record (v=spf1) for {domain}: receivers cannot tell the relay may send for "
            "it; publish one"
        )
        return [Finding(Severity.ERROR, Code.SPF, text)]
    if len(lookup.records) > 1:
        text = (
            f"{len(lookup.records)} SPF records for {domain}: more than one is a permanent "
            "error (RFC 7208 4.5); merge them into one"
        )
        return [Finding(Severity.ERROR, Code.SPF, text)]
    return [Finding(Severity.OK, Code.SPF, f"{domain}: {shorten(lookup.records[0], 160)}")]


def _dmarc(lookup: Lookup, campaign: Campaign) -> list[Finding]:
    if lookup.outcome is Outcome.UNREACHABLE:
        return [_unreachable("DMARC", lookup)]
    if lookup.outcome is Outcome.ABSENT:
        text = (
            f"no DMARC record at {lookup.name}: Gmail and Yahoo require one of bulk senders "
            "(v=DMARC1; p=none at least)"
        )
        return [_bulk_rule(campaign, Code.DMARC, text)]
    if len(lookup.records) > 1:
        text = (
            f"{len(lookup.records)} DMARC records at {lookup.name}: receivers then apply none "
            "(RFC 7489 6.6.3); keep one"
        )
        return [Finding(Severity.ERROR, Code.DMARC, text)]
    policy = tags(lookup.records[0]).get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        text = f"the DMARC record at {lookup.name} has no valid p= (none, quarantine or reject)"
        return [Finding(Severity.ERROR, Code.DMARC, text)]
    text = f"{lookup.name}: p={policy}"
    if policy == "none":
        text += (
            " (monitoring only: enough for the 2024 rules; quarantine or reject protects the "
            "domain)"
        )
    return [Finding(Severity.OK, Code.DMARC, text)]


def _dkim_record(lookup: Lookup, key: tuple[str, frozenset[bytes]] | None) -> list[Finding]:
    if lookup.outcome is Outcome.UNREACHABLE:
        return [_unreachable("DKIM", lookup)]
    if lookup.outcome is Outcome.ABSENT:
        text = f"no DKIM key at {lookup.name}: publish the public key of the key_file there"
        return [Finding(Severity.ERROR, Code.DKIM_RECORD, text)]
    if key is None:  # the key file could not be read: said already
        return []
    kind, published = key
    problems = []
    for record in lookup.records:
        found = tags(record)
        value = "".join(found.get("p", "").split())
        record_kind = found.get("k", "rsa").lower()
        if not value:
            problems.append("the key is revoked (empty p=)")
            continue
        try:
            public = b64decode(value, validate=True)
        except binascii.Error:
            problems.append("p= is not base64")
            continue
        if record_kind == kind and public in published:
            text = f"{lookup.name}: the published key is the key_file's ({kind})"
            return [Finding(Severity.OK, Code.DKIM_RECORD, text)]
        problems.append(f"k={record_kind}, another key than the key_file's ({kind})")
    text = f"{lookup.name}: {'; '.join(problems)}: receivers will fail every signature"
    return [Finding(Severity.ERROR, Code.DKIM_RECORD, text)]


def _alignment(campaign: Campaign, policy: dict[str, str] | None) -> list[Finding]:
    """DMARC alignment of the From domain with the DKIM d= domain (RFC 7489 3.1.1). The
    envelope sender is the From address, so SPF aligns by construction; DKIM alignment is
    what survives forwarding."""
    dkim = campaign.dkim
    sender = campaign.sender.domain.lower()
    if dkim is None:
        return []
    if not isinstance(dkim, DkimSettings):
        text = f"the relay signs: whether its d= domain aligns with {sender} is not checked here"
        return [Finding(Severity.WARNING, Code.ALIGNMENT, text)]
    signer = dkim.domain.lower()
    strict = (policy or {}).get("adkim", "r").lower() == "s"
    if sender == signer:
        return [Finding(Severity.OK, Code.ALIGNMENT, f"d={signer} is the From domain")]
    related = sender.endswith("." + signer) or signer.endswith("." + sender)
    if related and not strict:
        text = f"d={signer} and From {sender} align (relaxed)"
        return [Finding(Severity.OK, Code.ALIGNMENT, text)]
    if related:
        why = "adkim=s wants the same domain"
    elif sender.split(".")[-2:] == signer.split(".")[-2:]:
        why = "they align only if they share an organisational domain (relaxed alignment)"
    else:
        why = "they are different domains"
    text = (
        f"d={signer} does not align with From {sender} ({why}): DMARC then rests on SPF "
        "alone, which forwarding breaks"
    )
    return [Finding(Severity.WARNING, Code.ALIGNMENT, text)]


# ---------------------------------------------------------------------------------------------
# The server


@dataclass(frozen=True, slots=True)
class _Probe:
    """What connecting to the server found, and its SIZE (None: it said none)."""

    findings: list[Finding]
    connected: bool = False
    limit: int | None = None


async def _server(campaign: Campaign, options: CheckOptions) -> _Probe:
    """Every relay probed at once (`_probe`); SIZE is the smallest one's (any relay may
    carry the largest message)."""
    if not options.connect:
        return _Probe([Finding(Severity.WARNING, Code.SERVER, "not connected to (--no-connect)")])
    async with asyncio.TaskGroup() as group:
        tasks = [
            (name, group.create_task(_probe(server, campaign, options)))
            for name, server in _servers(campaign)
        ]
    probes = [(name, task.result()) for name, task in tasks]
    reached = [probe for _, probe in probes if probe.connected]
    limits = [probe.limit for probe in reached if probe.limit is not None]
    return _Probe(  # a relay not reached has its error: the others' SIZE still counts
        [Finding(f.severity, f.code, name + f.text) for name, p in probes for f in p.findings],
        connected=bool(reached),
        limit=min(limits) if limits else None,
    )


async def _probe(server: ServerSettings, campaign: Campaign, options: CheckOptions) -> _Probe:
    """Connect as a run does (TLS, login), read SIZE, try the envelope (no DATA), QUIT."""
    try:
        tls = (
            await asyncio.to_thread(build_tls_context, server)
            if server.security is not Security.NONE
            else None
        )
    except (ssl.SSLError, OSError) as err:
        text = f"{server.address}: cannot load tls_ca_file {server.tls_ca_file}: {err}"
        return _Probe([Finding(Severity.ERROR, Code.SERVER, text)])
    local_hostname = await helo_name(server, options.local_hostname)
    tokens = TokenSource.of(server)
    session = Session(server, tls_context=tls, local_hostname=local_hostname, tokens=tokens)
    try:
        await session.connect()
    except DeliveryError as err:
        return _Probe([Finding(Severity.ERROR, Code.SERVER, str(err))])
    limit = session.size_limit
    sender = campaign.sender
    # What Postfix refuses of a client or its EHLO name it says only to a RCPT. To the
    # postmaster every domain must have (RFC 5321 4.5.1): no list recipient is asked about,
    # and a refusal that quotes it is not taken for one that names the sender.
    postmaster = f"postmaster@{sender.domain}"
    if sender.key == postmaster.lower():  # another: a refusal quoting it is not the sender's
        postmaster = f"abuse@{sender.domain}"  # RFC 2142
    try:
        answer = await session.probe(sender.addr, postmaster)
    except (DeliveryError, InputError) as err:
        return _Probe([Finding(Severity.ERROR, Code.SERVER, str(err))])
    finally:
        await session.close()
    if isinstance(answer, RefusedError):
        severity = Severity.WARNING if answer.temporary else Severity.ERROR
        return _Probe([Finding(severity, Code.SERVER, str(answer))], connected=True, limit=limit)
    how = server.security.value
    if server.username is not None:
        how += f", logged in as {server.username}"
    text = f"{server.address}: connected ({how}); MAIL FROM <{sender.addr}> taken"
    if answer.code in ACCEPTED_RCPT:  # as a run takes it
        text += f", and RCPT TO <{postmaster}>"
        return _Probe([Finding(Severity.OK, Code.SERVER, text)], connected=True, limit=limit)
    said = " ".join(answer.message.split())
    text += f"; RCPT TO <{postmaster}> refused as a recipient ({answer.code} {said})"
    return _Probe([Finding(Severity.WARNING, Code.SERVER, text)], connected=True, limit=limit)


def _size_findings(largest: int, probe: _Probe) -> list[Finding]:
    if not largest:
        return []
    size = f"{largest:,} bytes"
    limit = probe.limit
    if not probe.connected:
        text = f"the largest message is {size}; not compared with the server's SIZE"
        return [Finding(Severity.WARNING, Code.SIZE, text)]
    if limit is None:
        text = f"the largest message is {size}; the server advertises no SIZE limit"
        return [Finding(Severity.OK, Code.SIZE, text)]
    if largest > limit:
        text = (
            f"the largest message is {size}, over the server's SIZE of {limit:,}: it would be "
            "refused (make the attachments smaller)"
        )
        return [Finding(Severity.ERROR, Code.SIZE, text)]
    text = f"the largest message is {size}, within the server's SIZE of {limit:,}"
    return [Finding(Severity.OK, Code.SIZE, text)]
