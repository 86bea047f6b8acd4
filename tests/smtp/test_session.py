"""Session against a real aiosmtpd server over real sockets: TLS, STARTTLS, AUTH, replies."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
import trustme

from asyncmailer.config import Secret, Security, ServerSettings
from asyncmailer.errors import AuthError, ConnectError, TLSRequiredError
from asyncmailer.results import Status
from asyncmailer.server import AuthAttempt
from asyncmailer.transport import Envelope, Transaction

from ..conftest import PASSWORD, USER, Certs, ServerFactory, send, session_for, settings_for
from ..postfix import PostfixFactory

DATA = (b"Subject: test\r\n\r\nHello\r\n",)  # without the final "."
B64_PASSWORD = base64.b64encode(PASSWORD.encode()).decode()


async def test_implicit_tls_logs_in_with_auth_login(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    async with session_for(settings_for(running, certs)) as session:
        results = await send(session, USER, ["alice@example.com"], DATA)

    assert [(r.recipient, r.status, r.code) for r in results] == [
        ("alice@example.com", Status.ACCEPTED, 250)
    ]
    commands = running.recorder.commands()
    auth_at = next(i for i, c in enumerate(commands) if c.startswith("AUTH"))
    # The exchange itself: AUTH LOGIN with the base64 login, then the base64 password.
    assert commands[auth_at] == "AUTH LOGIN " + base64.b64encode(USER.encode()).decode()
    assert commands[auth_at + 1] == B64_PASSWORD
    assert running.server.auth_attempts == [AuthAttempt("LOGIN", USER, True)]
    assert all(chunk.tls for conn in running.recorder.connections for chunk in conn)
    [message] = running.messages
    assert message.tls and message.login == USER
    assert message.rcpt_tos == ("alice@example.com",)
    assert commands[-1] == "QUIT"


async def test_starttls_upgrades_before_auth(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    async with session_for(settings_for(running, certs, security=Security.STARTTLS)) as session:
        results = await send(session, USER, ["alice@example.com"], DATA)

    assert results[0].status is Status.ACCEPTED
    plaintext = running.recorder.plaintext()
    assert plaintext == b"EHLO client.test\r\nSTARTTLS\r\n"
    assert running.server.auth_attempts == [AuthAttempt("LOGIN", USER, True)]
    assert running.messages[0].tls


async def test_starttls_not_offered_is_refused_before_auth(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    # A stripped STARTTLS: the server would even take AUTH in clear text. We must not.
    running = await smtp_server(offer_starttls=False, auth_require_tls=False)
    session = session_for(settings_for(running, certs, security=Security.STARTTLS))
    with pytest.raises(TLSRequiredError, match="does not offer STARTTLS"):
        await session.connect()

    wire = b"".join(running.recorder.lines())
    assert b"AUTH" not in wire
    assert PASSWORD.encode() not in wire and B64_PASSWORD.encode() not in wire
    assert running.server.auth_attempts == []
    assert not session.usable


async def test_certificate_from_another_ca_is_refused(
    smtp_server: ServerFactory, certs: Certs, tmp_path: Path
) -> None:
    running = await smtp_server()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    for security in (Security.SSL, Security.STARTTLS):
        session = session_for(settings_for(running, certs, security=security, ca_file=other_ca))
        with pytest.raises(ConnectError, match="certificate verify failed"):
            await session.connect()
    assert running.server.auth_attempts == []
    assert running.messages == []


async def test_tls_verify_false_skips_verification(
    smtp_server: ServerFactory, certs: Certs, tmp_path: Path
) -> None:
    running = await smtp_server()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    settings = settings_for(running, certs, ca_file=other_ca, tls_verify=False)
    async with session_for(settings) as session:
        results = await send(session, USER, ["alice@example.com"], DATA)
    assert results[0].status is Status.ACCEPTED


async def test_wrong_password_raises_auth_error_without_the_password(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    wrong = "неверный-pass"
    session = session_for(settings_for(running, certs, password=wrong))
    with pytest.raises(AuthError) as caught:
        await session.connect()

    err = caught.value
    assert err.code == 535
    text = f"{err} {err!r} {err.args}"
    assert "login as sender@example.com failed: 535" in str(err)
    for secret in (wrong, base64.b64encode(wrong.encode()).decode(), PASSWORD):
        assert secret not in text
    assert running.server.auth_attempts == [AuthAttempt("LOGIN", USER, False)]


async def test_plain_is_used_only_when_login_is_not_offered(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server(exclude_auth=("LOGIN",))
    async with session_for(settings_for(running, certs)) as session:
        await send(session, USER, ["alice@example.com"], DATA)
    assert running.server.auth_attempts == [AuthAttempt("PLAIN", USER, True)]


async def test_no_password_sends_without_auth(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server(account=None)
    async with session_for(settings_for(running, certs, password=None)) as session:
        results = await send(session, USER, ["alice@example.com"], DATA)
    assert results[0].status is Status.ACCEPTED
    assert not any(c.startswith("AUTH") for c in running.recorder.commands())
    assert running.messages[0].login is None


@pytest.mark.parametrize("pipelining", [True, False])
async def test_each_recipient_gets_its_own_reply(
    smtp_server: ServerFactory, certs: Certs, pipelining: bool
) -> None:
    running = await smtp_server(
        pipelining=pipelining,
        refuse={
            "bob@example.org": (550, "5.1.1 <bob@example.org>: Recipient address rejected"),
            "dave@example.org": (451, "4.3.0 Try again later"),
        },
    )
    recipients = ["alice@example.com", "bob@example.org", "carol@example.net", "dave@example.org"]
    async with session_for(settings_for(running, certs)) as session:
        results = await send(session, USER, recipients, DATA)

    by_rcpt = {r.recipient: r for r in results}
    assert [r.recipient for r in results] == recipients
    assert by_rcpt["alice@example.com"].status is Status.ACCEPTED
    assert by_rcpt["carol@example.net"].status is Status.ACCEPTED
    assert by_rcpt["alice@example.com"].message.startswith("2.0.0 OK: queued as")
    bob = by_rcpt["bob@example.org"]
    assert (bob.status, bob.code) == (Status.REFUSED, 550)
    assert bob.message == "5.1.1 <bob@example.org>: Recipient address rejected"
    dave = by_rcpt["dave@example.org"]
    assert (dave.status, dave.code, dave.message) == (
        Status.DEFERRED,
        451,
        "4.3.0 Try again later",
    )
    [message] = running.messages
    assert message.rcpt_tos == ("alice@example.com", "carol@example.net")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_all_refused_sends_no_message_and_keeps_the_connection(
    smtp_server: ServerFactory, certs: Certs, pipelining: bool
) -> None:
    running = await smtp_server(
        pipelining=pipelining, refuse={"bob@example.org": (550, "5.1.1 no such user")}
    )
    async with session_for(settings_for(running, certs)) as session:
        assert session.pipelining is pipelining
        refused = await send(session, USER, ["bob@example.org"], DATA)
        assert session.usable
        accepted = await send(session, USER, ["alice@example.com"], DATA)

    assert refused[0].status is Status.REFUSED
    assert accepted[0].status is Status.ACCEPTED
    commands = running.recorder.commands()
    # Pipelined, DATA went out with the RCPTs and the server refused it (no recipients).
    assert commands.count("DATA") == (2 if pipelining else 1)
    assert "Hello" not in commands[: commands.index("RSET")]
    assert [m.rcpt_tos for m in running.messages] == [("alice@example.com",)]
    assert "RSET" in commands
    assert len(running.recorder.connections) == 1  # reused, not reopened


async def test_one_connection_carries_many_transactions(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    async with session_for(settings_for(running, certs)) as session:
        for i in range(5):
            results = await send(session, USER, [f"user{i}@example.com"], DATA)
            assert results[0].status is Status.ACCEPTED
        assert session.transactions == 5
    assert len(running.recorder.connections) == 1
    assert [m.rcpt_tos for m in running.messages] == [(f"user{i}@example.com",) for i in range(5)]
    assert sum(c.startswith("AUTH") for c in running.recorder.commands()) == 1


async def test_message_larger_than_server_size_is_refused_before_data(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server(data_size_limit=1000)
    big = (b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 20,)
    async with session_for(settings_for(running, certs)) as session:
        assert session.size_limit == 1000
        results = await send(session, USER, ["alice@example.com"], big)
        assert session.usable
    assert results[0].status is Status.REFUSED
    assert "the server accepts at most 1000 (SIZE)" in results[0].message
    assert not any(c.startswith("MAIL") for c in running.recorder.commands())
    assert running.messages == []


async def test_unreachable_server_is_a_connect_error(certs: Certs) -> None:
    settings = ServerSettings(
        host="127.0.0.1",
        port=1,
        security=Security.SSL,
        username=None,
        password=None,
        tls_ca_file=certs.ca_file,
        timeout=5,
    )
    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1: could not connect"):
        await session_for(settings).connect()


def test_repr_never_shows_the_password(certs: Certs) -> None:
    settings = ServerSettings(
        host="127.0.0.1",
        port=465,
        security=Security.SSL,
        username=USER,
        password=Secret(PASSWORD),
        tls_ca_file=certs.ca_file,
    )
    for text in (repr(settings), str(settings), repr(session_for(settings))):
        assert PASSWORD not in text
    assert "********" in repr(settings)


async def test_pipelining_sends_the_envelope_in_one_write(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    recipients = [f"user{i}@example.com" for i in range(20)]
    async with session_for(settings_for(running, certs)) as session:
        assert session.pipelining
        results = await send(session, USER, recipients, DATA)
    assert {r.status for r in results} == {Status.ACCEPTED}
    envelope = (
        b"MAIL FROM:<sender@example.com>\r\n"
        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients)
        + b"DATA\r\n"
    )
    chunks = [c.data for c in running.recorder.connections[0]]
    assert envelope in chunks  # one write, one TCP read on the server
    assert running.messages[0].rcpt_tos == tuple(recipients)


async def test_pipelining_can_be_turned_off(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    settings = dataclasses.replace(settings_for(running, certs), pipelining=False)
    async with session_for(settings) as session:
        assert not session.pipelining
        results = await send(session, USER, ["a@example.com", "b@example.com"], DATA)
    assert [r.status for r in results] == [Status.ACCEPTED, Status.ACCEPTED]
    chunks = [c.data for c in running.recorder.connections[0]]
    assert b"RCPT TO:<a@example.com>\r\n" in chunks


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refused_sender_refuses_everyone(
    smtp_server: ServerFactory, certs: Certs, pipelining: bool
) -> None:
    running = await smtp_server(
        pipelining=pipelining, refuse={USER: (553, "5.7.1 Sender address rejected")}
    )
    async with session_for(settings_for(running, certs)) as session:
        results = await send(session, USER, ["a@example.com", "b@example.com"], DATA)
        assert session.usable
    assert [(r.status, r.code) for r in results] == [(Status.REFUSED, 553)] * 2
    assert {r.message for r in results} == {"sender: 5.7.1 Sender address rejected"}
    assert running.messages == []


async def test_exhausted_after_max_messages(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    settings = dataclasses.replace(settings_for(running, certs), max_messages_per_connection=2)
    async with session_for(settings) as session:
        await send(session, USER, ["a@example.com"], DATA)
        assert not session.exhausted
        await send(session, USER, ["a@example.com"], DATA)
        assert session.exhausted


@pytest.mark.parametrize("pipelining", [True, False])
async def test_dsn_parameters_only_where_dsn_is_offered(
    smtp_server: ServerFactory, certs: Certs, pipelining: bool
) -> None:
    envid = "20261202T000000Z.176489060312.4711.99"
    offered = await smtp_server(dsn=True, pipelining=pipelining)
    plain = await smtp_server(pipelining=pipelining)  # aiosmtpd: 555 to any DSN parameter
    for running in (offered, plain):
        async with session_for(settings_for(running, certs)) as session:
            sent = await session.send(
                Transaction(Envelope(USER, ["a@example.com", "b@example.com"], envid), DATA)
            )
        assert [r.status for r in sent.results] == [Status.ACCEPTED] * 2
    commands = offered.recorder.commands()
    [mail] = [c for c in commands if c.startswith("MAIL FROM:")]
    assert mail.endswith(f" RET=HDRS ENVID={envid}")
    assert "RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY" in commands
    assert not any("ENVID" in c or "NOTIFY" in c for c in plain.recorder.commands())


async def test_postfix_takes_the_dsn_parameters_and_passes_them_on(
    postfix: PostfixFactory, certs: Certs
) -> None:
    relay = await postfix()
    settings = ServerSettings(
        host="127.0.0.1",
        port=relay.port,
        security=Security.STARTTLS,
        username=None,
        password=None,
        tls_ca_file=certs.ca_file,
        timeout=5,
    )
    envid = "20261202T000000Z.176489060312.4711.99"
    async with session_for(settings) as session:
        assert session.dsn
        sent = await session.send(Transaction(Envelope(USER, ["a@example.com"], envid), DATA))
    assert sent.results[0].status is Status.ACCEPTED
    await relay.sink.wait_for(1)
    [arrived] = relay.sink.messages
    assert f"ENVID={envid}".upper() in arrived.mail_options and "RET=HDRS" in arrived.mail_options
    assert "NOTIFY=FAILURE,DELAY" in arrived.rcpt_options
