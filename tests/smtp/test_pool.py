"""The session pool: lazy connections, reuse, replacement of broken ones, a hard bound."""

from __future__ import annotations

import asyncio

import pytest

from asyncmailer.config import Secret, Security, ServerSettings
from asyncmailer.errors import AuthError
from asyncmailer.smtp.pool import SessionPool
from asyncmailer.smtp.session import Session, build_tls_context

from ..conftest import PASSWORD, USER, Certs, RunningServer, ServerFactory, send

DATA = (b"Subject: pool\r\n\r\nbody\r\n",)  # without the final "."


def factory(running: RunningServer, certs: Certs, password: str = PASSWORD) -> Session:
    settings = ServerSettings(
        host="127.0.0.1",
        port=running.server.ssl_port,
        security=Security.SSL,
        username=USER,
        password=Secret(password),
        tls_ca_file=certs.ca_file,
        timeout=10,
    )
    return Session(settings, tls_context=build_tls_context(settings), local_hostname="t")


async def test_sessions_are_reused_not_reopened(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    async with SessionPool(lambda: factory(running, certs), size=4) as pool:
        for i in range(5):
            async with pool.connection() as session:
                await send(session, USER, [f"u{i}@example.com"], DATA)
        assert pool.connections_opened == 1
        assert "idle=1" in repr(pool)
    assert len(running.messages) == 5
    assert running.recorder.commands()[-1] == "QUIT"  # closed politely


async def test_pool_never_exceeds_its_size(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    pool = SessionPool(lambda: factory(running, certs), size=2)
    first = await pool.acquire()
    second = await pool.acquire()
    third = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    assert not third.done()  # waits for a free slot
    assert "busy=2" in repr(pool)
    await pool.release(first)
    assert await third is first  # the released session is handed on, no new connection
    await pool.release(second)
    await pool.release(first)
    await pool.close()
    assert pool.connections_opened == 2


async def test_broken_session_is_replaced(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    async with SessionPool(lambda: factory(running, certs), size=1) as pool:
        async with pool.connection() as session:
            session.abort()  # e.g. the server dropped us
        async with pool.connection() as fresh:
            assert fresh is not session and fresh.usable
            await send(fresh, USER, ["x@example.com"], DATA)
        assert pool.connections_opened == 2
    assert len(running.messages) == 1


async def test_connect_failure_frees_the_slot(smtp_server: ServerFactory, certs: Certs) -> None:
    running = await smtp_server()
    pool = SessionPool(lambda: factory(running, certs, password="bad"), size=1)
    for _ in range(2):  # the slot is released each time, so the second try does not hang
        with pytest.raises(AuthError):
            await asyncio.wait_for(pool.acquire(), 10)
    await pool.close()


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SessionPool(lambda: None, size=0)  # type: ignore[arg-type, return-value]
