"""The security/port mix-ups (smtp/mixups.py): each fails within seconds with the fix named,
against the in-process servers and against Postfix; a server that greets late is not one."""

from __future__ import annotations

import dataclasses
import time

import pytest

from asyncmailer.config import Security, ServerSettings
from asyncmailer.errors import ConnectError

from ..conftest import CampaignFactory, Certs, ServerFactory, run_cli, session_for, settings_for
from ..faulty import Faults, FaultyServer
from ..postfix import PostfixFactory


def settings_for_port(port: int, certs: Certs) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=port,
        security=Security.STARTTLS,
        username=None,
        password=None,
        tls_ca_file=certs.ca_file,
        timeout=5,
    )


async def connect_error(settings: ServerSettings) -> tuple[str, float]:
    """Connect a session with `settings`; the error's text and how long it took."""
    began = time.monotonic()
    with pytest.raises(ConnectError) as failed:
        async with session_for(settings):
            pass
    return str(failed.value), time.monotonic() - began


async def test_ssl_against_a_starttls_port_names_starttls(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    settings = settings_for(running, certs, security=Security.SSL, password=None)
    settings = dataclasses.replace(settings, port=running.server.starttls_port)
    text, took = await connect_error(settings)
    assert "use security: starttls (or port: 465" in text
    assert "WRONG_VERSION_NUMBER" not in text and took < 3


async def test_starttls_against_an_implicit_tls_port_names_ssl(
    smtp_server: ServerFactory, certs: Certs
) -> None:
    running = await smtp_server()
    settings = settings_for(running, certs, security=Security.STARTTLS, password=None)
    settings = dataclasses.replace(settings, port=running.server.ssl_port, connect_timeout=30)
    text, took = await connect_error(settings)
    assert "implicit-TLS port; use security: ssl (or port: 587" in text
    assert took < 6  # not connect_timeout's 30 s


async def test_a_server_that_greets_late_is_waited_for(certs: Certs) -> None:
    # Silent past PROBE_AFTER, but plain text: the probe finds no TLS, the session goes on.
    server = await FaultyServer(Faults(greeting_delay=2.5)).start()
    try:
        settings = dataclasses.replace(
            settings_for_port(server.port, certs), security=Security.NONE, connect_timeout=10
        )
        async with session_for(settings) as session:
            assert session.usable
    finally:
        await server.stop()


async def test_both_mix_ups_against_postfix(postfix: PostfixFactory, certs: Certs) -> None:
    relay = await postfix()
    plain = settings_for_port(relay.port, certs)
    text, took = await connect_error(dataclasses.replace(plain, security=Security.SSL))
    assert "use security: starttls" in text and took < 3
    implicit = dataclasses.replace(plain, port=relay.tls_port)
    text, took = await connect_error(implicit)
    assert "use security: ssl" in text and took < 6


async def test_the_cli_says_it_in_one_line(
    smtp_server: ServerFactory, make_campaign: CampaignFactory
) -> None:
    running = await smtp_server(account=None)
    path = make_campaign(password=None, port=running.server.ssl_port, security="starttls")
    code, _out, err = await run_cli("--config", str(path), cwd=path.parent.parent)
    assert code == 3
    lines = [line for line in err.splitlines() if "security: ssl" in line]
    assert len(lines) == 1 and lines[0].startswith("asyncmailer:"), err
