"""Shared fixtures: trustme certificates, an in-process aiosmtpd server on port 0, and campaign
folders in the original reliances/ layout."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trustme
import yaml

from asyncmailer.addresses import Mailbox
from asyncmailer.attachments import Part
from asyncmailer.config import Secret, Security, ServerSettings
from asyncmailer.ledger import Decision, JournalState, Ledger
from asyncmailer.observer import Observer
from asyncmailer.results import RecipientResult, Status
from asyncmailer.server import Account, EmbeddedServer, MailStore
from asyncmailer.smtp.session import Session, build_tls_context
from asyncmailer.transport import Envelope, Transaction

from .postfix import postfix  # noqa: F401  (the fixture, for every test folder)
from .postgres import PgServer, PgUnavailable
from .smtpd import DsnStore, Recorder, RecordingDsnSMTP, RecordingSMTP

if TYPE_CHECKING:  # psycopg is an extra: imported by the tests that use it
    from asyncmailer.pg import PgLedger

PASSWORD = "пароль-Secret-42"  # non-ASCII on purpose: stdlib smtplib cannot send it
USER = "sender@example.com"
SUBJECT = (
    "Тут будет очень длинная тема There will be a very long topic here " * 7
)  # the original sample's subject, trailing space included


DEFAULT_ACCOUNT = Account(USER, PASSWORD)


@dataclass
class Certs:
    ca: trustme.CA
    server_context: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    folder = tmp_path_factory.mktemp("ca")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(ca, context, ca_file)


@dataclass
class RunningServer:
    server: EmbeddedServer
    store: MailStore
    recorder: Recorder

    @property
    def messages(self) -> list[Any]:
        return self.store.messages


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def smtp_server(certs: Certs, tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start a real aiosmtpd server on 127.0.0.1, port 0, configured per test."""
    started: list[EmbeddedServer] = []

    async def start(
        *,
        account: Account | None = DEFAULT_ACCOUNT,
        refuse: dict[str, tuple[int, str]] | None = None,
        offer_starttls: bool = True,
        auth_require_tls: bool = True,
        store_folder: Path | None = None,
        pipelining: bool = True,
        dsn: bool = False,
        store: MailStore | None = None,
        **options: Any,
    ) -> RunningServer:
        recorder = Recorder()
        if store is None:
            kind = DsnStore if dsn else MailStore
            store = kind(store_folder, refuse=refuse, pipelining=pipelining)
        server = EmbeddedServer(
            tls_context=options.pop("tls_context", certs.server_context),
            store=store,
            account=account,
            offer_starttls=offer_starttls,
            auth_require_tls=auth_require_tls,
            smtp_class=functools.partial(
                RecordingDsnSMTP if dsn else RecordingSMTP, recorder=recorder
            ),
            **options,
        )
        await server.start()
        started.append(server)
        return RunningServer(server, store, recorder)

    yield start
    for server in started:
        await server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL server for the session (tests/postgres.py); the tests that need
    it skip, saying why, only where it cannot be started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'")
    try:
        server = PgServer()
        server.start()
    except PgUnavailable as err:
        pytest.skip(f"no PostgreSQL server: {err}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database of its own for each test: its URL (with the password)."""
    import psycopg

    name = f"t{next(_DATABASES)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return pg_server.url(name)


_DATABASES = itertools.count(1)


@contextlib.asynccontextmanager
async def two_workers(
    url: str, campaign: str, run: int | None = None
) -> AsyncIterator[tuple[PgLedger, PgLedger]]:
    """Two workers' ledgers of run `run` (a new one when None) of `campaign`, on the shared
    ledger at `url`."""
    from asyncmailer.ledger_url import LedgerUrl
    from asyncmailer.pg import PgLedger
    from asyncmailer.pg.runs import PgRuns
    from asyncmailer.run_choice import RunRequest

    ledger = LedgerUrl(url)
    if run is None:
        async with PgRuns(ledger, campaign) as runs:
            run = runs.serial(await runs.begin(RunRequest(campaign=campaign)))
    async with (
        await PgLedger.open(ledger, campaign=campaign, run=run) as a,
        await PgLedger.open(ledger, campaign=campaign, run=run) as b,
    ):
        yield a, b


CampaignFactory = Callable[..., Path]


@pytest.fixture
def make_campaign(tmp_path: Path, certs: Certs) -> CampaignFactory:
    """Write a campaign in the original layout (reliances/ and files/) and return config.json."""

    def make(
        *,
        files: dict[str, bytes] | None = None,
        body: str = "Hello!\nПривет!\n",
        password: str | None = PASSWORD,
        suffix: str = ".json",
        **keys: Any,
    ) -> Path:
        reliances = tmp_path / "reliances"
        folder = tmp_path / "files"
        reliances.mkdir(exist_ok=True)
        folder.mkdir(exist_ok=True)
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
        (reliances / "msg.txt").write_text(body, encoding="utf-8")
        if password is not None:
            secret = reliances / "your_pswd.txt"
            secret.write_text(password + "\n", encoding="utf-8")
            secret.chmod(0o600)
        config: dict[str, Any] = {
            "subject": SUBJECT,
            "attachments": "files",
            "file_with_message": "reliances/msg.txt",
            "to": "alice@example.com, bob@example.org",
            "from": USER,
            "cc": "carol@example.net",
            "host": "127.0.0.1",
            "tls_ca_file": str(certs.ca_file),
        }
        config.update(keys)
        config = {k: v for k, v in config.items() if v is not None}
        path = reliances / f"config{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        return path

    return make


def list_campaign(
    make_campaign: CampaignFactory, port: int, addresses: Iterable[str], **keys: Any
) -> Path:
    """A list campaign to the test server's implicit-TLS `port`: the recipients (or any
    lines) in list.txt beside reliances/, no to or cc."""
    path = make_campaign(port=port, to=None, cc=None, recipients_file="list.txt", **keys)
    (path.parent.parent / "list.txt").write_text("".join(a + "\n" for a in addresses))
    return path


def plain_list_campaign(
    make_campaign: CampaignFactory, port: int, addresses: Iterable[str], **keys: Any
) -> Path:
    """A list campaign over plain SMTP to a loopback `port`, without AUTH: the recipients in
    list.txt beside reliances/."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "password": None,
        "to": None,
        "cc": None,
        "recipients_file": "list.txt",
        **keys,
    }
    path = make_campaign(**settings)
    (path.parent.parent / "list.txt").write_text("".join(a + "\n" for a in addresses))
    return path


async def start_cli(*args: str, cwd: Path, **options: Any) -> asyncio.subprocess.Process:
    """Start `python -m asyncmailer ARGS` as a real process, output piped (the test's servers
    keep serving in this event loop while it runs)."""
    options.setdefault("stdout", asyncio.subprocess.PIPE)
    options.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncmailer", *args, cwd=cwd, **options
    )


async def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m asyncmailer ARGS` as a subprocess while the test's server keeps serving."""
    process = await start_cli(*args, cwd=cwd, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def settings_for(
    running: RunningServer,
    certs: Certs,
    *,
    security: Security = Security.SSL,
    password: str | None = PASSWORD,
    ca_file: Path | None = None,
    tls_verify: bool = True,
) -> ServerSettings:
    port = running.server.ssl_port if security is Security.SSL else running.server.starttls_port
    return ServerSettings(
        host="127.0.0.1",
        port=port,
        security=security,
        username=USER if password is not None else None,
        password=Secret(password) if password is not None else None,
        tls_ca_file=ca_file or certs.ca_file,
        tls_verify=tls_verify,
        timeout=10,
    )


def session_for(settings: ServerSettings) -> Session:
    return Session(settings, tls_context=build_tls_context(settings), local_hostname="client.test")


async def send(
    session: Session, sender: str, recipients: Sequence[str], message: Sequence[bytes]
) -> list[RecipientResult]:
    """One transaction through `session`, without pipelining the next: its results."""
    sent = await session.send(Transaction(Envelope(sender, recipients), message))
    return sent.results


def in_memory(parts: Sequence[Part]) -> list[bytes]:
    """A message's parts, checked to be all in memory (no spooled attachment)."""
    found = [part for part in parts if isinstance(part, bytes)]
    assert len(found) == len(parts), "a spooled part"
    return found


async def load_and_accept(ledger: Ledger, mailboxes: Sequence[Mailbox], at: float = 0.0) -> None:
    """Load `mailboxes` as the whole list, in one group, and record them all accepted."""
    await ledger.begin_load()
    await ledger.add_list(mailboxes, len(mailboxes))
    await ledger.end_load()
    (item,) = await ledger.claim(10, now=0.0)
    ledger.record([Decision(JournalState.ACCEPTED, 250, "ok", 1, at, 0.0, "", i) for i in item.ids])


class StopOnFirstAnswer(Observer):
    """Sets `stop` (as Ctrl-C does) at the first accepted recipient; holds the list's reader
    on its first bad row until then, so that a run stops with its list read part-way."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    async def results(self, results: Sequence[RecipientResult]) -> None:
        if any(r.status is Status.ACCEPTED for r in results):
            self.stop.set()
        else:
            await self.stop.wait()
