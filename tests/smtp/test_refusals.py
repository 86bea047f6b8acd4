"""Whom a refusal is about (smtp/refusals.py), and what the run makes of it (run/policy.py),
against Postfix's own refusals: a private instance (tests/postfix.py) with real limits; and
which refusals say an address does not exist, for good (what the suppression store keeps)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiosmtplib
import pytest
from aiosmtplib import SMTPResponse

from asyncmailer.config import load_campaign
from asyncmailer.errors import RefusedError
from asyncmailer.journal import JournalReader
from asyncmailer.ledger import JournalState
from asyncmailer.results import CampaignReport
from asyncmailer.run.campaign import RunOptions, run_campaign
from asyncmailer.smtp.refusals import (
    Scope,
    Stage,
    address_gone,
    names_sender,
    refuses_helo,
    scope_of,
    scope_of_rcpts,
)

from ..conftest import CampaignFactory, plain_list_campaign
from ..postfix import Limits, PostfixFactory

SENDER = "sender@example.com"  # the campaigns' from (tests/conftest.py)
LIST = [f"p{i:02}@example.com" for i in range(12)]
FAST = {"retry_delay": 0.2, "timeout": 5, "connect_timeout": 5, "data_timeout": 5}


async def send(
    make_campaign: CampaignFactory, port: int, recipients: list[str], **keys: Any
) -> tuple[CampaignReport, Counter[JournalState]]:
    """A list campaign through Postfix on loopback (no TLS, no AUTH): the report and the
    journal's counts."""
    settings: dict[str, Any] = {"group_size": 1, "concurrency": 2, **FAST, **keys}
    path = plain_list_campaign(make_campaign, port, recipients, **settings)
    report = await run_campaign(await load_campaign(path, env={}), options=RunOptions())
    assert report.journal is not None
    return report, await JournalReader(report.journal).counts()


async def test_postfixs_own_replies_are_classified_by_whom_they_are_about(
    postfix: PostfixFactory,
) -> None:
    # Postfix's replies at its limits, as it sends them, each taken as it should be.
    relay = await postfix(
        Limits(blocked_senders=("blocked@example.com",), recipient_limit=1, message_rate=2)
    )
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    async with smtp:
        await smtp.ehlo()

        async def say(verb: bytes, argument: str) -> SMTPResponse:
            return await smtp.execute_command(verb, argument.encode())

        await say(b"MAIL", "FROM:<blocked@example.com>")
        blocked = await say(b"RCPT", "TO:<a@example.com>")
        await smtp.rset()
        await say(b"MAIL", f"FROM:<{SENDER}>")
        await say(b"RCPT", "TO:<a@example.com>")
        too_many = await say(b"RCPT", "TO:<b@example.com>")
        await smtp.rset()
        rate = await say(b"MAIL", f"FROM:<{SENDER}>")
    assert blocked.code == 554 and names_sender(blocked, "blocked@example.com")
    assert (too_many.code, scope_of(too_many, Stage.RCPT)) == (452, Scope.RECIPIENT)
    # 450 4.7.1 "too much mail" (not a 421): the sender, for now: the run pauses, no try.
    assert rate.code == 450 and scope_of(rate, Stage.MAIL) is Scope.SENDER

    busy = await postfix(Limits(connection_count=1))
    first = aiosmtplib.SMTP(hostname="127.0.0.1", port=busy.port, start_tls=False)
    async with first:
        second = aiosmtplib.SMTP(hostname="127.0.0.1", port=busy.port, start_tls=False)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await second.connect()
    assert refused.value.code == 421 and "too many connections" in refused.value.message
    reply = SMTPResponse(refused.value.code, refused.value.message)
    assert scope_of(reply, Stage.MAIL) is Scope.SESSION


async def test_a_sender_refused_by_check_sender_access_stops_the_run(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(Limits(blocked_senders=(SENDER,)))
    report, journal = await send(make_campaign, relay.port, LIST[:4])
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "sender"
    assert "5.7.1" in str(report.fatal) and "Sender address rejected" in str(report.fatal)
    assert journal == Counter(pending=4)  # nobody recorded as refused
    assert relay.sink.messages == []


async def test_a_client_refused_by_postfix_stops_the_run_and_nobody_is_refused(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    # "554 5.7.1 <unknown[127.0.0.1]>: Client host rejected": Postfix names each recipient
    # (it refuses at RCPT), but it is about this client. One recipient per message, as in a
    # personalised campaign: nothing else tells it from a refused recipient.
    relay = await postfix(Limits(blocked_client=True))
    report, journal = await send(make_campaign, relay.port, LIST[:4])
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "session"
    assert "Client host rejected" in str(report.fatal)
    assert journal == Counter(pending=4)
    assert relay.sink.messages == []


async def test_an_ehlo_name_postfix_refuses_stops_the_run_and_helo_name_mends_it(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(Limits(fqdn_helo=True))
    report, journal = await send(make_campaign, relay.port, LIST[:4], helo_name="mailer")
    assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "session"
    assert "504 5.5.2 <mailer>: Helo command rejected" in str(report.fatal)
    assert "set helo_name to this host's name in DNS" in str(report.fatal)
    assert journal == Counter(pending=4)

    report, journal = await send(make_campaign, relay.port, LIST[:4], helo_name="mx.example.com")
    assert report.fatal is None and journal == Counter(accepted=4)
    assert sorted(await relay.sink.wait_for(4)) == LIST[:4]


async def test_postfixs_recipient_limit_sends_the_rest_in_the_next_transaction(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(Limits(recipient_limit=5))
    report, journal = await send(make_campaign, relay.port, LIST, group_size=12, retry_attempts=1)
    assert report.fatal is None and journal == Counter(accepted=12)
    assert sorted(await relay.sink.wait_for(12)) == LIST
    assert sorted(len(m.rcpt_tos) for m in relay.sink.messages) == [2, 5, 5]
    assert all(r.attempts == 1 for r in report.results)  # the splits used up no try


async def test_postfixs_message_rate_limit_defers_and_everyone_arrives_once(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(Limits(message_rate=3, rate_time_unit=1))
    report, journal = await send(make_campaign, relay.port, LIST[:8], concurrency=1)
    assert report.fatal is None and journal == Counter(accepted=8)
    assert sorted(await relay.sink.wait_for(8)) == LIST[:8]  # each exactly once
    assert "Message delivery request rate limit exceeded" in relay.log()  # the limit was hit
    assert all(r.attempts == 1 for r in report.results)  # its refusals were no tries


async def test_postfixs_connection_count_limit_means_fewer_connections(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    relay = await postfix(Limits(connection_count=2))
    report, journal = await send(make_campaign, relay.port, LIST, concurrency=5)
    assert report.fatal is None and journal == Counter(accepted=12)
    assert sorted(await relay.sink.wait_for(12)) == LIST
    assert "Connection concurrency limit exceeded" in relay.log()  # the limit was hit


async def test_relay_access_denied_to_everyone_is_the_sessions_not_the_recipients(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    # Postfix wants a login to relay, and the campaign has no password: its 554 5.7.1 names
    # each recipient, but is about the session. Nobody may be written off for good.
    relay = await postfix(accounts={SENDER: "secret"})
    for group_size in (1, 3):
        report, journal = await send(
            make_campaign, relay.port, LIST[:3], group_size=group_size, campaign=f"g{group_size}"
        )
        assert isinstance(report.fatal, RefusedError) and report.fatal.scope == "session"
        assert "Relay access denied; it relays only for clients that log in" in str(report.fatal)
        assert journal == Counter(pending=3)
    assert relay.sink.messages == []


def test_relay_denied_to_one_of_several_is_that_recipients() -> None:
    denied = SMTPResponse(554, "5.7.1 <b@example.net>: Relay access denied")
    assert scope_of_rcpts([denied], every=False) is Scope.RECIPIENT
    assert scope_of_rcpts([denied], every=True) is Scope.SESSION
    assert scope_of_rcpts([SMTPResponse(550, "5.7.1 Relaying denied")] * 2, every=True) is (
        Scope.SESSION
    )


@pytest.mark.parametrize(
    ("code", "text", "helo"),
    [
        (554, "5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied", False),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            False,
        ),
        (550, "5.7.1 Client host blocked", False),
        (504, "5.5.2 <mailer>: Helo command rejected: need fully-qualified hostname", True),
        (450, "4.7.1 <mailer>: Helo command rejected: Host not found", True),
        # Postfix's check_reverse_client_hostname_access, reject_rhsbl_reverse_client and
        # reject_rhsbl_helo
        (554, "5.7.1 <unknown[127.0.0.1]>: Unverified Client host rejected: Access denied", False),
        (
            554,
            "5.7.1 Service unavailable; Unverified Client host [bad.example] blocked using"
            " dbl.example.org",
            False,
        ),
        (
            554,
            "5.7.1 Service unavailable; Helo command [mailer.example] blocked using"
            " dbl.example.org",
            True,
        ),
    ],
)
def test_a_refusal_of_the_client_or_its_ehlo_name_is_the_sessions(
    code: int, text: str, helo: bool
) -> None:
    # Postfix says these at RCPT, naming the recipient: they are still about this client.
    reply = SMTPResponse(code, text)
    assert scope_of(reply, Stage.RCPT) is Scope.SESSION
    assert scope_of(reply, Stage.MAIL) is Scope.SESSION
    assert refuses_helo(reply) is helo


@pytest.mark.parametrize(
    "text",
    [
        "5.1.1 <client@example.org>: Recipient address rejected: User unknown",
        "5.7.1 <x@example.org>: Recipient address rejected: host client.example.org blocked",
        "5.7.1 <helo@example.org>: Recipient address rejected: Access denied",
        # A relay quoting the server it asked (Postfix's address verification, Exim's callout)
        "5.1.1 <bob@example.org>: Recipient address rejected: unverified address: host"
        " mx.example.org[192.0.2.7] said: 554 5.7.1 Client host rejected: Access denied",
        "Callout verification failed: 550 Client host rejected",
        "5.1.1 <bob@example.org>: Recipient address rejected: host mx.example.org said:"
        " 504 5.5.2 <relay>: Helo command rejected",
    ],
)
def test_a_recipients_refusal_that_mentions_a_client_or_helo_stays_the_recipients(
    text: str,
) -> None:
    reply = SMTPResponse(550, text)
    assert scope_of(reply, Stage.RCPT) is Scope.RECIPIENT
    assert not refuses_helo(reply)


@pytest.mark.parametrize(
    ("code", "text", "gone"),
    [
        (550, "5.1.1 <x@example.org>: Recipient address rejected: User unknown", "550 5.1.1"),
        (550, "5.1.1 The email account that you tried to reach does not exist", "550 5.1.1"),
        (554, "5.1.2 Bad destination system address", "554 5.1.2"),
        (556, "5.1.10 Recipient address has null MX", "556 5.1.10"),
        (550, "User unknown", "550"),
        (550, "No such user here", "550"),
        (550, "mailbox not found", "550"),
        (550, "<x@example.org>... User unknown in virtual mailbox table", "550"),
    ],
)
def test_permanent_address_failures(code: int, text: str, gone: str) -> None:
    assert address_gone(code, text) == gone


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.7.1 Relaying denied"),  # policy: not a fact about the address
        (554, "5.7.1 <me@example.com>: Sender address rejected: Access denied"),
        (550, "5.4.5 Daily user sending limit exceeded"),  # the sender's quota
        (552, "5.2.2 Mailbox full"),
        (450, "4.1.1 User unknown (try later)"),  # temporary
        (451, "User unknown"),
        (550, "Requested action not taken: mailbox unavailable"),  # also said for blocks
        (553, "User unknown"),  # 550 alone without an enhanced code
        (550, "4.1.1 User unknown"),  # an enhanced code of another class
        (550, "5.1.3 Bad destination mailbox address syntax"),
        (None, "5.1.1 User unknown"),  # no reply code: the connection was lost
    ],
)
def test_not_address_failures(code: int | None, text: str) -> None:
    assert address_gone(code, text) is None
