"""The private Postfix instances of tests/postfix.py: they take mail on loopback and relay it
to their sink, and stop and start on demand."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest
from aiosmtplib import SMTPResponse

from .conftest import Certs
from .postfix import Limits, PostfixFactory

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


async def send_one(port: int, recipients: list[str]) -> dict[str, SMTPResponse]:
    """One message over plain SMTP: the refused recipients' replies."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
    async with smtp:
        errors, _ = await smtp.sendmail("me@example.com", recipients, MESSAGE)
    return errors


async def test_an_instance_relays_what_it_accepts_to_its_sink(postfix: PostfixFactory) -> None:
    relay = await postfix(Limits())
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    async with smtp:
        await smtp.ehlo()
        errors, _ = await smtp.sendmail(
            "me@example.com", ["a@example.com"], b"Subject: hi\r\n\r\nhello\r\n"
        )
    assert errors == {}
    assert await relay.sink.wait_for(1) == ["a@example.com"]


async def test_instances_run_side_by_side_and_one_stops_and_starts(
    postfix: PostfixFactory,
) -> None:
    one = await postfix(Limits(recipient_limit=1), name="one")
    two = await postfix(Limits(), name="two")
    assert len({one.port, one.tls_port, two.port, two.tls_port}) == 4
    await send_one(two.port, ["a@example.com", "b@example.com"])
    assert await two.sink.wait_for(2) == ["a@example.com", "b@example.com"]
    refused = await send_one(one.port, ["a@example.com", "b@example.com"])
    assert {r: reply.code for r, reply in refused.items()} == {"b@example.com": 452}  # its own
    await one.stop()
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await send_one(one.port, ["c@example.com"])
    await send_one(two.port, ["c@example.com"])  # the other goes on
    await one.start()
    await send_one(one.port, ["d@example.com"])
    assert sorted(await one.sink.wait_for(2)) == ["a@example.com", "d@example.com"]
    assert "c@example.com" in await two.sink.wait_for(3)


async def test_implicit_tls_and_starttls_with_the_test_ca(
    postfix: PostfixFactory, certs: Certs
) -> None:
    relay = await postfix()
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    implicit = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.tls_port, use_tls=True, tls_context=context
    )
    async with implicit:
        await implicit.sendmail("me@example.com", ["tls@example.com"], MESSAGE)
    upgraded = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=context
    )
    async with upgraded:
        assert upgraded.get_transport_info("sslcontext") is not None
        await upgraded.sendmail("me@example.com", ["st@example.com"], MESSAGE)
    assert sorted(await relay.sink.wait_for(2)) == ["st@example.com", "tls@example.com"]


async def test_with_accounts_only_a_client_that_logged_in_may_relay(
    postfix: PostfixFactory, certs: Certs
) -> None:
    relay = await postfix(accounts={"sender@example.com": "пароль-1"})
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, tls_context=context, timeout=5)
    async with smtp:
        await smtp.ehlo()
        assert "plain" in smtp.server_auth_methods and "login" in smtp.server_auth_methods
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # 554 5.7.1 Relay access denied
            await smtp.sendmail("sender@example.com", ["a@example.com"], MESSAGE)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.auth_login("sender@example.com", "wrong")
        await smtp.auth_login("sender@example.com", "пароль-1")
        await smtp.sendmail("sender@example.com", ["b@example.com"], MESSAGE)
    assert await relay.sink.wait_for(1) == ["b@example.com"]
