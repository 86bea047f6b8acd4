"""One SMTP session: connect, secure, log in once, then run many mail transactions.

`Session` is the only class that talks to the network. It uses aiosmtplib for the connection,
TLS, EHLO, AUTH and reply parsing, and drives each transaction itself (MAIL, RCPT per recipient,
DATA with bytes prepared once by `message.MessageTemplate`) so that it knows, for every recipient,
the server's own reply, and knows whether a lost connection happened before or after the final
``.`` (RFC 1047: after it, the message may or may not have been taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from typing import Any, cast

import aiosmtplib
from aiosmtplib import SMTPResponse, SMTPStatus

from ..attachments import Part, Spooled
from ..config import AuthMethod, Security, ServerSettings
from ..errors import AuthError, ConnectError, RefusedError, TLSRequiredError
from ..message import END_OF_DATA, message_size
from ..results import RecipientResult, Status
from ..transport import Commit, Sent, Transaction
from . import commands
from .mixups import (
    PROBE_AFTER,
    answered_in_plain_text,
    implicit_tls_hint,
    plain_text_hint,
    speaks_tls,
)
from .oauth import TokenSource
from .outcome import ACCEPTED_RCPT, AFTER_END, describe
from .outcome import Transaction as Bookkeeping
from .refusals import Scope, refuses_helo, relay_denied
from .replies import ReplyReader
from .scrub import Scrubber

__all__ = ["Session", "build_tls_context", "helo_name"]

_JOIN_BELOW = 64 * 1024
_CHUNK = 256 * 1024
# Anything that leaves the connection in an unknown state: the session is dropped.
_CONNECTION_ERRORS = (aiosmtplib.SMTPException, OSError)


async def helo_name(settings: ServerSettings, given: str | None = None) -> str:
    """The name to give in EHLO: the config's `helo_name`, else `given`, else this machine's
    fully qualified name, looked up here once for all the connections it is passed to
    (aiosmtplib would look it up at each connect, and a resolver that is slow to answer
    would make that a wait per connection)."""
    name = settings.helo_name or given
    return name if name else await asyncio.to_thread(socket.getfqdn)


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


def _why(err: BaseException, timeout: float) -> str:
    """Why a connection failed, without the host and port aiosmtplib's errors name again
    (the `ConnectError` names them once, first)."""
    if isinstance(err, aiosmtplib.SMTPConnectTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, aiosmtplib.SMTPConnectError) and err.__cause__ is not None:
        return describe(err.__cause__)
    return describe(err)


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
        tokens: TokenSource | None = None,
        relay: str = "",
    ) -> None:
        self.settings = settings
        self.relay = relay  # the relay's name, for the results
        self._tls_context = tls_context
        self._tokens = tokens  # auth: xoauth2: the access token, shared by the pool
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
        self.dsn = False  # the server offers DSN: envelope ids and NOTIFY go with each message
        self._broken = False
        self._closing = False
        self._reader: ReplyReader | None = None
        self._extensions: dict[str, str] = {}
        self._sizes = False  # the server takes MAIL FROM's SIZE= (RFC 1870)
        self._size_limit: int | None = None
        self._preloaded: tuple[str, tuple[str, ...]] | None = None
        password = settings.password.reveal() if settings.password is not None else None
        # Every reply after the login goes through it (`ReplyReader`).
        self._scrub = Scrubber(settings.username, password)

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
    def begun(self) -> bool:
        """A transaction began with the last one's final "." (`send(then=...)`) and was not
        sent: only closing the connection ends it safely."""
        return self._preloaded is not None

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
            await self._greeting()
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
            if settings.security is Security.SSL and answered_in_plain_text(err):
                raise ConnectError(
                    f"could not connect: {plain_text_hint(settings.port)}", **self._where
                ) from None
            raise ConnectError(
                f"could not connect: {_why(err, settings.connect_timeout)}", **self._where
            ) from None
        if settings.logs_in:
            await self._login()
        self._take_over()

    async def _greeting(self) -> None:
        """Connect and read the greeting. Waiting for a plain greeting, a port still silent
        after `PROBE_AFTER` seconds is asked on a second connection whether it speaks TLS:
        if so, it is an implicit-TLS port, and the error says so at once.

        Not on port 25: an MX's postscreen takes a client that talks before the greeting
        for a bot and may keep refusing it; a mix-up is a submission port's (465, 587).
        """
        settings = self.settings
        connecting = asyncio.ensure_future(self._smtp.connect())
        probe: asyncio.Future[bool] | None = None
        try:
            if settings.security is not Security.SSL and settings.port != 25:
                done, _ = await asyncio.wait({connecting}, timeout=PROBE_AFTER)
                if not done:
                    # Whichever ends first: the greeting, or the probe's finding.
                    probe = asyncio.ensure_future(speaks_tls(settings.host, settings.port))
                    await asyncio.wait({connecting, probe}, return_when=asyncio.FIRST_COMPLETED)
                if probe is not None and probe.done() and probe.result():
                    raise ConnectError(
                        f"could not connect: {implicit_tls_hint(settings.port)}", **self._where
                    )
            await connecting
        finally:
            # Whatever did not end is stopped (the caller closes the connection); what ended
            # with an error that is not the one raised has been seen.
            for task in (connecting, probe):
                if task is not None and not task.cancel() and not task.cancelled():
                    task.exception()

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
            raise ConnectError(f"TLS failed: {describe(err)}", **self._where) from None
        await self._smtp.ehlo()

    async def _login(self) -> None:
        """AUTH as `auth` says: LOGIN as the original program did, PLAIN only if LOGIN is not
        offered; PLAIN; or XOAUTH2 with the token source's access token."""
        settings = self.settings
        assert settings.username is not None
        methods = self._smtp.server_auth_methods
        wanted = {
            AuthMethod.LOGIN: ("login", "plain"),
            AuthMethod.PLAIN: ("plain",),
            AuthMethod.XOAUTH2: ("xoauth2",),
        }[settings.auth]
        method = next((m for m in wanted if m in methods), None)
        try:
            if method is None:
                offered = ", ".join(m.upper() for m in methods) or "none"
                asked = " or ".join(m.upper() for m in wanted)
                hint = (
                    "remove the password to send without logging in"
                    if settings.password is not None
                    else "ask the provider which one it takes (the auth key)"
                )
                raise AuthError(
                    f"the server offers no AUTH {asked} (offers: {offered}); {hint}",
                    **self._where,
                )
            if method == "xoauth2":
                await self._xoauth2(settings.username)
            else:
                assert settings.password is not None
                password = settings.password.reveal()
                if method == "login":
                    await self._smtp.auth_login(settings.username, password)
                else:
                    await self._smtp.auth_plain(settings.username, password)
        except AuthError:
            self.abort()
            raise
        except aiosmtplib.SMTPResponseException as err:
            self.abort()
            text = self._scrub(err.message)
            raise AuthError(
                f"login as {settings.username} failed: {err.code} {text}",
                code=err.code,
                **self._where,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as err:
            self.abort()
            text = self._scrub(describe(err))
            raise ConnectError(f"connection lost during login: {text}", **self._where) from None

    async def _xoauth2(self, username: str) -> None:
        """AUTH XOAUTH2; a 535 (after the 334 that carries the server's JSON error, which
        aiosmtplib answers) is most often an expired token: once, with a token fetched anew
        (the command run again, the file read again), when it differs.

        :raises aiosmtplib.SMTPResponseException: the server refused the token(s).
        """
        tokens = self._tokens
        assert tokens is not None, "auth: xoauth2 needs a TokenSource"
        token = await tokens.token()
        self._scrub = Scrubber(username, None, tokens=(token,))
        try:
            await self._smtp.auth_xoauth2(username, token)
        except aiosmtplib.SMTPAuthenticationError as err:
            if err.code != SMTPStatus.auth_failed:
                raise
            fresh = await tokens.refresh(token)
            if fresh == token:
                raise
            self._scrub = Scrubber(username, None, tokens=(token, fresh))
            await self._smtp.auth_xoauth2(username, fresh)

    def _take_over(self) -> None:
        """Hand the connection from aiosmtplib to our `ReplyReader`, which keeps every reply,
        so that commands can be pipelined (RFC 2920)."""
        # asyncio's and uvloop's transports both have set_protocol(); uvloop's are not
        # asyncio.Transport subclasses.
        transport = cast(asyncio.Transport, self._smtp.transport)
        self._extensions = dict(self._smtp.esmtp_extensions)
        self._sizes = "size" in self._extensions
        value = self._extensions.get("size", "")
        digits = value.isascii() and value.isdecimal()  # "²" is a digit, not a number
        self._size_limit = int(value) if digits and int(value) > 0 else None
        self._reader = ReplyReader(scrub=self._scrub)
        transport.set_protocol(self._reader)
        self._reader.connection_made(transport)
        self.pipelining = self.settings.pipelining and "pipelining" in self._extensions
        # RFC 3461: only a server that offers DSN may be given its parameters.
        self.dsn = "dsn" in self._extensions

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """QUIT politely; close hard if the server does not answer, or if it is inside a
        pipelined transaction we will not finish (QUIT would read as message text)."""
        if self.usable and self._preloaded is None:
            assert self._reader is not None
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                self._reader.write(commands.QUIT)
                await self._reader.read(min(self.settings.timeout, 5))
        self.abort()

    def abort(self) -> None:
        """Close the connection at once, without QUIT."""
        self._broken = True
        if self._reader is not None:
            self._reader.close()
        self._smtp.close()

    # -- sending -----------------------------------------------------------------------------

    @property
    def pipelines(self) -> bool:
        """The next transaction may begin with this one's final "." (see `send()`)."""
        return self.pipelining and self.usable

    async def send(
        self,
        transaction: Transaction,
        *,
        commit: Commit | None = None,
        then: Transaction | None = None,
    ) -> Sent:
        """Run one transaction: one result per recipient, in order.

        The message's parts come from `MessageTemplate.render_parts()`: written one after the
        other, CRLF-terminated and dot-stuffed, without the final ``.``, which is written
        here, after `commit()` has returned (the journal's commit point). With PIPELINING
        (offered and not turned off), MAIL, every RCPT and DATA go in one write, and the
        envelope of `then` goes out with this message's final ``.`` (RFC 2920 3.1: message
        content may start a group): one round trip per message. `Sent.then_sent` says it
        did; the next `send()` must then be for `then`.

        Never raises for a server reply or a lost connection: those become results (`refused`,
        `deferred`, or `unknown` when the connection died after the final ``.``), and a lost
        connection leaves `usable` False.

        :raises UnsafeArgumentError: an address holds CR, LF or NUL (nothing was written).
        """
        assert self._reader is not None, "connect() first"
        envelope, parts = transaction
        sender, recipients = envelope.sender, envelope.recipients
        envid = envelope.envid if self.dsn else None
        size = message_size(parts)
        preloaded, self._preloaded = self._preloaded, None
        tx = Bookkeeping(recipients, sender, self.relay)
        if preloaded is not None and preloaded != (sender, tuple(recipients)):
            # The server is inside another transaction: only closing ends it safely.
            self.abort()
            tx.connection_lost(RuntimeError("pipelined envelope mismatch"))
            return Sent(tx.results(), reusable=False)
        limit = self.size_limit
        if preloaded is None and limit and size > limit:
            # The same for every recipient: the message's, not theirs. Nothing was written.
            note = f"the message is {size} bytes; the server accepts at most {limit} (SIZE)"
            refusal = RefusedError(note, code=None, scope="message", temporary=False, **self._where)
            results = [
                RecipientResult(r, Status.REFUSED, None, note, relay=self.relay) for r in recipients
            ]
            return Sent(results, refusal=refusal)
        # Built (and checked for CR/LF/NUL) before anything of the transaction is written.
        group = (
            b""
            if preloaded
            else commands.envelope(sender, recipients, self._size_argument(size), envid)
        )
        self.transactions += 1
        try:
            if preloaded is not None:
                if not self.usable:
                    raise aiosmtplib.SMTPServerDisconnected("connection closed")
                go = await self._read_envelope(tx)
            elif self.pipelining:
                self._reader.write(group)
                go = await self._read_envelope(tx)
            else:
                go = await self._envelope_stepwise(tx, sender, size, envid)
            if go:
                if then is not None and not self._may_preload():
                    then = None
                await self._message(tx, parts, size, commit, then)
        except _CONNECTION_ERRORS as err:
            self.abort()
            tx.connection_lost(err)
        if tx.failed and not tx.ended and self.usable:
            await self._reset()
        usable = self.usable
        return Sent(
            tx.results(),
            then_sent=usable and self._preloaded is not None,
            reusable=usable,
            refusal=self._refusal(tx),
        )

    async def probe(self, sender: str, recipient: str) -> RefusedError | SMTPResponse:
        """MAIL FROM `sender`, RCPT TO `recipient`, then RSET: nothing is sent. Returns the
        refusal of the sender or the session that a run would stop on (a server that refuses
        a client or its EHLO name, as Postfix does, says so only to RCPT), else the reply
        to RCPT (taken, or a refusal of that recipient alone).

        :raises ConnectError: the connection was lost.
        :raises UnsafeArgumentError: an address holds CR, LF or NUL (nothing was written).
        """
        reader = self._reader
        assert reader is not None, "connect() first"
        mail_line = commands.mail_from(sender, None).encode()
        rcpt_line = commands.rcpt_to(recipient).encode()
        tx = Bookkeeping([recipient], sender, self.relay)
        timeout = self.settings.timeout
        try:
            reader.write(mail_line)
            reply = mail = await reader.read(timeout)
            self._check_421(mail)
            tx.mail(mail)
            if mail.code == SMTPStatus.completed:
                reader.write(rcpt_line)
                reply = await reader.read(timeout)
                self._check_421(reply)
            tx.rcpt(recipient, reply, mail)
            tx.rcpts_done()
        except _CONNECTION_ERRORS as err:
            self.abort()
            raise ConnectError(
                f"the connection was lost while trying the envelope: {err}", **self._where
            ) from err
        if mail.code == SMTPStatus.completed:
            await self._reset()
        return self._refusal(tx) or reply

    def _refusal(self, tx: Bookkeeping) -> RefusedError | None:
        if tx.refusal is None:
            return None
        scope, stage, reply = tx.refusal
        hint = ""
        if scope is Scope.SESSION and relay_denied(reply):
            hint = (
                "; it relays only for clients that log in: set the password (or auth: xoauth2)"
                if not self.settings.logs_in
                else "; the login is not allowed to send through this server"
            )
        elif scope is Scope.SESSION and refuses_helo(reply):
            hint = "; set helo_name to this host's name in DNS (what its address's PTR gives)"
        elif reply.code == SMTPStatus.access_denied and "tls" in reply.message.lower():
            hint = "; the server wants TLS first: use security: starttls (or ssl)"
        elif reply.code == SMTPStatus.access_denied and not self.settings.logs_in:
            hint = "; the server wants a login: set the password (or auth: xoauth2)"
        return RefusedError(
            f"the server refused the {scope} (its reply to {stage}): {reply.code} "
            f"{' '.join(reply.message.split())}{hint}",
            code=reply.code,
            scope=scope.value,
            temporary=400 <= reply.code < 500,
            **self._where,
        )

    def _may_preload(self) -> bool:
        limit = self.settings.max_messages_per_connection
        return self.pipelining and not self._closing and not (limit and self.transactions >= limit)

    def _size_argument(self, size: int) -> int | None:
        return size if self._sizes else None

    async def _read_envelope(self, tx: Bookkeeping) -> bool:
        """The replies to a pipelined MAIL, RCPTs and DATA, in order."""
        reader = self._reader
        assert reader is not None
        timeout = self.settings.timeout
        tx.phase = "during MAIL FROM"
        mail = reader.take() or await reader.read(timeout)
        self._out_of_step(mail, SMTPStatus.completed)
        tx.mail(mail)  # a refused sender is known before the server may close
        tx.phase = "during RCPT TO"
        for recipient in tx.recipients:
            reply = reader.take() or await reader.read(timeout)
            self._out_of_step(reply, *ACCEPTED_RCPT)
            tx.rcpt(recipient, reply, mail)
        tx.rcpts_done()
        tx.phase = "before the message was sent"
        start = reader.take() or await reader.read(timeout)
        self._out_of_step(start, SMTPStatus.start_input)
        self._check_421(mail, start)
        if start.code == SMTPStatus.start_input and tx.accepted and tx.refusal is not None:
            # The sender or the session was refused: no message may reach those accepted.
            # After 354 only closing the connection ends the transaction without one.
            self.abort()
            tx.connection_lost(RuntimeError("closed: the sender or the session was refused"))
            tx.failed = True
            return False
        if start.code == SMTPStatus.start_input and not tx.accepted:
            # RFC 2920 3.1: DATA was accepted though no recipient was; end it empty.
            reader.write(END_OF_DATA)
            await reader.read(timeout)
            tx.failed = True
            return False
        return tx.data_started(start)

    async def _envelope_stepwise(
        self, tx: Bookkeeping, sender: str, size: int, envid: str | None
    ) -> bool:
        """One command, one reply: for servers without PIPELINING."""
        timeout = self.settings.timeout
        reader = self._reader
        assert reader is not None
        tx.phase = "during MAIL FROM"
        reader.write(commands.mail_from(sender, self._size_argument(size), envid).encode())
        mail = await reader.read(timeout)
        self._check_421(mail)
        self._out_of_step(mail, SMTPStatus.completed)
        tx.mail(mail)
        if mail.code != SMTPStatus.completed:
            for recipient in tx.recipients:
                tx.rcpt(recipient, mail, mail)
            return False
        tx.phase = "during RCPT TO"
        for recipient in tx.recipients:
            reader.write(commands.rcpt_to(recipient, dsn=envid is not None).encode())
            reply = await reader.read(timeout)
            self._check_421(reply)
            self._out_of_step(reply, *ACCEPTED_RCPT)
            tx.rcpt(recipient, reply, mail)
        tx.rcpts_done()
        if not tx.accepted or tx.refusal is not None:
            # Those taken before the refusal came get no message (RSET ends the transaction).
            tx.not_sent("the sender or the session was refused")
            tx.failed = True
            return False
        tx.phase = "before the message was sent"
        reader.write(commands.DATA)
        start = await reader.read(timeout)
        self._check_421(start)
        self._out_of_step(start, SMTPStatus.start_input)
        return tx.data_started(start)

    async def _message(
        self,
        tx: Bookkeeping,
        parts: Sequence[Part],
        size: int,
        commit: Commit | None,
        then: Transaction | None = None,
    ) -> None:
        reader = self._reader
        assert reader is not None
        tx.phase = "while sending the message"
        end = END_OF_DATA
        if then is not None:
            following, next_parts = then
            next_size = self._size_argument(message_size(next_parts))
            end += commands.envelope(
                following.sender,
                following.recipients,
                next_size,
                following.envid if self.dsn else None,
            )
        if size <= _JOIN_BELOW:
            # A small message: commit first, then the whole message, its final "." and the
            # next envelope in one send().
            if commit is not None:
                await commit()
            reader.write(b"".join((*cast("Sequence[bytes]", parts), end)))
        else:
            # A large message goes in chunks, each waiting until the server has taken the
            # last: the send buffer stays small, and a server that stops reading is noticed
            # after `timeout` seconds without progress instead of hanging the run.
            committing = asyncio.ensure_future(commit()) if commit is not None else None
            try:
                for part in parts:
                    if isinstance(part, Spooled):  # a large attachment, from its file
                        for offset, count in part.chunks(_CHUNK):
                            reader.write(await asyncio.to_thread(part.read, offset, count))
                            await reader.drain(self.settings.timeout)
                        continue
                    view = memoryview(part)
                    for start in range(0, len(view), _CHUNK):
                        reader.write(view[start : start + _CHUNK])
                        await reader.drain(self.settings.timeout)
                if committing is not None:
                    await committing  # committed while the body was on its way
            finally:
                if committing is not None and not committing.done():
                    committing.cancel()
            reader.write(end)
        # The final "." is written: from here on, a lost connection may have delivered it.
        tx.phase = AFTER_END
        if then is not None:
            self._preloaded = (then.envelope.sender, tuple(then.envelope.recipients))
        if reader.paused:  # the common case skips a coroutine per message
            await reader.drain(self.settings.timeout)
        reply = await reader.read(self._data_timeout(size))
        self._check_421(reply)
        self._out_of_step(reply, SMTPStatus.completed)
        tx.finish(reply)

    def _out_of_step(self, reply: SMTPResponse, *fitting: int) -> None:
        """A reply neither of the kind its command wants nor a refusal (250 to DATA, 354 to
        RCPT or to the final "."): the server is out of step, and the replies after it may
        answer other commands. Drop the connection once this transaction ends."""
        if reply.code not in fitting and not 400 <= reply.code < 600:
            self._closing = True

    def _check_421(self, *replies: SMTPResponse) -> None:
        """421: the server is closing the connection; drop it once this transaction ends."""
        for reply in replies:
            if reply.code == SMTPStatus.domain_unavailable:
                self._closing = True

    async def _reset(self) -> None:
        reader = self._reader
        assert reader is not None
        if self._closing:
            self.abort()
            return
        try:
            reader.write(commands.RSET)
            reply = await reader.read(self.settings.timeout)
        except _CONNECTION_ERRORS:
            self.abort()
            return
        if reply.code != SMTPStatus.completed:
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
