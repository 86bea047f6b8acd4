"""The fault matrix: every failure a relay or the network produces, over real sockets, with the
outcome for each recipient and the journal's state checked."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from asyncmailer.config import load_campaign
from asyncmailer.errors import AuthError, ConnectError, JournalError, RefusedError, TLSRequiredError
from asyncmailer.journal import JournalReader
from asyncmailer.ledger import JournalState
from asyncmailer.observer import Observer
from asyncmailer.results import CampaignReport, Status
from asyncmailer.run.campaign import RunOptions, run_campaign

from .conftest import PASSWORD, CampaignFactory, Certs, ServerFactory, plain_list_campaign
from .faulty import Faults, FaultyServer

RECIPIENTS = [f"r{i}@example.com" for i in range(6)]
FAST = {"retry_delay": 0.01, "timeout": 2, "connect_timeout": 1, "data_timeout": 1}


@pytest.fixture
async def faulty() -> AsyncIterator[Callable[..., Any]]:
    servers: list[FaultyServer] = []

    async def start(tls: ssl.SSLContext | None = None, **faults: Any) -> FaultyServer:
        server = await FaultyServer(Faults(**faults), tls=tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def send(
    make_campaign: CampaignFactory,
    port: int,
    *,
    recipients: list[str] = RECIPIENTS,
    resend_unknown: bool = False,
    **keys: Any,
) -> tuple[CampaignReport, Counter[JournalState]]:
    """Run a list campaign against the server and return the report and the journal's counts."""
    settings: dict[str, Any] = {"group_size": 10, "concurrency": 2, **FAST, **keys}
    path = plain_list_campaign(make_campaign, port, recipients, **settings)
    campaign = await load_campaign(path, env={})
    report = await run_campaign(campaign, options=RunOptions(resend_unknown=resend_unknown))
    assert report.journal is not None
    counts = await JournalReader(report.journal).counts()
    return report, counts


def statuses(report: CampaignReport) -> dict[str, tuple[Status, int | None, int]]:
    return {r.recipient: (r.status, r.code, r.attempts) for r in report.results}


async def test_421_greeting_is_retried(faulty: Any, make_campaign: CampaignFactory) -> None:
    server = await faulty(greeting_421=2)
    report, journal = await send(make_campaign, server.port, concurrency=1)
    assert report.all_accepted
    assert journal == Counter(accepted=6)
    assert sorted(server.delivered) == RECIPIENTS
    assert server.connections == 3


async def test_421_after_rcpt_reconnects_and_retries(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(rcpt_421_at=3)
    report, journal = await send(make_campaign, server.port)
    assert report.all_accepted and journal == Counter(accepted=6)
    assert sorted(server.delivered) == RECIPIENTS  # each exactly once
    # 421 is about the session: the transaction goes again whole, and counts as no try.
    assert {r.attempts for r in report.results} == {1}
    assert server.connections >= 2


async def test_451_on_one_recipient_defers_only_it(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(rcpt_once={"r2@example.com": "451 4.3.0 greylisted, try later"})
    report, journal = await send(make_campaign, server.port)
    result = statuses(report)
    assert result["r2@example.com"] == (Status.ACCEPTED, 250, 2)
    assert result["r1@example.com"] == (Status.ACCEPTED, 250, 1)
    assert journal == Counter(accepted=6)
    assert sorted(server.delivered) == RECIPIENTS
    assert len(server.messages) == 2  # the group, then r2 alone with the same Message-ID
    ids = {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in server.messages}
    assert len(ids) == 1


async def test_452_sends_the_rest_in_a_new_transaction(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(max_rcpt=2)
    report, journal = await send(make_campaign, server.port, concurrency=1)
    assert report.all_accepted and journal == Counter(accepted=6)
    assert [len(m.rcpt_tos) for m in server.messages] == [2, 2, 2]
    assert sorted(server.delivered) == RECIPIENTS


async def test_452_splits_do_not_use_up_the_tries(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(max_rcpt=10)
    recipients = [f"x{i}@example.com" for i in range(100)]
    report, journal = await send(
        make_campaign, server.port, recipients=recipients, group_size=100, retry_attempts=2
    )
    assert report.all_accepted and journal == Counter(accepted=100)
    assert [len(m.rcpt_tos) for m in server.messages] == [10] * 10


async def test_550_on_some_and_permanent_refusal_is_final(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    refused = "550 5.1.1 <r4@example.com>: Recipient address rejected"
    server = await faulty(rcpt={"r4@example.com": refused})
    report, journal = await send(make_campaign, server.port)
    assert statuses(report)["r4@example.com"] == (Status.REFUSED, 550, 1)
    assert journal == Counter(accepted=5, refused=1)
    assert "r4@example.com" not in server.delivered
    # A second run sends nothing: accepted and refused are final.
    _again, journal = await send(make_campaign, server.port)
    assert journal == Counter(accepted=5, refused=1)
    assert len(server.messages) == 1


async def test_all_refused_sends_no_message(faulty: Any, make_campaign: CampaignFactory) -> None:
    server = await faulty(rcpt={r: "550 5.1.1 no such user" for r in RECIPIENTS})
    report, journal = await send(make_campaign, server.port)
    assert {s for s, _, _ in statuses(report).values()} == {Status.REFUSED}
    assert journal == Counter(refused=6)
    assert server.messages == []


async def test_535_stops_the_run_without_a_retry_storm(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(auth="535 5.7.8 Authentication credentials invalid")
    report, journal = await send(make_campaign, server.port, password=PASSWORD, concurrency=4)
    assert isinstance(report.fatal, AuthError)
    assert server.connections <= 4  # every worker tried once, nobody retried
    assert {r.status for r in report.results} == {Status.NOT_ATTEMPTED}
    assert all("535" in r.message for r in report.results)
    assert journal == Counter(pending=6)  # nothing failed: the next run sends them all


async def test_drop_after_354_is_retried(faulty: Any, make_campaign: CampaignFactory) -> None:
    server = await faulty(drop_after_354=1)
    report, journal = await send(make_campaign, server.port, concurrency=1)
    assert report.all_accepted and journal == Counter(accepted=6)
    assert sorted(server.delivered) == RECIPIENTS


async def test_drop_after_final_dot_is_unknown_and_not_resent(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(drop_after_dot=1)
    report, journal = await send(make_campaign, server.port, concurrency=1)
    assert {r.status for r in report.results} == {Status.UNKNOWN}
    assert "may or may not have been accepted" in report.results[0].message
    assert journal == Counter(unknown=6)
    assert sorted(server.delivered) == RECIPIENTS  # the server did keep it
    # Resuming does not resend them...
    _, journal = await send(make_campaign, server.port, concurrency=1)
    assert journal == Counter(unknown=6) and len(server.messages) == 1
    # ...unless asked, at the price of a second copy.
    _, journal = await send(make_campaign, server.port, concurrency=1, resend_unknown=True)
    assert journal == Counter(accepted=6) and len(server.messages) == 2


async def test_a_server_that_stops_reading_does_not_hang_the_run(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(stall_after_354=True)
    big = {"big.bin": bytes(range(256)) * (64 * 1024)}  # 16 MiB: more than socket buffers hold
    report, journal = await asyncio.wait_for(
        send(make_campaign, server.port, files=big, data_timeout=0.3, retry_attempts=1), 120
    )
    assert {r.status for r in report.results} == {Status.DEFERRED}
    assert "not delivered" in report.results[0].message
    assert journal == Counter(deferred=6)
    assert server.messages == []


async def test_next_envelope_on_a_dying_connection_is_not_a_failed_try(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(drop_after_dot=1)
    report, journal = await send(make_campaign, server.port, group_size=1, concurrency=1)
    result = statuses(report)
    assert result["r0@example.com"][0] is Status.UNKNOWN  # cut after its final "."
    # r1's envelope went out behind r0's "." on the dying connection: it was not tried.
    assert result["r1@example.com"] == (Status.ACCEPTED, 250, 1)
    assert journal == Counter(accepted=5, unknown=1)
    assert Counter(server.delivered) == Counter(RECIPIENTS)


async def test_slow_final_reply_times_out_as_unknown(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(final_delay=3, final_delay_times=1)
    _report, journal = await send(make_campaign, server.port, concurrency=1, data_timeout=0.2)
    assert journal == Counter(unknown=6)
    assert sorted(server.delivered) == RECIPIENTS


async def test_connect_that_never_answers_is_fatal_at_start(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(greeting_delay=30)
    report, journal = await send(make_campaign, server.port, connect_timeout=0.3)
    assert isinstance(report.fatal, ConnectError)
    assert "could not connect" in str(report.fatal)
    assert journal == Counter(pending=6)


async def test_server_closing_after_n_messages(faulty: Any, make_campaign: CampaignFactory) -> None:
    server = await faulty(close_after=2)
    report, journal = await send(make_campaign, server.port, group_size=1, concurrency=1)
    assert report.all_accepted and journal == Counter(accepted=6)
    assert sorted(server.delivered) == RECIPIENTS
    assert server.connections == 3
    # Told the limit, the client reconnects first and no message is ever refused.
    quiet = await faulty(close_after=2)
    report, journal = await send(
        make_campaign,
        quiet.port,
        group_size=1,
        concurrency=1,
        max_messages_per_connection=2,
        state_dir="state2",
    )
    assert {r.attempts for r in report.results} == {1}
    assert quiet.connections == 3


async def test_plaintext_on_the_tls_port(faulty: Any, make_campaign: CampaignFactory) -> None:
    server = await faulty()
    report, journal = await send(make_campaign, server.port, security="ssl")
    assert isinstance(report.fatal, ConnectError)
    assert journal == Counter(pending=6)


async def test_certificate_for_another_host(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, certs: Certs, tmp_path: Path
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.other.example").configure_cert(context)
    running = await smtp_server(tls_context=context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    report, journal = await send(
        make_campaign,
        running.server.ssl_port,
        security="ssl",
        tls_ca_file=str(tmp_path / "ca.pem"),
        password=PASSWORD,
    )
    assert isinstance(report.fatal, ConnectError)
    assert journal == Counter(pending=6)
    assert "certificate" in str(report.fatal) and "mismatch" in str(report.fatal).lower()
    assert running.server.auth_attempts == []


@pytest.mark.parametrize("starttls", [None, "454 4.7.0 TLS not available due to temporary reason"])
async def test_starttls_stripped_or_refused_never_sends_the_password(
    faulty: Any, make_campaign: CampaignFactory, starttls: str | None
) -> None:
    server = await faulty(starttls=starttls)
    report, journal = await send(make_campaign, server.port, security="starttls", password=PASSWORD)
    assert isinstance(report.fatal, TLSRequiredError)
    assert server.auth_lines == []
    wire = bytes(server.plaintext)
    assert PASSWORD.encode() not in wire
    assert base64.b64encode(PASSWORD.encode()) not in wire
    assert b"AUTH" not in wire
    assert journal == Counter(pending=6)


async def test_journal_that_cannot_be_created(make_campaign: CampaignFactory) -> None:
    with pytest.raises(JournalError, match="cannot create the journal"):
        await send(make_campaign, 1, state_dir="/proc/asyncmailer-state")


async def test_two_runs_of_one_campaign_are_refused(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    from asyncmailer.journal import Journal, journal_path

    server = await faulty()
    path = make_campaign(host="127.0.0.1", port=server.port, security="none", password=None)
    campaign = await load_campaign(path, env={})
    async with await Journal.open(journal_path(campaign.state_dir, campaign.id)):
        with pytest.raises(JournalError, match="another run of this campaign is in progress"):
            await run_campaign(campaign)
    assert server.messages == []


@pytest.mark.parametrize(
    "body",
    [
        "Hi\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.com>\nDATA\nsmuggled\n.\n",
        "Hi\r.\rMAIL FROM:<evil@example.com>\r",
        "Hi\n.\r\nMAIL FROM:<evil@example.com>\r\n",
        "Hi\r\n.\nMAIL FROM:<evil@example.com>\n",
    ],
)
async def test_smuggling_payloads_arrive_as_one_intact_message(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, body: str
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, body=body)
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    # One message from us, the would-be commands inside it as text; nothing else ran.
    [message] = running.messages
    assert message.mail_from == "sender@example.com"
    assert message.rcpt_tos == ("alice@example.com", "bob@example.org", "carol@example.net")
    text = message.data.decode()
    assert "MAIL FROM:<evil@example.com>" in text


# -- refusals of the sender or the session (never facts about the recipients) ---------------

LIST = [f"q{i}@example.com" for i in range(40)]


async def test_a_sending_quota_stops_the_run_and_the_next_run_sends_the_rest(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    # Gmail's real reply once the account's daily limit is used: after 5 messages.
    server = await faulty(quota_after=5)
    report, journal = await send(
        make_campaign, server.port, recipients=LIST, group_size=1, concurrency=4
    )
    assert isinstance(report.fatal, RefusedError) and not report.fatal.temporary
    assert "550 5.4.5 Daily user sending limit exceeded" in str(report.fatal)
    assert "refused the sender" in str(report.fatal)
    assert journal == Counter(accepted=5, pending=35)  # nobody refused
    assert report.counts[Status.REFUSED] == 0
    # The quota resets: the same command sends the rest, nobody twice.
    server.faults.quota_after = None
    again, journal = await send(make_campaign, server.port, recipients=LIST, group_size=1)
    assert again.fatal is None and journal == Counter(accepted=40)
    assert sorted(server.delivered) == sorted(LIST)


@pytest.mark.parametrize(
    "reply",
    [
        "530 5.7.0 Authentication required",
        "554 5.7.1 Sender address rejected: Access denied",
        "550 5.7.26 Unauthenticated email from example.com is not accepted (DMARC)",
    ],
)
async def test_a_refused_sender_or_session_leaves_every_recipient_pending(
    faulty: Any, make_campaign: CampaignFactory, reply: str
) -> None:
    server = await faulty(mail_reply=reply)
    report, journal = await send(make_campaign, server.port)
    assert isinstance(report.fatal, RefusedError)
    assert reply in str(report.fatal)
    assert journal == Counter(pending=6)
    assert server.messages == []


async def test_the_same_policy_refusal_for_every_recipient_is_the_senders(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(rcpt={r: "554 5.7.1 Sender blocked" for r in RECIPIENTS})
    report, journal = await send(make_campaign, server.port)
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "sender"
    assert journal == Counter(pending=6)


async def test_one_recipients_policy_refusal_stays_that_recipients(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(rcpt={"r2@example.com": "550 5.7.1 Relaying denied"})
    report, journal = await send(make_campaign, server.port)
    assert report.fatal is None
    assert journal == Counter(accepted=5, refused=1)


async def test_try_again_later_pauses_and_the_run_goes_on(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    # More temporary refusals in a row than connections: the run waits, then sends the rest.
    server = await faulty(mail_reply="451 4.7.1 Try again later", mail_reply_times=5)
    report, journal = await send(
        make_campaign, server.port, recipients=LIST[:10], group_size=1, concurrency=2
    )
    assert report.fatal is None
    assert journal == Counter(accepted=10)
    assert sorted(server.delivered) == sorted(LIST[:10])
    assert all(r.attempts == 1 for r in report.results)  # the refusals were no tries


async def test_421_at_mail_is_a_new_connection_not_a_try(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    # The server closes after its 421, before the pipelined RCPT replies: still no try.
    server = await faulty(mail_reply="421 4.7.0 Try again later, closing", mail_reply_times=2)
    report, journal = await send(
        make_campaign,
        server.port,
        recipients=LIST[:6],
        group_size=1,
        concurrency=2,
        retry_attempts=1,
    )
    assert report.fatal is None and journal == Counter(accepted=6)
    assert all(r.attempts == 1 for r in report.results)
    assert server.connections >= 3


async def test_a_quota_refusal_of_mail_then_a_close_stops_the_run(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(mail_reply="421 4.7.0 Try again later, closing", mail_reply_times=None)
    server.faults.mail_reply = "550 5.4.5 Daily user sending limit exceeded"
    report, journal = await send(make_campaign, server.port, recipients=LIST[:6], group_size=1)
    assert isinstance(report.fatal, RefusedError) and "5.4.5" in str(report.fatal)
    assert journal == Counter(pending=6)


async def test_a_sender_blocked_at_rcpt_with_one_recipient_per_message_stops_the_run(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    blocked = "554 5.7.1 <sender@example.com>: Sender address rejected: Access denied"
    server = await faulty(rcpt={r: blocked for r in LIST[:5]})
    report, journal = await send(make_campaign, server.port, recipients=LIST[:5], group_size=1)
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "sender"
    assert journal == Counter(pending=5)


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_senders_refusal_at_the_second_rcpt_leaves_everyone_pending(
    faulty: Any, make_campaign: CampaignFactory, pipelining: bool
) -> None:
    # r0 is taken, then the sending quota refuses r1: nobody of the group gets the message,
    # and nobody is written off (without PIPELINING this was a KeyError, exit 70).
    quota = "550 5.4.5 Daily user sending limit exceeded"
    server = await faulty(pipelining=pipelining, rcpt={"r1@example.com": quota})
    report, journal = await send(make_campaign, server.port)
    assert isinstance(report.fatal, RefusedError) and quota in str(report.fatal)
    assert journal == Counter(pending=6)
    assert server.messages == []


@pytest.mark.parametrize("reply", ["354 go ahead", "220 faulty.test ESMTP", "600 what"])
async def test_a_reply_of_the_wrong_kind_to_the_final_dot_is_unknown_not_refused(
    faulty: Any, make_campaign: CampaignFactory, reply: str
) -> None:
    # The server stored the message and answered out of step: nobody may be written off as
    # refused (nor sent again by a later run without --resend-unknown).
    server = await faulty(data_reply=reply)
    _, journal = await send(make_campaign, server.port)
    assert journal == Counter(unknown=6)
    assert len(server.messages) == 1
    _, journal = await send(make_campaign, server.port)
    assert journal == Counter(unknown=6) and len(server.messages) == 1


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_reply_of_the_wrong_kind_to_rcpt_is_tried_again_not_refused(
    faulty: Any, make_campaign: CampaignFactory, pipelining: bool
) -> None:
    server = await faulty(pipelining=pipelining, rcpt_once={"r2@example.com": "354 go ahead"})
    report, journal = await send(make_campaign, server.port)
    assert report.fatal is None
    assert journal == Counter(accepted=6)
    assert sorted(server.delivered) == sorted(RECIPIENTS)


async def test_a_connection_limit_shrinks_the_pool_instead_of_stopping_the_run(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    # The server takes 2 connections at once and resets the rest; the run asks for 5.
    server = await faulty(max_connections=2)
    report, journal = await send(
        make_campaign, server.port, recipients=LIST, group_size=1, concurrency=5
    )
    assert report.fatal is None
    assert journal == Counter(accepted=40)
    assert sorted(server.delivered) == sorted(LIST)
    assert server.refused_connections >= 1  # the limit was hit


async def test_no_connection_at_all_still_stops_the_run_at_once(
    make_campaign: CampaignFactory, unused_tcp_port: int
) -> None:
    report, journal = await send(make_campaign, unused_tcp_port, concurrency=4)
    assert isinstance(report.fatal, ConnectError)
    assert journal == Counter(pending=6)


async def test_a_password_echoed_by_the_server_is_scrubbed_everywhere(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    secret = base64.b64encode(PASSWORD.encode()).decode()
    server = await faulty(echo=f" echo {PASSWORD} {secret}")
    report, _ = await send(make_campaign, server.port, password=PASSWORD)
    assert report.fatal is None
    texts = [r.message for r in report.results]
    assert texts and all("********" in t for t in texts)
    assert not any(PASSWORD in t or secret in t for t in texts)
    assert report.journal is not None
    assert PASSWORD.encode() not in report.journal.read_bytes()


async def test_a_message_over_the_servers_size_stops_the_run_before_anything_is_sent(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(size=2000)
    big = {"report.bin": bytes(range(256)) * 20}  # about 7 KB once encoded
    report, journal = await send(make_campaign, server.port, files=big)
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "message"
    assert "the server accepts at most 2000 (SIZE)" in str(report.fatal)
    assert journal == Counter(pending=6)  # the message's problem, not the recipients'
    assert server.messages == [] and server.mails == 0


async def test_a_refusal_of_the_message_itself_leaves_everyone_pending_not_unknown(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(data_reply="554 5.7.1 Message refused: sender reputation")
    report, journal = await send(make_campaign, server.port)
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "sender"
    assert journal == Counter(pending=6)


async def test_a_quota_reply_to_one_rcpt_sends_no_message_to_the_others(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    # Recipients counted against a quota: the fourth RCPT of the transaction is refused.
    server = await faulty(rcpt={"r3@example.com": "550 5.4.5 Daily recipient limit exceeded"})
    report, journal = await send(make_campaign, server.port)
    assert isinstance(report.fatal, RefusedError)
    assert server.messages == []  # the accepted ones got no message either
    assert journal == Counter(pending=6)


async def test_a_connection_limit_with_a_short_retry_age_still_finishes(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(max_connections=2)
    report, journal = await send(
        make_campaign,
        server.port,
        recipients=LIST,
        group_size=1,
        concurrency=5,
        retry_max_age=0.5,
    )
    assert report.fatal is None and journal == Counter(accepted=40)


async def test_retry_refused_sends_again_to_those_refused_with_the_named_code(
    faulty: Any, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    from .conftest import run_cli

    server = await faulty(
        rcpt={
            "r1@example.com": "550 5.7.1 Relaying denied",
            "r2@example.com": "550 5.1.1 No such user",
        }
    )
    path = plain_list_campaign(make_campaign, server.port, RECIPIENTS, **FAST)
    code, _, err = await run_cli("send", str(path), "-q", cwd=tmp_path)
    assert code == 1, err
    server.faults.rcpt = {}  # the relay was fixed
    code, _, err = await run_cli(
        "send", str(path), "--retry-refused", "--code", "5.7.1", "-q", cwd=tmp_path
    )
    assert code == 1, err  # r2 stays refused: it was not asked for
    assert sorted(server.delivered) == sorted(r for r in RECIPIENTS if r != "r2@example.com")
    code, _, err = await run_cli("send", str(path), "--code", "550", "-q", cwd=tmp_path)
    assert code == 2 and "--code goes with --retry-refused" in err


async def test_a_password_in_a_malformed_reply_line_is_scrubbed(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty(mail_reply=f"250 2.1.0 OK\r\nxx {PASSWORD} \\ '\"", mail_reply_times=1)
    report, _ = await send(make_campaign, server.port, password=PASSWORD, retry_attempts=1)
    texts = " ".join(r.message for r in report.results)
    assert "malformed reply line" in texts
    assert PASSWORD not in texts and "Secret" not in texts


async def test_a_stop_while_a_worker_waits_for_its_rate_turn_sends_nothing_more(
    faulty: Any, make_campaign: CampaignFactory
) -> None:
    server = await faulty()
    path = plain_list_campaign(
        make_campaign, server.port, LIST[:5], group_size=1, concurrency=2, rate="1/second", **FAST
    )
    campaign = await load_campaign(path, env={})
    options = RunOptions()

    class StopOnFirst(Observer):
        async def results(self, results: Any) -> None:
            options.stop.set()  # as SIGTERM does, while the other worker waits for its turn

    await run_campaign(campaign, observer=StopOnFirst(), options=options)
    assert len(server.messages) == 1
