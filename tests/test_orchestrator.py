"""A whole campaign through the pool to a real server, checked from what the server received."""

from __future__ import annotations

from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from asyncmailer.config import load_campaign
from asyncmailer.errors import AuthError, TLSRequiredError
from asyncmailer.orchestrator import Group, run_campaign
from asyncmailer.recipients import parse_mailbox
from asyncmailer.results import RecipientResult, Status

from .conftest import PASSWORD, SUBJECT, CampaignFactory, ServerFactory

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

    async def on_results(results: Sequence[RecipientResult]) -> None:
        seen.extend(results)

    report = await run_campaign(await load_campaign(path, env={}), on_results=on_results)

    assert report.all_accepted and report.fatal is None
    assert seen == report.results
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
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server()
    path = make_campaign(port=running.server.ssl_port, concurrency=3)
    campaign = await load_campaign(path, env={})
    groups = [Group(to=(parse_mailbox(f"user{i}@example.com"),)) for i in range(30)]
    report = await run_campaign(campaign, groups=groups)

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
