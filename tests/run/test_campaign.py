"""A whole campaign through the pool to a real server, checked from what the server received."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import AuthError, TLSRequiredError
from asyncmailer.message import envelope_id
from asyncmailer.observer import Observer
from asyncmailer.results import RecipientResult, Status
from asyncmailer.run.campaign import RunOptions, run_campaign

from ..conftest import PASSWORD, SUBJECT, USER, CampaignFactory, RunningServer, ServerFactory
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


async def test_login_failure_stops_the_run_and_skips_everyone(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, password="wrong password")
    report = await run_campaign(await load_campaign(path, env={}))

    assert isinstance(report.fatal, AuthError)
    assert [(r.status, r.attempts) for r in report.results] == [(Status.SKIPPED, 0)] * 3
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
    assert {r.status for r in report.results} == {Status.SKIPPED}
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

    class StopOnFirstAnswer(Observer):
        async def results(self, results: Sequence[RecipientResult]) -> None:
            if any(r.status is Status.ACCEPTED for r in results):
                options.stop.set()  # as Ctrl-C does
            else:
                await options.stop.wait()  # hold the reader on the bad row until then

    campaign = await load_campaign(path, env={})
    first = await asyncio.wait_for(
        run_campaign(campaign, observer=StopOnFirstAnswer(), options=options), 60
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
