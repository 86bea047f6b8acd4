"""One SMTP session: connect, secure, log in once, then run many mail transactions.

`Session` is the only class that talks to the network. It uses aiosmtplib for the connection,
TLS, EHLO, AUTH and reply parsing, and drives each transaction itself (MAIL, RCPT per recipient,
DATA with bytes prepared once by `message.MessageTemplate`) so that it knows, for every recipient,
the server's own reply, and knows whether a lost connection happened before or after the final
``.`` (RFC 1047: after it, the message may or may not have been taken).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiosmtplib
from aiosmtplib import SMTPResponse

from ..config import Security, ServerSettings
from ..errors import AuthError, ConnectError, TLSRequiredError
from ..message import END_OF_DATA
from ..results import RecipientResult, Status
from .replies import ReplyReader

__all__ = ["Envelope", "Session", "build_tls_context", "classify", "message_size"]

_JOIN_BELOW = 64 * 1024
_CHUNK = 256 * 1024
Envelope = tuple[str, Sequence[str], int]  # sender, recipients, message size
# Anything that leaves the connection in an unknown state: the session is dropped.
_CONNECTION_ERRORS = (aiosmtplib.SMTPException, OSError)


def build_tls_context(settings: ServerSettings) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, certificate and host name verified.

    Trusts the system store, or only `tls_ca_file` when given. Verification is off only when
    the config says ``tls_verify: false``. Reads files: call it in a thread.
    """
    cafile = str(settings.tls_ca_file) if settings.tls_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def message_size(parts: Sequence[bytes]) -> int:
    """The bytes of a message as `Session.send()` writes it: its parts and the final "."."""
    return sum(map(len, parts)) + len(END_OF_DATA)


def classify(code: int) -> Status:
    """The status a failed reply code gives its recipients: 4xx is temporary, else permanent."""
    return Status.DEFERRED if 400 <= code < 500 else Status.REFUSED


class Session:
    """A long-lived SMTP connection, reused across transactions.

    Use as an async context manager, or call `connect()` then `close()`. After a failed
    transaction the session is RSET; after a lost connection `usable` is False.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        tls_context: ssl.SSLContext | None,
        local_hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self._tls_context = tls_context
        self._smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            use_tls=settings.security is Security.SSL,
            start_tls=False,
            tls_context=tls_context if settings.security is not Security.NONE else None,
            timeout=settings.connect_timeout,
            local_hostname=local_hostname,
        )
        self.transactions = 0
        self.pipelining = False
        self._broken = False
        self._closing = False
        self._reader: ReplyReader | None = None
        self._extensions: dict[str, str] = {}
        self._sizes = False  # the server takes MAIL FROM's SIZE= (RFC 1870)
        self._size_limit: int | None = None
        self._preloaded: tuple[str, tuple[str, ...]] | None = None

    def __repr__(self) -> str:
        state = "connected" if self.usable else "closed"
        user = f" user={self.settings.username}" if self.settings.username else ""
        return (
            f"<Session {self.settings.address} {self.settings.security.value}{user} "
            f"{state} transactions={self.transactions}>"
        )

    async def __aenter__(self) -> Session:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            await self.close()
        else:
            self.abort()

    @property
    def _where(self) -> dict[str, Any]:
        return {"host": self.settings.host, "port": self.settings.port}

    @property
    def usable(self) -> bool:
        """Connected and good for another transaction."""
        if self._broken or self._closing:
            return False
        if self._reader is not None:
            return self._reader.is_open
        return self._smtp.is_connected

    @property
    def exhausted(self) -> bool:
        """It has carried `max_messages_per_connection` messages: time to reconnect."""
        limit = self.settings.max_messages_per_connection
        return bool(limit) and self.transactions >= limit

    # -- connecting --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, greet, secure the connection and log in.

        :raises ConnectError: unreachable, greeting refused, TLS handshake or certificate failed.
        :raises TLSRequiredError: `starttls` asked for, but the server did not offer or do it.
        :raises AuthError: the login was refused, or no AUTH LOGIN/PLAIN is offered.
        """
        settings = self.settings
        try:
            await self._smtp.connect()
            await self._smtp.ehlo()
            if settings.security is Security.STARTTLS:
                await self._starttls()
        except (TLSRequiredError, ConnectError):
            self.abort()
            raise
        except aiosmtplib.SMTPResponseException as err:
            self.abort()
            raise ConnectError(
                f"server refused the session: {err.code} {err.message}",
                code=err.code,
                **self._where,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as err:
            self.abort()
            raise ConnectError(f"could not connect: {_describe(err)}", **self._where) from None
        if settings.password is not None:
            await self._login()
        self._take_over()

    async def _starttls(self) -> None:
        if not self._smtp.supports_extension("starttls"):
            raise TLSRequiredError(
                "the server does not offer STARTTLS; refusing to go on without TLS "
                "(use security: ssl for port 465)",
                **self._where,
            )
        try:
            await self._smtp.starttls(tls_context=self._tls_context)
        except aiosmtplib.SMTPResponseException as err:
            raise TLSRequiredError(
                f"STARTTLS refused: {err.code} {err.message}", code=err.code, **self._where
            ) from None
        except ssl.SSLError as err:
            raise ConnectError(f"TLS failed: {_describe(err)}", **self._where) from None
        await self._smtp.ehlo()

    async def _login(self) -> None:
        """AUTH LOGIN as the original program did; PLAIN only if LOGIN is not offered."""
        settings = self.settings
        assert settings.password is not None and settings.username is not None
        password = settings.password.reveal()
        methods = self._smtp.server_auth_methods
        try:
            if "login" in methods:
                await self._smtp.auth_login(settings.username, password)
            elif "plain" in methods:
                await self._smtp.auth_plain(settings.username, password)
            else:
                self.abort()
                offered = ", ".join(m.upper() for m in methods) or "none"
                raise AuthError(
                    f"the server offers no AUTH LOGIN or PLAIN (offers: {offered}); remove the "
                    "password to send without logging in",
                    **self._where,
                )
        except aiosmtplib.SMTPResponseException as err:
            self.abort()
            text = _scrub(err.message, settings.username, password)
            raise AuthError(
                f"login as {settings.username} failed: {err.code} {text}",
                code=err.code,
                **self._where,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as err:
            self.abort()
            text = _scrub(_describe(err), settings.username, password)
            raise ConnectError(f"connection lost during login: {text}", **self._where) from None

    def _take_over(self) -> None:
        """Hand the connection from aiosmtplib to our `ReplyReader`, which keeps every reply,
        so that commands can be pipelined (RFC 2920)."""
        # asyncio's and uvloop's transports both have set_protocol(); uvloop's are not
        # asyncio.Transport subclasses.
        transport = cast(asyncio.Transport, self._smtp.transport)
        self._extensions = dict(self._smtp.esmtp_extensions)
        self._sizes = "size" in self._extensions
        value = self._extensions.get("size", "")
        self._size_limit = int(value) if value.isdigit() and int(value) > 0 else None
        self._reader = ReplyReader()
        transport.set_protocol(self._reader)
        self._reader.connection_made(transport)
        self.pipelining = self.settings.pipelining and "pipelining" in self._extensions

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """QUIT politely; close hard if the server does not answer, or if it is inside a
        pipelined transaction we will not finish (QUIT would read as message text)."""
        if self.usable and self._preloaded is None:
            assert self._reader is not None
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                self._reader.write(b"QUIT\r\n")
                await self._reader.read(min(self.settings.timeout, 5))
        self.abort()

    def abort(self) -> None:
        """Close the connection at once, without QUIT."""
        self._broken = True
        if self._reader is not None:
            self._reader.close()
        self._smtp.close()

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Sequence[bytes],
        *,
        before_end: Callable[[], Awaitable[None]] | None = None,
        then: Envelope | None = None,
    ) -> list[RecipientResult]:
        """Run one transaction and return one result per recipient, in order.

        `message` is the content from `MessageTemplate.render_parts()`: parts written one
        after the other, CRLF-terminated and dot-stuffed, without the final ``.``, which is
        written here, after `before_end()` has returned (the journal's commit point). With
        PIPELINING (offered and not turned off), MAIL, every RCPT and DATA go in one write,
        and `then`, the next transaction's envelope, goes out with this one's final ``.``
        (RFC 2920 3.1: message content may start a group): one round trip per message.
        `preloaded` then says it went out; the next `send()` must be for that envelope.

        Never raises for a server reply or a lost connection: those become results (`refused`,
        `deferred`, or `unknown` when the connection died after the final ``.``), and a lost
        connection leaves `usable` False.
        """
        assert self._reader is not None, "connect() first"
        parts = tuple(message)
        size = message_size(parts)
        preloaded, self._preloaded = self._preloaded, None
        transaction = _Transaction(recipients)
        if preloaded is not None and preloaded != (sender, tuple(recipients)):
            # The server is inside another transaction: only closing ends it safely.
            self.abort()
            transaction.connection_lost(RuntimeError("pipelined envelope mismatch"))
            return transaction.results()
        limit = self.size_limit
        if preloaded is None and limit and size > limit:
            note = f"message is {size} bytes; the server accepts at most {limit} (SIZE)"
            return [RecipientResult(r, Status.REFUSED, None, note) for r in recipients]
        self.transactions += 1
        try:
            if preloaded is not None:
                if not self.usable:
                    raise aiosmtplib.SMTPServerDisconnected("connection closed")
                go = await self._read_envelope(transaction)
            elif self.pipelining:
                self._write_envelope(sender, recipients, size)
                go = await self._read_envelope(transaction)
            else:
                go = await self._envelope_stepwise(transaction, sender, size)
            if go:
                if then is not None and not self._may_preload():
                    then = None
                await self._message(transaction, parts, size, before_end, then)
        except _CONNECTION_ERRORS as err:
            self.abort()
            transaction.connection_lost(err)
        if transaction.failed and not transaction.ended and self.usable:
            await self._reset()
        return transaction.results()

    @property
    def preloaded(self) -> bool:
        """The next transaction's envelope went out with the last final ".": see `send()`."""
        return self._preloaded is not None

    def _may_preload(self) -> bool:
        limit = self.settings.max_messages_per_connection
        return self.pipelining and not self._closing and not (limit and self.transactions >= limit)

    def _mail_from(self, sender: str, size: int) -> str:
        return (
            f"MAIL FROM:<{sender}> SIZE={size}\r\n" if self._sizes else f"MAIL FROM:<{sender}>\r\n"
        )

    def _envelope(self, sender: str, recipients: Sequence[str], size: int) -> bytes:
        """MAIL, RCPT for everyone and DATA: one pipelined group (built as one string)."""
        if len(recipients) == 1:
            rcpt = f"RCPT TO:<{recipients[0]}>\r\n"
        else:
            rcpt = "".join([f"RCPT TO:<{r}>\r\n" for r in recipients])
        return (self._mail_from(sender, size) + rcpt + "DATA\r\n").encode()

    def _write_envelope(self, sender: str, recipients: Sequence[str], size: int) -> None:
        assert self._reader is not None
        self._reader.write(self._envelope(sender, recipients, size))

    async def _read_envelope(self, tx: _Transaction) -> bool:
        """The replies to a pipelined MAIL, RCPTs and DATA, in order."""
        reader = self._reader
        assert reader is not None
        timeout = self.settings.timeout
        tx.phase = "during MAIL FROM"
        mail = reader.take() or await reader.read(timeout)
        tx.phase = "during RCPT TO"
        for recipient in tx.recipients:
            tx.rcpt(recipient, reader.take() or await reader.read(timeout), mail)
        tx.phase = "before the message was sent"
        start = reader.take() or await reader.read(timeout)
        self._check_421(mail, start)
        if start.code == 354 and not tx.accepted:
            # RFC 2920 3.1: DATA was accepted though no recipient was; end it empty.
            reader.write(b".\r\n")
            await reader.read(timeout)
            tx.failed = True
            return False
        return tx.data_started(start)

    async def _envelope_stepwise(self, tx: _Transaction, sender: str, size: int) -> bool:
        """One command, one reply: for servers without PIPELINING."""
        timeout = self.settings.timeout
        reader = self._reader
        assert reader is not None
        tx.phase = "during MAIL FROM"
        reader.write(self._mail_from(sender, size).encode())
        mail = await reader.read(timeout)
        self._check_421(mail)
        if mail.code != 250:
            for recipient in tx.recipients:
                tx.rcpt(recipient, mail, mail)
            return False
        tx.phase = "during RCPT TO"
        for recipient in tx.recipients:
            reader.write(b"RCPT TO:<" + recipient.encode() + b">\r\n")
            reply = await reader.read(timeout)
            self._check_421(reply)
            tx.rcpt(recipient, reply, mail)
        if not tx.accepted:
            tx.failed = True
            return False
        tx.phase = "before the message was sent"
        reader.write(b"DATA\r\n")
        start = await reader.read(timeout)
        self._check_421(start)
        return tx.data_started(start)

    async def _message(
        self,
        tx: _Transaction,
        parts: Sequence[bytes],
        size: int,
        before_end: Callable[[], Awaitable[None]] | None,
        then: Envelope | None = None,
    ) -> None:
        reader = self._reader
        assert reader is not None
        tx.phase = "while sending the message"
        end = END_OF_DATA if then is None else END_OF_DATA + self._envelope(*then)
        if size <= _JOIN_BELOW:
            # A small message: commit first, then the whole message, its final "." and the
            # next envelope in one send().
            if before_end is not None:
                await before_end()
            reader.write(b"".join((*parts, end)))
        else:
            # A large message goes in chunks, each waiting until the server has taken the
            # last: the send buffer stays small, and a server that stops reading is noticed
            # after `timeout` seconds without progress instead of hanging the run.
            commit = asyncio.ensure_future(before_end()) if before_end is not None else None
            try:
                for part in parts:
                    view = memoryview(part)
                    for start in range(0, len(view), _CHUNK):
                        reader.write(view[start : start + _CHUNK])
                        await reader.drain(self.settings.timeout)
                if commit is not None:
                    await commit  # committed while the body was on its way
            finally:
                if commit is not None and not commit.done():
                    commit.cancel()
            reader.write(end)
        if then is not None:
            self._preloaded = (then[0], tuple(then[1]))
        if reader.paused:  # the common case skips a coroutine per message
            await reader.drain(self.settings.timeout)
        tx.phase = "after the final '.'"
        reply = await reader.read(self._data_timeout(size))
        self._check_421(reply)
        tx.finish(reply)

    def _check_421(self, *replies: SMTPResponse) -> None:
        """421: the server is closing the connection; drop it once this transaction ends."""
        for reply in replies:
            if reply.code == 421:
                self._closing = True

    async def _reset(self) -> None:
        reader = self._reader
        assert reader is not None
        if self._closing:
            self.abort()
            return
        try:
            reader.write(b"RSET\r\n")
            reply = await reader.read(self.settings.timeout)
        except _CONNECTION_ERRORS:
            self.abort()
            return
        if reply.code != 250:
            self.abort()

    @property
    def size_limit(self) -> int | None:
        """The largest message the server takes (its SIZE extension), if it says."""
        return self._size_limit

    def _data_timeout(self, size: int) -> float:
        """Time for the reply to the final ".": `data_timeout` plus a second per 64 KiB, so a
        large attachment on a slow link does not time out spuriously (the whole body may
        still sit in our send buffer when the wait starts)."""
        return self.settings.data_timeout + size / 65536


class _Transaction:
    """The per-recipient bookkeeping of one mail transaction."""

    __slots__ = ("accepted", "ended", "failed", "outcome", "phase", "recipients")

    def __init__(self, recipients: Sequence[str]) -> None:
        self.recipients = recipients
        self.accepted: list[str] = []
        self.outcome: dict[str, RecipientResult] = {}
        self.phase = "before MAIL FROM"
        self.failed = False
        self.ended = False  # the reply to the final "." came: the transaction is over

    def rcpt(self, recipient: str, reply: SMTPResponse, mail: SMTPResponse) -> None:
        if mail.code != 250:
            # With PIPELINING the RCPT replies then only echo the refused MAIL FROM.
            self.outcome[recipient] = _result(recipient, classify(mail.code), mail, "sender: ")
            self.failed = True
        elif reply.code in (250, 251):
            self.accepted.append(recipient)
        else:
            self.outcome[recipient] = _result(recipient, classify(reply.code), reply)

    def data_started(self, start: SMTPResponse) -> bool:
        if start.code == 354:
            return True
        self.failed = True
        for recipient in self.accepted:
            self.outcome.setdefault(recipient, _result(recipient, classify(start.code), start))
        return False

    def finish(self, end: SMTPResponse) -> None:
        self.ended = True
        status = Status.ACCEPTED if end.code == 250 else classify(end.code)
        text = _clean(end.message)
        for recipient in self.accepted:
            self.outcome[recipient] = RecipientResult(recipient, status, end.code, text)
        if status is not Status.ACCEPTED:
            self.failed = True

    def connection_lost(self, err: BaseException) -> None:
        lost = self.phase == "after the final '.'"
        status = Status.UNKNOWN if lost else Status.DEFERRED
        note = (
            "connection lost after the message was sent and before the server's reply: "
            "it may or may not have been accepted"
            if lost
            else f"connection lost {self.phase}: not delivered ({_describe(err)})"
        )
        for recipient in self.recipients:
            if recipient not in self.outcome:
                self.outcome[recipient] = RecipientResult(recipient, status, None, note)

    def results(self) -> list[RecipientResult]:
        return [self.outcome[r] for r in self.recipients]


def _clean(text: str) -> str:
    return " ".join(text.split())


def _result(
    recipient: str, status: Status, reply: SMTPResponse, prefix: str = ""
) -> RecipientResult:
    return RecipientResult(recipient, status, reply.code, prefix + _clean(reply.message))


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def _scrub(text: str, username: str, password: str) -> str:
    """Remove the password, in clear or base64 as AUTH sends it, from a server's text."""
    if not password:
        return text
    secrets = {
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode(),
    }
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "********")
    return text
