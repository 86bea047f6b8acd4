"""A whole campaign through the pool to a real server, checked from what the server received."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from asyncmailer.attachments import SPOOL_ABOVE
from asyncmailer.config import load_campaign
from asyncmailer.errors import AuthError, TLSRequiredError
from asyncmailer.journal.suppressions import SuppressionStore
from asyncmailer.message import envelope_id
from asyncmailer.observer import Observer
from asyncmailer.results import RecipientResult, Status
from asyncmailer.run.campaign import RunOptions, prepare_message, run_campaign
from asyncmailer.suppression import Reason

from ..conftest import (
    PASSWORD,
    SUBJECT,
    USER,
    CampaignFactory,
    RunningServer,
    ServerFactory,
    StopOnFirstAnswer,
)
from ..dkimkeys import DOMAIN, SELECTOR, Kind, verifies, write_key
from ..postfix import PostfixFactory

FILES = {
    "отчёт за ноябрь.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 40,
    "notes.txt": "заметки\r\n.line with a dot\n".encode(),
    "image.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3,
}


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


async def test_campaign_arrives_intact(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server()
    path = make_campaign(
        port=running.server.ssl_port,
        files=FILES,
        bcc="archive@example.com",
        body="Здравствуйте!\n.dot line\n",
    )
    seen: list[RecipientResult] = []
    expected: list[int | None] = []

    class Recording(Observer):
        async def started(self, count: int | None) -> None:
            expected.append(count)

        async def results(self, results: Sequence[RecipientResult]) -> None:
            seen.extend(results)

    report = await run_campaign(await load_campaign(path, env={}), observer=Recording())

    assert report.all_accepted and report.fatal is None
    assert seen == report.results
    assert expected == [4]
    assert [r.recipient for r in report.results] == [
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
        "archive@example.com",
    ]
    [received] = running.messages
    # cc and bcc are in the envelope...
    assert received.rcpt_tos == (
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
        "archive@example.com",
    )
    message = parse(received.data)
    # ...bcc is not in any header.
    assert b"archive@example.com" not in received.data
    assert str(message["Subject"]) == SUBJECT
    assert [a.addr_spec for a in message["To"].addresses] == [
        "alice@example.com",
        "bob@example.org",
    ]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["carol@example.net"]
    assert message["From"].addresses[0].addr_spec == "sender@example.com"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content() == "Здравствуйте!\r\n.dot line\r\n"
    attachments = {a.get_filename(): a.get_payload(decode=True) for a in message.iter_attachments()}
    assert attachments == FILES
    assert received.tls and received.login == "sender@example.com"
    assert PASSWORD.encode() not in received.data


async def test_refused_recipient_does_not_stop_the_others(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server(refuse={"bob@example.org": (550, "5.1.1 User unknown")})
    path = make_campaign(port=running.server.ssl_port)
    report = await run_campaign(await load_campaign(path, env={}))

    statuses = {r.recipient: (r.status, r.code) for r in report.results}
    assert statuses == {
        "alice@example.com": (Status.ACCEPTED, 250),
        "bob@example.org": (Status.REFUSED, 550),
        "carol@example.net": (Status.ACCEPTED, 250),
    }
    assert not report.all_accepted
    assert running.messages[0].rcpt_tos == ("alice@example.com", "carol@example.net")
    assert "bob@example.org" in running.messages[0].data.decode()  # still named in To:


async def test_groups_share_the_pool_and_its_connections(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "list.txt").write_text("".join(f"user{i}@example.com\n" for i in range(30)))
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.txt",
        group_size=1,
        concurrency=3,
    )
    report = await run_campaign(await load_campaign(path, env={}))

    assert report.all_accepted and len(report.results) == 30
    assert sorted(m.rcpt_tos[0] for m in running.messages) == sorted(
        f"user{i}@example.com" for i in range(30)
    )
    # At most `concurrency` connections, each reused for many messages.
    assert 1 <= len(running.recorder.connections) <= 3
    assert len(running.messages) == 30


@pytest.mark.parametrize("helo_name", [None, "mx1.example.com", "[127.0.0.1]"])
async def test_every_connection_says_the_same_ehlo_name(
    smtp_server: ServerFactory,
    make_campaign: CampaignFactory,
    tmp_path: Path,
    helo_name: str | None,
) -> None:
    running = await smtp_server()
    keys = {"helo_name": helo_name} if helo_name else {}
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 12),
        group_size=1,
        concurrency=3,
        max_messages_per_connection=2,  # six connections at least
        **keys,
    )
    report = await run_campaign(await load_campaign(path, env={}))

    assert report.all_accepted
    greetings = [c for c in running.recorder.commands() if c.upper().startswith("EHLO")]
    assert len(greetings) == len(running.recorder.connections) >= 6
    assert set(greetings) == {f"EHLO {helo_name or socket.getfqdn()}"}


async def test_login_failure_stops_the_run_and_skips_everyone(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, password="wrong password")
    report = await run_campaign(await load_campaign(path, env={}))

    assert isinstance(report.fatal, AuthError)
    assert [(r.status, r.attempts) for r in report.results] == [(Status.NOT_ATTEMPTED, 0)] * 3
    assert all("login as sender@example.com failed: 535" in r.message for r in report.results)
    assert running.messages == []
    assert not report.all_accepted


async def test_stripped_starttls_stops_before_auth(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server(offer_starttls=False, auth_require_tls=False)
    path = make_campaign(port=running.server.starttls_port, security="starttls")
    report = await run_campaign(await load_campaign(path, env={}))

    assert isinstance(report.fatal, TLSRequiredError)
    assert {r.status for r in report.results} == {Status.NOT_ATTEMPTED}
    assert running.server.auth_attempts == []
    assert b"AUTH" not in b"".join(running.recorder.lines())


def list_campaign(
    make_campaign: CampaignFactory, running: RunningServer, recipients: Path, **keys: Any
) -> Path:
    """A campaign of the list file alone (no to/cc), sent to the test server's TLS port."""
    return make_campaign(
        port=running.server.ssl_port, to=None, cc=None, recipients_file=str(recipients), **keys
    )


def write_list(path: Path, count: int, *, extra: str = "") -> Path:
    path.write_text(
        "email,name\n" + "".join(f"u{i}@example.com,U {i}\n" for i in range(count)) + extra
    )
    return path


async def test_list_campaign_in_groups_nobody_sees_anybody(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    recipients = write_list(
        tmp_path / "list.csv",
        250,
        extra="bad address,Bad\nu7@example.com,Dup\nalice@example.com,Also in to\n",
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to="alice@example.com",
        cc=None,
        recipients_file=str(recipients),
        group_size=100,
        concurrency=3,
    )
    report = await run_campaign(await load_campaign(path, env={}))

    assert report.counts[Status.ACCEPTED] == 251  # alice + 250 list rows
    assert report.counts[Status.SKIPPED] == 1
    [bad] = report.problems
    assert bad.recipient == "bad address"
    assert bad.message.startswith(f"{recipients}:252: email: 'bad address'")
    assert report.duplicates == 2
    assert report.total == 252
    # The config's group first, then the list in groups of 100, 100 and 50.
    sizes = sorted(len(m.rcpt_tos) for m in running.messages)
    assert sizes == [1, 50, 100, 100]
    delivered = [r for m in running.messages for r in m.rcpt_tos]
    assert len(delivered) == len(set(delivered)) == 251
    for message in running.messages:
        if len(message.rcpt_tos) > 1:
            headers = parse(message.data)
            assert str(headers["To"]) == "undisclosed-recipients:;"
            assert headers["Cc"] is None
            assert b"u1@example.com" not in message.data.split(b"\r\n\r\n")[0]


def long_list(path: Path, count: int, *, bad_at: int) -> Path:
    """A CSV list of `count` rows with a bad one before row `bad_at`; the runs read it into
    the journal 1,000 rows first, then in smaller batches than the defaults (RunOptions)."""
    rows = [f"u{i}@example.com,U {i}\n" for i in range(count)]
    rows.insert(bad_at, "not an address,X\n")
    path.write_text("email,name\n" + "".join(rows))
    return path


async def test_sending_starts_while_a_long_list_is_read(
    smtp_server: ServerFactory,
    make_campaign: CampaignFactory,
    tmp_path: Path,
) -> None:
    # The list goes into the journal in batches (here 1,000 rows, then 5,000 at a time);
    # sending starts after the first. A bad row in the second batch holds the reader until a
    # message has been accepted: the run ends only if sending goes on while the list is read.
    recipients = long_list(tmp_path / "list.csv", 8000, bad_at=3000)
    running = await smtp_server()
    # Groups of 29 straddle both batch boundaries (after rows 1,000 and 6,000).
    path = list_campaign(make_campaign, running, recipients, group_size=29, concurrency=4)
    events: list[tuple[str, int | None]] = []
    accepted = asyncio.Event()

    class Holding(Observer):
        async def started(self, count: int | None) -> None:
            events.append(("started", count))

        async def counted(self, count: int) -> None:
            events.append(("counted", count))

        async def results(self, results: Sequence[RecipientResult]) -> None:
            if any(r.status is Status.SKIPPED for r in results):
                events.append(("bad row", None))
                await accepted.wait()  # the reader waits on us; sending must not
            elif any(r.status is Status.ACCEPTED for r in results):
                accepted.set()

    campaign = await load_campaign(path, env={})
    options = RunOptions(first_batch=1000, load_batch=5000)
    report = await asyncio.wait_for(run_campaign(campaign, observer=Holding(), options=options), 60)

    assert events == [("started", None), ("bad row", None), ("counted", 8001)]
    assert report.counts[Status.ACCEPTED] == 8000 and report.counts[Status.SKIPPED] == 1
    # Each group went out once and whole: a group still filling when a batch ended was not
    # handed out half-full.
    sizes = sorted(len(m.rcpt_tos) for m in running.messages)
    assert sizes == [8000 % 29] + [29] * (8000 // 29)
    delivered = [r for m in running.messages for r in m.rcpt_tos]
    assert len(set(delivered)) == 8000


async def test_a_stopped_run_stops_reading_the_list_and_the_next_run_reads_on(
    smtp_server: ServerFactory,
    make_campaign: CampaignFactory,
    tmp_path: Path,
) -> None:
    # The bad row is line 1,502: in the second batch.
    recipients = long_list(tmp_path / "list.csv", 5000, bad_at=1500)
    running = await smtp_server()
    path = list_campaign(make_campaign, running, recipients, group_size=10, concurrency=2)
    options = RunOptions(first_batch=1000, load_batch=1000)

    campaign = await load_campaign(path, env={})
    first = await asyncio.wait_for(
        run_campaign(campaign, observer=StopOnFirstAnswer(options.stop), options=options), 60
    )
    # The second batch (rows up to line 2,002) was the last one read.
    assert first.list_read_to == 2002
    assert first.total == 2001  # 2,000 rows and the bad one
    assert "the list read up to line 2,002: the next run reads and sends the rest" in (
        first.summary()
    )
    sent_first = len(running.messages)
    assert 0 < sent_first < 200

    second = await asyncio.wait_for(
        run_campaign(campaign, options=RunOptions(first_batch=1000, load_batch=1000)), 60
    )
    assert second.list_read_to is None and second.total == 5001
    assert second.counts[Status.ACCEPTED] == 5000
    delivered = [r for m in running.messages for r in m.rcpt_tos]
    assert len(delivered) == len(set(delivered)) == 5000  # nothing lost, nothing twice


async def test_group_size_one_names_the_recipient(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 5),
        group_size=1,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted and report.total == 5
    for message in running.messages:
        [rcpt] = message.rcpt_tos
        to = parse(message.data)["To"]
        assert [a.addr_spec for a in to.addresses] == [rcpt]
        assert to.addresses[0].display_name == "U " + rcpt[1:].split("@")[0]


async def test_reconnects_after_max_messages_per_connection(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 10),
        group_size=1,
        concurrency=1,
        max_messages_per_connection=3,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    per_connection = [
        sum(1 for line in conn_text.split(b"\r\n") if line.startswith(b"MAIL FROM"))
        for conn_text in running.recorder.lines()
    ]
    assert per_connection == [3, 3, 3, 1]
    assert all(text.endswith(b"QUIT\r\n") for text in running.recorder.lines())


async def test_rate_limit_holds_across_the_pool(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 21),
        group_size=1,
        concurrency=8,
        rate="100/s",
    )
    campaign = await load_campaign(path, env={})
    assert campaign.rate == 100
    report = await run_campaign(campaign)
    assert report.all_accepted
    # 8 connections could send all 21 at once; at 100/s, message k may not start before
    # k/100 s after the first. Checked on the server's clock, less the first connection's
    # setup (TLS and AUTH) that delays the first message's arrival.
    times = sorted(m.received_at for m in running.messages)
    for k, at in enumerate(times):
        assert at - times[0] >= k / 100 - 0.05
    assert times[-1] - times[0] >= 0.15


async def test_max_connections_caps_the_pool(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 40),
        group_size=1,
        concurrency=16,
        max_connections=2,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    assert len(running.recorder.connections) <= 2


@pytest.mark.parametrize(("concurrency", "rate"), [(1, None), (4, "50/s")])
async def test_daily_quota_holds_across_runs(
    smtp_server: ServerFactory,
    make_campaign: CampaignFactory,
    tmp_path: Path,
    concurrency: int,
    rate: str | None,
) -> None:
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 25),
        group_size=5,
        concurrency=concurrency,
        rate=rate,
        daily_quota=12,
    )
    first = await run_campaign(await load_campaign(path, env={}))
    assert first.quota_reached
    assert first.counts[Status.ACCEPTED] == 10  # two groups of 5 fit in 12; a third does not
    second = await run_campaign(await load_campaign(path, env={}))
    assert second.quota_reached and second.counts[Status.ACCEPTED] == 10  # nothing more today
    assert sum(len(m.rcpt_tos) for m in running.messages) == 10


async def test_next_envelope_goes_out_with_the_final_dot(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    """RFC 2920 3.1: one round trip per message on a pipelining server."""
    running = await smtp_server()
    path = list_campaign(
        make_campaign,
        running,
        write_list(tmp_path / "list.csv", 6),
        group_size=1,
        concurrency=1,
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    assert [m.rcpt_tos for m in running.messages] == [(f"u{i}@example.com",) for i in range(6)]
    [connection] = running.recorder.connections
    chunks = [c.data for c in connection]
    # Each message, its end and the next envelope arrive in one write.
    joined = [c for c in chunks if b"\r\n.\r\nMAIL FROM:<sender@example.com>" in c]
    assert len(joined) == 5, chunks
    assert all(c.endswith(b"\r\nDATA\r\n") for c in joined)


GONE = "5.1.1 <gone@example.org>: Recipient address rejected: User unknown in local table"


async def test_a_5_1_1_at_rcpt_lands_in_the_store_and_the_next_campaign_skips_it(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(
        refuse={
            "gone@example.org": (550, GONE),
            "relay@example.org": (550, "5.7.1 Relaying denied"),  # policy: not the address
            "full@example.org": (552, "5.2.2 Mailbox full"),
        }
    )
    (tmp_path / "list.txt").write_text(
        "a@example.com\ngone@example.org\nrelay@example.org\nfull@example.org\n"
    )
    keys = {"to": None, "cc": None, "recipients_file": "list.txt", "state_dir": "state"}
    first = await load_campaign(
        make_campaign(port=running.server.ssl_port, campaign="october", **keys), env={}
    )
    report = await run_campaign(first)
    assert report.counts == {Status.ACCEPTED: 1, Status.REFUSED: 3}
    assert report.classes == {
        (Status.REFUSED, "5.1.x"): 1,
        (Status.REFUSED, "5.7.x"): 1,
        (Status.REFUSED, "5.2.x"): 1,
    }

    store = SuppressionStore.of(first.state_dir)
    [entry] = await store.entries()
    assert (entry.key, entry.reason, entry.code, entry.campaign) == (
        "gone@example.org",
        Reason.BOUNCE,
        "550 5.1.1",
        "october",
    )
    assert entry.note == GONE

    # Another campaign of the same state folder: gone@ is not even offered to the server.
    second = await load_campaign(
        make_campaign(port=running.server.ssl_port, campaign="november", **keys), env={}
    )

    def offered() -> int:
        return sum("gone@example.org" in line for line in running.recorder.commands())

    before = offered()
    again = await run_campaign(second)
    assert offered() == before == 1
    assert again.counts == {Status.ACCEPTED: 1, Status.REFUSED: 2, Status.SUPPRESSED: 1}
    [suppressed] = [r for r in again.results if r.status is Status.SUPPRESSED]
    assert suppressed.message == "suppressed: bounce 550 5.1.1 (october)"


async def test_a_sender_refusal_5_7_1_is_no_address_fact(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server(refuse={USER: (550, "5.7.1 Sender address rejected: blocked")})
    campaign = await load_campaign(make_campaign(port=running.server.ssl_port), env={})
    report = await run_campaign(campaign)

    assert report.fatal is not None and running.messages == []
    assert report.counts == {Status.NOT_ATTEMPTED: 3}  # left to send once the block is gone
    assert await SuppressionStore.of(campaign.state_dir).entries() == []


async def test_refusals_of_a_run_that_never_ended_are_added_by_the_next(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    # The store is written from the journal at the end of a run: a run killed before its
    # end (here: one that did not write the store) leaves its refusals for the next run.
    running = await smtp_server(refuse={"gone@example.org": (550, GONE)})
    (tmp_path / "list.txt").write_text("a@example.com\ngone@example.org\nb@example.com\n")
    path = make_campaign(
        port=running.server.ssl_port, to=None, cc=None, recipients_file="list.txt", group_size=1
    )
    campaign = await load_campaign(path, env={})
    store = SuppressionStore.of(campaign.state_dir)
    await run_campaign(campaign, options=RunOptions(limit=2, store_bounces=False))
    assert await store.entries() == []
    report = await run_campaign(campaign)
    assert [e.key for e in await store.entries()] == ["gone@example.org"]
    assert report.counts == {Status.ACCEPTED: 2, Status.REFUSED: 1}  # it stays refused here


# --- DKIM: every message the server received verifies (dkimpy, against the public key) -----


def dkim_key(tmp_path: Path, kind: Kind) -> dict[str, str]:
    """The campaign's `dkim` key, with a key of `kind` written beside it."""
    (tmp_path / "reliances").mkdir(exist_ok=True)
    write_key(tmp_path / "reliances", kind)
    return {"domain": DOMAIN, "selector": SELECTOR, "key_file": "reliances/dkim.pem"}


def signed_names(data: bytes) -> list[str]:
    """The h= list of a message's DKIM-Signature."""
    header = parse(data)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in str(header).split(";") if t.strip())
    return ["".join(n.split()) for n in tags["h"].split(":")]


@pytest.mark.parametrize("kind", ["rsa-2048", "ed25519"])
async def test_a_signed_campaign_verifies_and_a_changed_one_does_not(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path, kind: Kind
) -> None:
    running = await smtp_server()
    path = make_campaign(
        port=running.server.ssl_port,
        files=FILES,
        body="Здравствуйте!\n.dot line\ntrailing space \n\n\n",
        reply_to="Support <support@example.com>",
        dkim=dkim_key(tmp_path, kind),
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    [received] = running.messages
    assert received.data.startswith(b"DKIM-Signature: v=1; a=")
    assert verifies(received.data, kind)
    names = signed_names(received.data)
    for name in ("from", "to", "cc", "subject", "date", "message-id", "reply-to"):
        assert name in names
    assert {"mime-version", "content-type"} <= set(names)
    assert received.data.count(b"notes.txt") == 1  # in the body: an attachment's name
    assert not verifies(received.data.replace(b"notes.txt", b"notes.exe"), kind)
    assert not verifies(received.data.replace(b"To: alice", b"To: mallory"), kind)
    # What was received is the message as built, with its attachments intact.
    attachments = {
        a.get_filename(): a.get_payload(decode=True)
        for a in parse(received.data).iter_attachments()
    }
    assert attachments == FILES


async def test_grouped_messages_each_verify(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(write_list(tmp_path / "list.csv", 25)),
        group_size=10,
        concurrency=2,
        dkim=dkim_key(tmp_path, "ed25519"),
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.counts[Status.ACCEPTED] == 25
    assert sorted(len(m.rcpt_tos) for m in running.messages) == [5, 10, 10]
    assert all(verifies(m.data, "ed25519") for m in running.messages)
    # Each transaction has its own head (Message-ID), over the one shared body.
    assert len({parse(m.data)["Message-ID"] for m in running.messages}) == 3
    assert (
        len({parse(m.data)["DKIM-Signature"].split("bh=")[1][:44] for m in running.messages}) == 1
    )


async def test_personalised_messages_with_their_own_headers_each_verify(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "list.csv"
    listing.write_text(
        "email,name\nann@example.com,Ann\nbob@example.com,Bob\ncid@example.com,Cid\n"
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(listing),
        personalize=True,
        subject="For {{ name }}",
        body="Dear {{ name }},\n.the news\n",
        files={"notes.txt": b"shared notes\r\n"},
        list_unsubscribe={"url": "https://example.com/u?t={{ unsubscribe_token }}"},
        dkim=dkim_key(tmp_path, "rsa-2048"),
    )
    env = {"ASYNCMAILER_UNSUBSCRIBE_KEY": "k" * 32}
    report = await run_campaign(await load_campaign(path, env=env))
    assert report.counts[Status.ACCEPTED] == 3
    hashes = set()
    for received in running.messages:
        message = parse(received.data)
        name = message["Subject"].removeprefix("For ")
        assert f"Dear {name}," in received.data.decode()
        assert verifies(received.data, "rsa-2048")
        assert {"list-unsubscribe", "list-unsubscribe-post", "subject"} <= set(
            signed_names(received.data)
        )
        hashes.add(message["DKIM-Signature"].split("bh=")[1][:44])
        other = received.data.replace(f"Dear {name}".encode(), b"Dear Eve")
        assert not verifies(other, "rsa-2048")
    assert len(hashes) == 3  # personal bodies: a body hash each


async def test_an_html_newsletter_with_an_image_and_an_attachment_verifies(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "reliances" / "images").mkdir(parents=True)
    (tmp_path / "reliances" / "images" / "logo.png").write_bytes(FILES["image.png"])
    (tmp_path / "reliances" / "news.md").write_text(
        "# November\n\nHello, *readers*.\n\n![logo](images/logo.png)\n"
    )
    path = make_campaign(
        port=running.server.ssl_port,
        file_with_message="reliances/news.md",
        files={"report.pdf": FILES["отчёт за ноябрь.pdf"]},
        dkim=dkim_key(tmp_path, "rsa-2048"),
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    [received] = running.messages
    message = parse(received.data)
    assert [p.get_content_type() for p in message.walk()] == [
        *("multipart/mixed", "multipart/alternative", "text/plain", "multipart/related"),
        *("text/html", "image/png", "application/pdf"),
    ]
    assert verifies(received.data, "rsa-2048")
    image = received.data.index(b"image/png")
    changed = received.data[:image] + b"image/gif" + received.data[image + 9 :]
    assert not verifies(changed, "rsa-2048")


async def test_a_spooled_attachment_is_signed_for_shared_and_personal_bodies(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    big = bytes(range(256)) * (SPOOL_ABOVE // 256 + 4096)  # just over 8 MiB: spooled
    listing = tmp_path / "list.csv"
    listing.write_text("email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    key = dkim_key(tmp_path, "ed25519")
    shared = make_campaign(port=running.server.ssl_port, files={"big.bin": big}, dkim=key)
    campaign = await load_campaign(shared, env={})
    with await prepare_message(campaign) as template:
        assert not template.renders_slowly  # Ed25519, the shared body hashed once when built
        report = await run_campaign(campaign, template=template)
    assert report.all_accepted
    personal = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(listing),
        personalize=True,
        body="Dear {{ name }},\n",
        files={"big.bin": big},
        dkim=key,
        state_dir="state-2",
    )
    campaign = await load_campaign(personal, env={})
    with await prepare_message(campaign) as template:
        assert template.renders_slowly  # a body hash each: rendered in a thread
        report = await run_campaign(campaign, template=template)
    assert report.all_accepted
    assert len(running.messages) == 3
    for received in running.messages:
        assert verifies(received.data, "ed25519")
        [attachment] = parse(received.data).iter_attachments()
        assert attachment.get_payload(decode=True) == big


async def test_each_message_carries_its_envelope_id_where_dsn_is_offered(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server(dsn=True)
    path = make_campaign(port=running.server.ssl_port)
    options = RunOptions(run_id="20261202T031423Z")
    report = await run_campaign(await load_campaign(path, env={}), options=options)
    assert report.all_accepted
    [message] = running.messages
    message_id = parse(message.data)["Message-ID"]
    [mail] = [c for c in running.recorder.commands() if c.startswith("MAIL FROM:")]
    # The run, then the Message-ID's left part: a bounce names the message it is about.
    assert mail.endswith(f" RET=HDRS ENVID={envelope_id('20261202T031423Z', message_id)}")
    assert message_id.startswith("<" + mail.split("ENVID=20261202T031423Z.")[1] + "@")


async def test_a_campaign_through_postfix_with_starttls_and_auth(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(accounts={USER: PASSWORD})
    path = make_campaign(port=relay.port, security="starttls")
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.fatal is None and report.all_accepted
    assert sorted(await relay.sink.wait_for(3)) == [
        "alice@example.com",
        "bob@example.org",
        "carol@example.net",
    ]
    # A wrong password: Postfix's 535 stops the run, nothing sent.
    wrong = make_campaign(port=relay.port, security="starttls", password="wrong", campaign="w")
    report = await run_campaign(await load_campaign(wrong, env={}))
    assert isinstance(report.fatal, AuthError) and report.fatal.code == 535
    assert "535 5.7.8 Error: authentication failed" in str(report.fatal), report.fatal
    assert len(relay.sink.messages) == 1
