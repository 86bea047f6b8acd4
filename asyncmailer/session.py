"""One SMTP session: connect, secure, log in once, then run many mail transactions.

`Session` is the only class that talks to the network. It uses aiosmtplib for the connection,
TLS, EHLO, AUTH and reply parsing, and drives each transaction itself (MAIL, RCPT per recipient,
DATA with bytes prepared once by `message.MessageTemplate`) so that it knows, for every recipient,
the server's own reply, and knows whether a lost connection happened before or after the final
``.`` (RFC 1047: after it, the message may or may not have been taken).
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPResponse

from .config import Security, ServerSettings
from .errors import AuthError, ConnectError, TLSRequiredError
from .results import RecipientResult, Status

__all__ = ["Session", "build_tls_context", "classify"]

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
            timeout=settings.timeout,
            local_hostname=local_hostname,
        )
        self.transactions = 0
        self._broken = False

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
        return not self._broken and self._smtp.is_connected

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

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """QUIT politely; close hard if the server does not answer."""
        if self.usable:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self._smtp.quit()
        self.abort()

    def abort(self) -> None:
        """Close the connection at once, without QUIT."""
        self._broken = True
        self._smtp.close()

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes
    ) -> list[RecipientResult]:
        """Run one transaction and return one result per recipient, in order.

        `data` is the DATA payload from `MessageTemplate.render()` (CRLF, dot-stuffed, closing
        ``.`` included). Never raises for a server reply or a lost connection: those become
        results (`refused`, `deferred`, or `unknown` when the connection died after the final
        ``.``), and a lost connection leaves `usable` False.
        """
        self.transactions += 1
        results: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        limit = self.size_limit
        if limit and len(data) > limit:
            note = f"message is {len(data)} bytes; the server accepts at most {limit} (SIZE)"
            return [RecipientResult(r, Status.REFUSED, None, note) for r in recipients]
        phase = "before MAIL FROM"
        try:
            mail_from = b"FROM:<" + sender.encode() + b">" + self._size(data)
            mail = await self._command(b"MAIL", mail_from)
            if mail.code != 250:
                await self._reset()
                status = classify(mail.code)
                return [_result(r, status, mail, "sender refused: ") for r in recipients]
            for recipient in recipients:
                phase = "during RCPT TO"
                reply = await self._command(b"RCPT", b"TO:<" + recipient.encode() + b">")
                if reply.code in (250, 251):
                    accepted.append(recipient)
                else:
                    results[recipient] = _result(recipient, classify(reply.code), reply)
            if not accepted:
                await self._reset()
                return [results[r] for r in recipients]
            phase = "before the message was sent"
            start = await self._command(b"DATA")
            if start.code != 354:
                await self._reset()
                for recipient in accepted:
                    results[recipient] = _result(recipient, classify(start.code), start)
                return [results[r] for r in recipients]
            phase = "while sending the message"
            protocol = self._smtp.protocol
            assert protocol is not None
            protocol.write(data)
            phase = "after the final '.'"
            end = await protocol.read_response(timeout=self._data_timeout(data))
        except _CONNECTION_ERRORS as err:
            self.abort()
            lost = phase == "after the final '.'"
            status = Status.UNKNOWN if lost else Status.DEFERRED
            note = (
                "connection lost after the message was sent and before the server's reply: "
                "it may or may not have been accepted"
                if lost
                else f"connection lost {phase}: not delivered ({_describe(err)})"
            )
            for recipient in recipients:
                if recipient not in results:
                    results[recipient] = RecipientResult(recipient, status, None, note)
            return [results[r] for r in recipients]
        if end.code == 421:
            self.abort()
        status = Status.ACCEPTED if end.code == 250 else classify(end.code)
        for recipient in accepted:
            results[recipient] = _result(recipient, status, end)
        return [results[r] for r in recipients]

    async def _command(self, *args: bytes) -> SMTPResponse:
        response = await self._smtp.execute_command(*args)
        if response.code == 421:
            self.abort()
        return response

    async def _reset(self) -> None:
        if self.usable:
            try:
                reply = await self._command(b"RSET")
            except _CONNECTION_ERRORS:
                self.abort()
                return
            if reply.code != 250:
                self.abort()

    @property
    def size_limit(self) -> int | None:
        """The largest message the server takes (its SIZE extension), if it says."""
        value = self._smtp.esmtp_extensions.get("size", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    def _size(self, data: bytes) -> bytes:
        return b" SIZE=%d" % len(data) if self._smtp.supports_extension("size") else b""

    def _data_timeout(self, data: bytes) -> float:
        """Time for the final reply: the configured timeout plus time to move the bytes at
        a slow 64 KiB/s, so a large attachment on a slow link does not time out spuriously."""
        return self.settings.timeout + len(data) / 65536


def _result(
    recipient: str, status: Status, reply: SMTPResponse, prefix: str = ""
) -> RecipientResult:
    return RecipientResult(recipient, status, reply.code, prefix + " ".join(reply.message.split()))


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
