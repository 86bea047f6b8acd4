"""Debian's Postfix as a private instance for the tests: its own configuration folder
(`postfix -c DIR`), queue and data folders under a temporary folder, smtpd on free loopback
ports (plain with STARTTLS, and implicit TLS), its own limits; everything it accepts is relayed
to an in-process aiosmtpd sink (`Sink`), so a test sees what arrived and through which
instance. The system's /etc/postfix is never read or written, and no system mail is set up.

Several instances may run at once, each with its own `Limits` and, if given, its own accounts
(AUTH PLAIN/LOGIN through Cyrus SASL, after STARTTLS, required to relay); `stop()` and
`start()` take one down and back up mid-test (a relay gone in the middle of a run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from .smtpd import DsnSMTP

__all__ = [
    "POSTFIX",
    "Limits",
    "Postfix",
    "PostfixFactory",
    "Sink",
    "postfix_missing",
]

POSTFIX = Path("/usr/sbin/postfix")
SASLPASSWD = Path("/usr/sbin/saslpasswd2")  # sasl2-bin, for instances with accounts
_START_TIMEOUT = 30.0


def postfix_missing() -> str | None:
    """Why Postfix cannot run here, or None. `.ci/run` installs it (Debian's package, "No
    configuration"); the master process must start as root and drop to `mail_owner`."""
    if not POSTFIX.is_file():
        return (
            "Postfix is not installed: apt-get install postfix with debconf "
            "postfix/main_mailer_type 'No configuration' (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "Postfix's master process must be started as root"
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    """The smtpd limits of one instance, each producing Postfix's own refusal.

    - `connection_count`: `smtpd_client_connection_count_limit`, connections at once from one
      client; the surplus is greeted with ``421 4.7.0 ... Error: too many connections``.
    - `message_rate` per `rate_time_unit` seconds: `smtpd_client_message_rate_limit` and
      `anvil_rate_time_unit`; MAIL FROM past it gets ``450 4.7.1 Error: too much mail``.
    - `recipient_limit`: `smtpd_recipient_limit`; RCPT past it gets ``452 4.5.3 Error: too
      many recipients``.
    - `blocked_senders`: `check_sender_access` REJECT in `smtpd_recipient_restrictions`;
      every RCPT gets ``554 5.7.1 <sender>: Sender address rejected: Access denied``.
    - `blocked_client`: `check_client_access` REJECT for 127.0.0.1; every RCPT gets
      ``554 5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied``.
    - `fqdn_helo`: `reject_non_fqdn_helo_hostname`; after an EHLO name without a dot, every
      RCPT gets ``504 5.5.2 <name>: Helo command rejected: need fully-qualified hostname``.

    0 means no limit. Loopback clients are not exempt (`smtpd_client_event_limit_exceptions`
    is empty).
    """

    connection_count: int = 0
    message_rate: int = 0
    rate_time_unit: int = 60
    recipient_limit: int = 1000
    blocked_senders: tuple[str, ...] = ()
    blocked_client: bool = False
    fqdn_helo: bool = False


@dataclass(frozen=True, slots=True)
class Arrived:
    """One message the sink took from Postfix, with the DSN parameters Postfix passed on."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]


@dataclass
class Sink:
    """An aiosmtpd server on loopback that keeps what Postfix relays to it. It offers DSN,
    so Postfix passes on the envelope id and the notifications it was given."""

    messages: list[Arrived] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition | None = None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.content if isinstance(envelope.content, bytes) else b""
        sender = envelope.mail_from or ""
        arrived = Arrived(
            sender,
            tuple(envelope.rcpt_tos),
            data,
            tuple(envelope.mail_options),
            tuple(envelope.rcpt_options),
        )
        self.messages.append(arrived)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        return "250 2.0.0 OK: kept"

    async def start(self) -> Sink:
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._server = await loop.create_server(
            lambda: DsnSMTP(self, hostname="sink.asyncmailer.test"), host="127.0.0.1", port=0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def recipients(self) -> list[str]:
        """Every recipient of every message kept, in order (a duplicate shows twice)."""
        return [r for message in self.messages for r in message.rcpt_tos]

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[str]:
        """Wait until `count` recipients have arrived (Postfix relays asynchronously), then
        a moment more so that a duplicate would show; return them.

        :raises TimeoutError: fewer arrived in `timeout` seconds.
        """
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.recipients) >= count), timeout
            )
        await asyncio.sleep(0.3)
        return self.recipients


def _drain(fd: int) -> str:
    """What a finished process wrote to its pseudo-terminal."""
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed and everything read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _free_ports(count: int) -> list[int]:
    """`count` different free ports of 127.0.0.1 (all held at once while they are chosen).
    Postfix's master binds them itself, so they are free again when it starts."""
    with contextlib.ExitStack() as stack:
        probes = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def _main_cf(postfix: Postfix) -> str:
    limits = postfix.limits
    etc = postfix.config_dir
    # Who may relay: any loopback client, or with accounts only one that logged in.
    permit = "permit_sasl_authenticated" if postfix.accounts else "permit_mynetworks"
    return f"""\
# A private test instance (tests/postfix.py): nothing is delivered locally, everything
# accepted goes to the test's sink on 127.0.0.1:{postfix.sink.port}.
compatibility_level = 3.6
queue_directory = {postfix.folder / "queue"}
data_directory = {postfix.folder / "data"}
mail_owner = postfix
myhostname = {postfix.name}.asyncmailer.test
mydomain = asyncmailer.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is off in this test instance
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:{postfix.sink.port}
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP Postfix (asyncmailer test instance)
smtpd_peername_lookup = no
smtpd_relay_restrictions = {permit}, reject_unauth_destination
smtpd_recipient_restrictions = check_sender_access texthash:{etc / "sender_access"},
    {permit}, reject_unauth_destination
# Refused at RCPT, as Postfix does by default (smtpd_delay_reject): replies that name each
# recipient but are about the client.
smtpd_client_restrictions = check_client_access texthash:{etc / "client_access"}
smtpd_helo_required = yes
smtpd_helo_restrictions = {"reject_non_fqdn_helo_hostname" if limits.fqdn_helo else ""}
smtpd_client_event_limit_exceptions =
smtpd_client_connection_count_limit = {limits.connection_count}
smtpd_client_message_rate_limit = {limits.message_rate}
anvil_rate_time_unit = {limits.rate_time_unit}s
smtpd_recipient_limit = {limits.recipient_limit}
# Not the 1 s Postfix waits before each reply once a client made 10 errors (each refused
# pipelined transaction makes three): the tests would only be slower.
smtpd_error_sleep_time = 0s
smtpd_tls_security_level = may
smtpd_tls_cert_file = {etc / "cert.pem"}
smtpd_tls_key_file = {etc / "key.pem"}
smtpd_tls_session_cache_database =
smtp_tls_security_level = none
smtp_tls_session_cache_database =
maillog_file = {postfix.log_file}
maillog_file_prefixes = {postfix.folder}
biff = no
delay_warning_time = 0h
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
"""


_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _sasl_cf(postfix: Postfix) -> str:
    """With accounts: AUTH (Cyrus SASL, PLAIN and LOGIN, over TLS only) is required to relay;
    a client that has not logged in gets ``554 5.7.1 ... Relay access denied`` at RCPT."""
    if not postfix.accounts:
        return ""
    return f"""\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {postfix.config_dir / "sasl"}
smtpd_sasl_security_options = noanonymous
smtpd_tls_auth_only = yes
"""


def _master_cf(postfix: Postfix) -> str:
    return (
        f"127.0.0.1:{postfix.port} inet n - n - - smtpd\n"
        f"127.0.0.1:{postfix.tls_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes\n"
        + _SERVICES
    )


class Postfix:
    """One private Postfix instance: `port` (plain, STARTTLS offered), `tls_port` (implicit
    TLS), both on 127.0.0.1; what it accepts arrives in `sink`."""

    def __init__(
        self,
        folder: Path,
        *,
        name: str,
        sink: Sink,
        certificate: trustme.LeafCert,
        limits: Limits,
        accounts: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.accounts = dict(accounts or {})
        self.name = name
        self.sink = sink
        self.limits = limits
        self.certificate = certificate
        self.config_dir = folder / "etc"
        self.log_file = folder / "log" / "postfix.log"
        self.port, self.tls_port = _free_ports(2)
        self.running = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Postfix {self.name} 127.0.0.1:{self.port} tls={self.tls_port} {state}>"

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True)
        (self.folder / "log").mkdir()
        # Postfix makes their subfolders and sets their owners (post-install) at start.
        (self.folder / "queue").mkdir(mode=0o755)
        (self.folder / "data").mkdir(mode=0o755)
        shutil.chown(self.folder / "data", "postfix")  # master.lock, written as mail_owner
        self.certificate.cert_chain_pems[0].write_to_path(str(self.config_dir / "cert.pem"))
        key = self.config_dir / "key.pem"
        self.certificate.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        blocked = "".join(f"{sender} REJECT\n" for sender in self.limits.blocked_senders)
        (self.config_dir / "sender_access").write_text(blocked)
        client = "127.0.0.1 REJECT\n" if self.limits.blocked_client else ""
        (self.config_dir / "client_access").write_text(client)
        (self.config_dir / "main.cf").write_text(_main_cf(self) + _sasl_cf(self))
        if self.accounts:
            self._write_accounts()
        (self.config_dir / "master.cf").write_text(_master_cf(self))

    def _write_accounts(self) -> None:
        """The logins in a Cyrus sasldb of this instance's own, read by smtpd as mail_owner."""
        sasl = self.config_dir / "sasl"
        sasl.mkdir()
        database = sasl / "sasldb2"
        (sasl / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {database}\n"
        )
        for login, password in self.accounts.items():
            user, _, realm = login.rpartition("@")
            subprocess.run(
                [str(SASLPASSWD), "-p", "-c", "-f", str(database), "-u", realm, user],
                input=password.encode(),
                check=True,
                capture_output=True,
                timeout=30,
            )
        shutil.chown(database, "postfix")
        database.chmod(0o600)

    async def _postfix(self, *args: str) -> tuple[int, str]:
        # postfix(1) tells what is wrong on stderr only when it is a terminal (else only in
        # the mail log, which may not be open yet): give it a pseudo-terminal.
        leader, follower = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                str(POSTFIX),
                "-c",
                str(self.config_dir),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=follower,
                stderr=follower,
            )
            os.close(follower)
            follower = -1
            await asyncio.wait_for(process.wait(), _START_TIMEOUT)
            out = await asyncio.to_thread(_drain, leader)
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
        assert process.returncode is not None
        return process.returncode, out

    async def start(self) -> Postfix:
        """Start the instance (writing its configuration the first time) and wait until
        smtpd answers on `port`."""
        if not self.config_dir.exists():
            self._write_config()
        code, out = await self._postfix("start")
        if code != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} start: {out.strip()}\n{self.log()}")
        self.running = True
        await self._wait_listening(True)
        return self

    async def stop(self) -> None:
        """Stop the instance (master and every child): its ports refuse connections after."""
        if not self.running:
            return
        code, out = await self._postfix("abort")
        self.running = False
        if code != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} abort: {out.strip()}")
        await self._wait_listening(False)

    async def _wait_listening(self, up: bool) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                listening = False
            else:
                listening = True
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if listening is up:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self!r}: still {'not ' if up else ''}listening\n{self.log()}")
            await asyncio.sleep(0.1)

    def log(self) -> str:
        """The instance's own mail log (maillog_file)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"


PostfixFactory = Callable[..., Awaitable[Postfix]]


@pytest.fixture
async def postfix(certs: Any) -> AsyncIterator[PostfixFactory]:
    """Start private Postfix instances: ``await postfix(Limits(...), name="relay1",
    accounts={USER: PASSWORD})``, each with its own sink, ports, limits and logins; all
    stopped and removed at the end of the test.
    Skips the test with the reason when Postfix cannot run here."""
    if why := postfix_missing():
        pytest.skip(why)
    started: list[Postfix] = []
    # Not pytest's tmp_path: its folders are 0700, and Postfix's daemons, once they have
    # dropped to mail_owner, must reach the queue (short paths, too, for the unix sockets).
    base = Path(tempfile.mkdtemp(prefix="am-postfix-"))
    base.chmod(0o755)

    async def start(
        limits: Limits | None = None,
        *,
        name: str | None = None,
        accounts: Mapping[str, str] | None = None,
    ) -> Postfix:
        if accounts and not SASLPASSWD.is_file():
            pytest.skip("Postfix AUTH needs sasl2-bin and libsasl2-modules (.ci/run installs them)")
        name = name or f"relay{len(started) + 1}"
        sink = await Sink().start()
        certificate = certs.ca.issue_cert("localhost", "127.0.0.1")
        instance = Postfix(
            base / name,
            name=name,
            sink=sink,
            certificate=certificate,
            limits=limits or Limits(),
            accounts=accounts,
        )
        started.append(instance)
        return await instance.start()

    try:
        yield start
    finally:
        for instance in started:
            with contextlib.suppress(RuntimeError, OSError, TimeoutError):
                await instance.stop()
            await instance.sink.stop()
        shutil.rmtree(base, ignore_errors=True)
