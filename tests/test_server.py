"""The embedded server on its own: certificates, AUTH, storage."""

from __future__ import annotations

import asyncio
import mailbox
import ssl
from pathlib import Path

import aiosmtplib
import pytest

from asyncmailer.errors import InputError
from asyncmailer.server import Account, EmbeddedServer, MailStore, make_certificates


async def test_stores_one_maildir_per_recipient(tmp_path: Path) -> None:
    context, ca_file = make_certificates(tmp_path / "state")
    assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    (tmp_path / "mail").mkdir()  # a reused folder: the Maildir of an earlier run is not counted
    mailbox.Maildir(tmp_path / "mail" / "earlier@example.com", create=True)
    store = MailStore(tmp_path / "mail")
    async with EmbeddedServer(
        tls_context=context, store=store, account=Account("u@example.com", "pässword")
    ) as server:
        client_context = ssl.create_default_context(cafile=str(ca_file))
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.ssl_port, use_tls=True, tls_context=client_context
        )
        async with smtp:
            await smtp.ehlo()
            await smtp.auth_login("u@example.com", "pässword")
            errors, _ = await smtp.sendmail(
                "u@example.com", ["a@example.com", "b@example.com"], b"Subject: x\r\n\r\nhi\r\n"
            )
            assert errors == {}
    assert [p.name for p in store.stored_folders()] == ["a@example.com", "b@example.com"]
    [stored] = list(mailbox.Maildir(tmp_path / "mail" / "b@example.com"))
    assert stored["Delivered-To"] == "b@example.com"
    assert stored["Subject"] == "x"


async def test_mail_without_auth_is_refused_when_an_account_is_set(tmp_path: Path) -> None:
    context, ca_file = make_certificates(tmp_path)
    store = MailStore()
    async with EmbeddedServer(
        tls_context=context, store=store, account=Account("u@example.com", "p")
    ) as server:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=server.ssl_port,
            use_tls=True,
            tls_context=ssl.create_default_context(cafile=str(ca_file)),
        )
        async with smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
                await smtp.mail("u@example.com")
            assert caught.value.code == 530
    assert store.messages == []


def test_only_loopback(tmp_path: Path) -> None:
    context, _ = make_certificates(tmp_path)
    with pytest.raises(InputError, match="loopback only"):
        EmbeddedServer(tls_context=context, store=MailStore(), host="192.0.2.1")


def test_account_repr_hides_the_password() -> None:
    assert "secret" not in repr(Account("u", "secret"))


async def test_each_message_gets_its_own_queue_id_when_sessions_store_at_once(
    tmp_path: Path,
) -> None:
    # The id was read after storing (an await), so sessions finishing together shared one.
    context, ca_file = make_certificates(tmp_path / "state")
    store = MailStore(tmp_path / "mail")
    async with EmbeddedServer(tls_context=context, store=store) as server:

        async def one(number: int) -> str:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=server.ssl_port,
                use_tls=True,
                tls_context=ssl.create_default_context(cafile=str(ca_file)),
            )
            async with smtp:
                await smtp.ehlo()
                await smtp.mail("u@example.com")
                await smtp.rcpt(f"r{number}@example.com")
                reply = await smtp.data(b"Subject: x\r\n\r\nhi\r\n")
                return reply.message

        replies = await asyncio.gather(*(one(n) for n in range(8)))
    assert len(set(replies)) == 8, replies
    assert sorted(int(r.rpartition(" ")[2]) for r in replies) == list(range(1, 9))
