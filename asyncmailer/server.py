"""The embedded local SMTP server (aiosmtpd): implicit TLS and STARTTLS on loopback, AUTH LOGIN
against one account, every accepted message kept in memory and stored in a Maildir per recipient.

It serves `make demo`, the tests, and anyone who wants to try a campaign before sending it for
real. Certificates are made at start (trustme); the CA is written where the client config can
point `tls_ca_file` at it. Needs the ``server`` extra: ``pip install 'asyncmailer[server]'``
(from a clone: ``pip install -e '.[server]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import mailbox
import os
import re
import signal
import ssl
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PASSWORD_ENV, is_loopback
from .errors import InputError, MissingExtraError
from .results import plural
from .textfiles import read_secret

__all__ = [
    "Account",
    "EmbeddedServer",
    "MailStore",
    "ReceivedMessage",
    "make_certificates",
    "serve_command",
]

try:
    import trustme
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
except ImportError as err:
    raise MissingExtraError("server", err.name or "aiosmtpd") from err


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the server accepted it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)
    tls: bool
    login: str | None
    received_at: float = 0.0  # time.monotonic() when the final "." arrived


@dataclass(frozen=True, slots=True)
class Account:
    """The one login the server accepts. The password is never shown."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    mechanism: str
    login: str
    success: bool


class MailStore:
    """aiosmtpd handler: refuse the senders and recipients it is told to (`refuse` maps an
    address to a code and text), keep and store every message."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        refuse: Mapping[str, tuple[int, str]] | None = None,
        pipelining: bool = True,
    ) -> None:
        self.folder = folder
        self.pipelining = pipelining
        self.refuse = {k.lower(): v for k, v in (refuse or {}).items()}
        self.messages: list[ReceivedMessage] = []
        self._stored: set[str] = set()  # the Maildirs written to, not those found there

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd reads commands one after another, so pipelined input works: say so."""
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    def _refusal(self, address: str) -> str | None:
        rule = self.refuse.get(address.lower())
        return f"{rule[0]} {rule[1]}" if rule is not None else None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if refusal := self._refusal(address):
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if refusal := self._refusal(address):
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        auth: Any = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            tls=server.transport is not None
            and server.transport.get_extra_info("sslcontext") is not None,
            login=login,
            received_at=time.monotonic(),
        )
        self.messages.append(message)
        number = len(self.messages)  # before the await: another session may store meanwhile
        if self.folder is not None:
            await asyncio.to_thread(self._store, message)
        return f"250 2.0.0 OK: queued as {number}"

    def _store(self, message: ReceivedMessage) -> None:
        assert self.folder is not None
        for rcpt in message.rcpt_tos:
            name = re.sub(r"[^A-Za-z0-9@._+-]", "_", rcpt.lower())
            self.folder.mkdir(parents=True, exist_ok=True)
            box = mailbox.Maildir(self.folder / name, create=True)
            self._stored.add(name)
            prefix = f"Return-Path: <{message.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
            box.add(prefix.encode() + message.data)

    def stored_folders(self) -> list[Path]:
        """The Maildirs this store wrote messages to (a reused folder may hold others)."""
        if self.folder is None:
            return []
        return [self.folder / name for name in sorted(self._stored)]


def make_certificates(
    folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> tuple[ssl.SSLContext, Path]:
    """A new CA and a server certificate for `hosts`; the CA is written to `folder`/ca.pem.

    Returns the server's TLS context and the CA file's path.
    """
    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


class EmbeddedServer:
    """Two listeners on one loopback address: implicit TLS and STARTTLS (or plain SMTP).

    Port 0 picks a free port; read `ssl_port` and `starttls_port` after start. With an
    `account`, AUTH is required before MAIL; it is offered under implicit TLS and, on the
    STARTTLS port, only after STARTTLS (unless `auth_require_tls` is False).
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext,
        store: MailStore,
        host: str = "127.0.0.1",
        ssl_port: int | None = 0,
        starttls_port: int | None = 0,
        account: Account | None = None,
        offer_starttls: bool = True,
        auth_require_tls: bool = True,
        exclude_auth: tuple[str, ...] = (),
        data_size_limit: int = 0,
        smtp_class: Callable[..., SMTP] = SMTP,
    ) -> None:
        if not is_loopback(host):
            raise InputError(f"the embedded server listens on loopback only, not {host!r}")
        self.host = host
        self.tls_context = tls_context
        self.store = store
        self.account = account
        self.offer_starttls = offer_starttls
        self.auth_require_tls = auth_require_tls
        self.exclude_auth = exclude_auth
        self.data_size_limit = data_size_limit
        self.auth_attempts: list[AuthAttempt] = []
        self._smtp_class = smtp_class
        self._wanted = {"ssl": ssl_port, "starttls": starttls_port}
        self._servers: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}

    @property
    def ssl_port(self) -> int:
        return self.ports["ssl"]

    @property
    def starttls_port(self) -> int:
        return self.ports["starttls"]

    def __repr__(self) -> str:
        ports = " ".join(f"{k}={v}" for k, v in self.ports.items())
        return f"<EmbeddedServer {self.host} {ports} messages={len(self.store.messages)}>"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = False
        login = ""
        if isinstance(data, LoginPassword) and self.account is not None:
            login = data.login.decode("utf-8", "replace")
            password = self.account.password.encode("utf-8")
            ok = login == self.account.username and data.password == password
        self.auth_attempts.append(AuthAttempt(mechanism, login, ok))
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _factory(self, implicit_tls: bool) -> Callable[[], SMTP]:
        def make() -> SMTP:
            with warnings.catch_warnings():
                # aiosmtpd cannot tell that the implicit-TLS listener is encrypted and warns
                # that AUTH is offered without TLS; it is not.
                warnings.simplefilter("ignore", UserWarning)
                return self._make_smtp(implicit_tls)

        return make

    def _make_smtp(self, implicit_tls: bool) -> SMTP:
        return self._smtp_class(
            self.store,
            hostname="asyncmailer.localhost",
            tls_context=None if implicit_tls or not self.offer_starttls else self.tls_context,
            require_starttls=not implicit_tls and self.offer_starttls,
            authenticator=self._authenticate if self.account else None,
            auth_required=self.account is not None,
            auth_require_tls=False if implicit_tls else self.auth_require_tls,
            auth_exclude_mechanism=list(self.exclude_auth),
            data_size_limit=self.data_size_limit or None,
        )

    async def start(self) -> EmbeddedServer:
        loop = asyncio.get_running_loop()
        for kind, port in self._wanted.items():
            if port is None:
                continue
            implicit = kind == "ssl"
            try:
                server = await loop.create_server(
                    self._factory(implicit),
                    host=self.host,
                    port=port,
                    ssl=self.tls_context if implicit else None,
                )
            except OSError as err:
                await self.stop()
                raise InputError(f"cannot listen on {self.host}:{port}: {err.strerror}") from None
            self._servers[kind] = server
            self.ports[kind] = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for server in self._servers.values():
            server.close()
        for server in self._servers.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()

    async def __aenter__(self) -> EmbeddedServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_command(args: argparse.Namespace) -> int:
    """`asyncmailer serve`: listen until interrupted, or while the command after ``--`` runs."""
    if not is_loopback(args.host):
        raise InputError(f"the embedded server listens on loopback only, not {args.host!r}")
    account = None
    if args.user:
        password = os.environ.get(PASSWORD_ENV)
        if not password:
            if args.password_file is None:
                raise InputError(f"--user needs --password-file or {PASSWORD_ENV}")
            password, notices = await read_secret(args.password_file, "password file")
            for notice in notices:
                print(f"asyncmailer serve: {notice}", file=sys.stderr)
            if not password:
                raise InputError("the password file is empty", path=args.password_file)
        account = Account(args.user, password)
    # aiosmtpd logs its own notes (deprecations, the implicit-TLS AUTH note) at INFO/WARNING.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    tls_context, ca_file = await asyncio.to_thread(make_certificates, args.dir)
    store = MailStore(args.dir / "mail")
    command = list(args.command_line)
    if command[:1] == ["--"]:
        command = command[1:]
    server = EmbeddedServer(
        tls_context=tls_context,
        store=store,
        host=args.host,
        ssl_port=args.ssl_port,
        starttls_port=args.starttls_port,
        account=account,
    )
    async with server:
        auth = f", AUTH LOGIN as {account.username}" if account else ""
        print(
            f"asyncmailer serve: listening on {args.host}:{server.ssl_port} (implicit TLS) and "
            f"{args.host}:{server.starttls_port} (STARTTLS){auth}; CA certificate: {ca_file}",
            flush=True,
        )
        if command:
            try:
                process = await asyncio.create_subprocess_exec(*command)
            except OSError as err:
                raise InputError(
                    f"cannot run {command[0]!r}: {err.strerror or err}", field="--"
                ) from err
            status = await process.wait()
            if status < 0:  # killed by a signal: what a shell says, 128 + its number
                status = 128 - status
        else:
            await _wait_for_signal()
            status = 0
    folders = [f.name for f in store.stored_folders()]
    shown = ", ".join(folders[:4]) + (f", ... ({len(folders)} in all)" if len(folders) > 4 else "")
    print(
        f"asyncmailer serve: accepted {plural(len(store.messages), 'message')}; stored in "
        f"{store.folder}/ (one Maildir per recipient: {shown or 'none'})",
        flush=True,
    )
    return status


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
