"""SMTP replies off the wire: framing (a pure function) and a protocol that keeps every reply.

aiosmtplib's protocol expects one command, one reply: with PIPELINING several replies arrive in
one read, and it would drop or stall on them. Once a session has connected, secured and logged
in through aiosmtplib, its transport is handed to `ReplyReader`, which frames every complete
reply into a queue, so any number of commands can be written before the replies are read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

from aiosmtplib import SMTPReadTimeoutError, SMTPResponse, SMTPServerDisconnected

from ..display import printable, shorten

__all__ = ["MAX_REPLY", "ReplyReader", "parse_replies"]

MAX_REPLY = 64 * 1024  # a server sending more than this without a final line is broken
_KNOWN_REPLIES = 64  # one-line replies a connection remembers (see parse_replies)


class ReplyError(SMTPServerDisconnected):
    """The server sent something that is not an SMTP reply; the connection is dropped."""


def parse_replies(
    buffer: bytearray,
    known: dict[bytes, SMTPResponse] | None = None,
    scrub: Callable[[str], str] = str,
) -> list[SMTPResponse]:
    """Take every complete reply off the front of `buffer` (which is consumed).

    A reply is one or more lines ``NNN-text`` ended by a line ``NNN text`` (RFC 5321 4.2).
    `known` remembers one-line replies already parsed, by their raw line: a server repeats
    most of its replies word for word (``250 2.1.5 Ok``, ``354 End data ...``), and a lookup
    costs a fraction of parsing one (replies are immutable, so they can be shared).

    `scrub` is applied to every reply's text (the password must never come out of here).

    :raises ReplyError: a line that does not start with a three-digit code.
    """
    last = buffer.rfind(b"\n")
    if last == -1:
        if len(buffer) > MAX_REPLY:
            raise ReplyError("reply too long")
        return []
    replies: list[SMTPResponse] = []
    pending: list[bytes] = []
    consumed = offset = 0
    for raw in bytes(buffer[: last + 1]).split(b"\n")[:-1]:
        offset += len(raw) + 1
        if known is not None and not pending and (reply := known.get(raw)) is not None:
            replies.append(reply)
            consumed = offset
            continue
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) < 3 or not line[:3].isdigit():
            # Decoded and scrubbed first: an escaped repr() would hide the password from
            # the scrubber (and a cut could leave part of it).
            text = printable(scrub(line.decode("utf-8", "replace")))
            raise ReplyError(f"malformed reply line: {shorten(text, 80)}")
        if line[3:4] == b"-":
            pending.append(line[4:].strip())
            continue
        if pending:
            pending.append(line[4:].strip())
            text = b"\n".join(pending).decode("utf-8", "replace")
            reply = SMTPResponse(int(line[:3]), scrub(text))
            pending = []
        else:
            reply = SMTPResponse(int(line[:3]), scrub(line[4:].strip().decode("utf-8", "replace")))
            if known is not None:
                if len(known) >= _KNOWN_REPLIES:  # lines that never repeat (queue ids)
                    known.clear()
                known[raw] = reply
        replies.append(reply)
        consumed = offset
    del buffer[:consumed]
    if len(buffer) > MAX_REPLY:
        raise ReplyError("reply too long")
    return replies


async def _wait(waiter: asyncio.Future[None], timeout: float | None) -> None:
    """Wait for `waiter`, failing it after `timeout` seconds: one timer per wait, without
    asyncio.wait_for's extra task and callbacks."""
    timer = (
        asyncio.get_running_loop().call_later(timeout, _expire, waiter)
        if timeout is not None
        else None
    )
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("timed out waiting for the server"))


class ReplyReader(asyncio.Protocol):
    """Collects replies in arrival order; `read()` returns the next one."""

    def __init__(self, *, scrub: Callable[[str], str] = str) -> None:
        self._scrub = scrub
        self._buffer = bytearray()
        self._known: dict[bytes, SMTPResponse] = {}
        self._replies: deque[SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            self._replies.extend(parse_replies(self._buffer, self._known, self._scrub))
        except ReplyError as err:
            self._fail(err)
            if self.transport is not None:
                self.transport.abort()
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        err = SMTPServerDisconnected("connection lost" + (f": {exc}" if exc else ""))
        self._fail(err)
        self.transport = None
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(err)
            self._drain_waiter.exception()  # retrieved: nobody may be draining

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _fail(self, err: Exception) -> None:
        if self._error is None:
            self._error = err
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def paused(self) -> bool:
        """The transport's write buffer is over its high-water mark: `drain()` would wait."""
        return self._paused

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self._error

    def write(self, data: bytes | memoryview) -> None:
        if not self.is_open:
            raise self._error or SMTPServerDisconnected("connection lost")
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait while the transport's write buffer is over its high-water mark.

        :raises SMTPReadTimeoutError: the server did not take the data in `timeout` seconds.
        """
        if self._paused and self.is_open:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await _wait(self._drain_waiter, timeout)

    def take(self) -> SMTPResponse | None:
        """The next reply if it has arrived, else None: no coroutine for a reply at hand
        (with pipelining, most are)."""
        return self._replies.popleft() if self._replies else None

    async def read(self, timeout: float | None) -> SMTPResponse:
        """The next reply, in order.

        :raises SMTPServerDisconnected: the connection was lost first.
        :raises SMTPReadTimeoutError: no reply in `timeout` seconds.
        """
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(self._waiter, timeout)
            finally:
                self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
