"""A pool of long-lived SMTP sessions, at most `size` at once, each reused for many sends: the
SMTP `transport.Transport`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .session import Session

__all__ = ["SessionPool"]


class SessionPool:
    """Lend sessions to callers, one transaction at a time.

    A borrowed session that is still usable goes back to the idle list for the next caller;
    one that has carried `max_messages_per_connection` messages is closed with QUIT, and a
    broken one is dropped; either way its slot reopens on demand. Connections open lazily, so a
    campaign of one message opens one connection. Errors from `Session.connect()` propagate to
    the caller that asked for the session (`ConnectError`, `TLSRequiredError`, `AuthError`).
    """

    def __init__(self, factory: Callable[[], Session], *, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._factory = factory
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Session] = []
        self._busy: set[Session] = set()
        self.connections_opened = 0

    def __repr__(self) -> str:
        return f"<SessionPool size={self.size} busy={len(self._busy)} idle={len(self._idle)}>"

    async def __aenter__(self) -> SessionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def acquire(self) -> Session:
        """Wait for a free slot; reuse an idle session or open a new one."""
        await self._slots.acquire()
        try:
            while self._idle:
                session = self._idle.pop()
                if session.usable:
                    break
                session.abort()
            else:
                session = self._factory()
                self.connections_opened += 1
                try:
                    await session.connect()
                except BaseException:
                    session.abort()  # cancelled mid-handshake: no half-open connection
                    raise
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(session)
        return session

    async def release(self, session: Session) -> None:
        """Take a session back: keep it if usable; QUIT it if it has carried its
        `max_messages_per_connection`; drop it if broken or inside a transaction it began."""
        self._busy.discard(session)
        try:
            if session.begun:  # its caller did not send what it began: close it
                session.abort()
            elif session.usable and not session.exhausted:
                self._idle.append(session)
            elif session.usable:
                await asyncio.shield(session.close())
            else:
                session.abort()
        finally:
            self._slots.release()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Session]:
        """Borrow a session for one transaction or a pipelined chain of them.

        :raises DeliveryError: a new connection failed (`ConnectError`, `TLSRequiredError`,
            `AuthError`).
        """
        session = await self.acquire()
        try:
            yield session
        except BaseException:
            session.abort()
            raise
        finally:
            await self.release(session)

    async def close(self) -> None:
        """QUIT every idle session, close busy ones hard. Shielded from cancellation."""
        idle, self._idle = self._idle, []
        for session in self._busy:
            session.abort()
        if idle:
            await asyncio.shield(asyncio.gather(*(s.close() for s in idle)))
