"""Several relays over real sockets: failover, routing by domain and by weight, and the run
stopping only when no relay is left.

The relays are in-process `FaultyServer`s started by the `relays` fixture; each test uses only
what a relay handle offers (`port`, `delivered`, `messages`, `halt()`), so the same tests can
run over other servers (a private Postfix) given the same handle.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import AuthError, ConnectError
from asyncmailer.journal import JournalReader
from asyncmailer.ledger import JournalState
from asyncmailer.results import CampaignReport, Status
from asyncmailer.run.campaign import RunOptions, run_campaign

from ..conftest import PASSWORD, CampaignFactory, run_cli
from ..faulty import Faults, FaultyServer
from ..postfix import PostfixFactory

LIST = [f"r{i:02d}@example.com" for i in range(40)]
FAST = {"retry_delay": 0.05}  # the campaign's
QUICK = {"timeout": 2, "connect_timeout": 1, "data_timeout": 2}  # each server's

StartRelay = Callable[..., Awaitable[FaultyServer]]


@pytest.fixture
async def relays() -> AsyncIterator[StartRelay]:
    started: list[FaultyServer] = []

    async def start(**faults: Any) -> FaultyServer:
        server = await FaultyServer(Faults(**faults)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def entry(name: str, server: FaultyServer, **keys: Any) -> dict[str, Any]:
    """One `servers:` entry for a relay on loopback, plain SMTP."""
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "concurrency": 2,
        **QUICK,
        **keys,
    }


def relay_campaign(
    make_campaign: CampaignFactory,
    servers: list[dict[str, Any]],
    addresses: list[str],
    **keys: Any,
) -> Path:
    """A list campaign over `servers:` (no single-server keys), the addresses in list.txt."""
    path = make_campaign(
        host=None,
        tls_ca_file=None,
        to=None,
        cc=None,
        recipients_file="list.txt",
        servers=servers,
        **{"group_size": 1, **FAST, **keys},
    )
    (path.parent.parent / "list.txt").write_text("".join(a + "\n" for a in addresses))
    return path


async def send(path: Path) -> tuple[CampaignReport, Counter[JournalState]]:
    campaign = await load_campaign(path, env={})
    report = await asyncio.wait_for(run_campaign(campaign, options=RunOptions()), 60)
    assert report.journal is not None
    return report, await JournalReader(report.journal).counts()


def relay_of(report: CampaignReport) -> dict[str, str]:
    return {r.recipient: r.relay for r in report.results}


async def test_a_relay_stopped_mid_run_hands_its_work_to_the_other(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    a = await relays(halt_after=5)
    b = await relays()
    path = relay_campaign(make_campaign, [entry("a", a), entry("b", b)], LIST)
    report, journal = await send(path)
    assert report.fatal is None
    assert journal == Counter(accepted=len(LIST))
    # Every recipient delivered exactly once, through one relay or the other.
    assert sorted(a.delivered + b.delivered) == LIST
    assert 5 <= len(a.delivered) < len(LIST) and a.halted  # a message in flight may end too
    # The report names the relay that took each one.
    named = relay_of(report)
    assert {r for r, name in named.items() if name == "a"} == set(a.delivered)
    assert {r for r, name in named.items() if name == "b"} == set(b.delivered)


async def test_a_relay_refusing_the_login_is_out_and_the_other_carries_the_run(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    a = await relays(auth="535 5.7.8 Authentication credentials invalid")
    b = await relays()
    secret = {"password_file": "reliances/your_pswd.txt", "username": "sender@example.com"}
    path = relay_campaign(make_campaign, [entry("a", a, **secret), entry("b", b)], LIST)
    report, journal = await send(path)
    assert report.fatal is None
    assert journal == Counter(accepted=len(LIST))
    assert a.messages == [] and sorted(b.delivered) == LIST
    assert set(relay_of(report).values()) == {"b"}
    assert PASSWORD not in str(report.results)


async def test_recipients_go_to_the_relay_of_their_domain_one_relay_a_transaction(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    gmail = await relays()
    other = await relays()
    mixed = [f"u{i}@{'gmail.com' if i % 3 == 0 else 'example.org'}" for i in range(30)]
    servers = [entry("gmail", gmail, domains=["gmail.com", "googlemail.com"]), entry("isp", other)]
    # Groups of 10 mix both domains: each group goes as one transaction per relay.
    path = relay_campaign(make_campaign, servers, mixed, group_size=10)
    report, journal = await send(path)
    assert report.fatal is None and journal == Counter(accepted=30)
    assert sorted(gmail.delivered) == sorted(a for a in mixed if a.endswith("@gmail.com"))
    assert sorted(other.delivered) == sorted(a for a in mixed if a.endswith("@example.org"))
    for message in gmail.messages + other.messages:
        assert len({r.rpartition("@")[2] for r in message.rcpt_tos}) == 1
    # A group's parts are one message: the same Message-ID through both relays.
    ids = {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in gmail.messages}
    assert ids <= {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in other.messages}
    assert {name for r, name in relay_of(report).items() if r.endswith("@gmail.com")} == {"gmail"}


async def test_a_domains_relay_out_of_rotation_gives_its_work_to_its_fallback(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    gmail = await relays(auth="535 5.7.8 Authentication credentials invalid")
    backup = await relays()
    rest = await relays()
    secret = {"password_file": "reliances/your_pswd.txt"}
    servers = [
        entry("gmail", gmail, domains=["gmail.com"], fallback=["backup"], **secret),
        entry("rest", rest),
        entry("backup", backup, weight=0),  # only as a fallback
    ]
    addresses = [f"g{i}@gmail.com" for i in range(6)] + [f"o{i}@example.org" for i in range(6)]
    report, journal = await send(relay_campaign(make_campaign, servers, addresses))
    assert report.fatal is None and journal == Counter(accepted=12)
    assert sorted(backup.delivered) == sorted(addresses[:6])
    assert sorted(rest.delivered) == sorted(addresses[6:])


async def test_weights_are_roughly_respected(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    heavy = await relays()
    light = await relays()
    servers = [entry("heavy", heavy, weight=3), entry("light", light, weight=1)]
    addresses = [f"w{i:03d}@example.com" for i in range(120)]
    report, journal = await send(relay_campaign(make_campaign, servers, addresses))
    assert report.fatal is None and journal == Counter(accepted=120)
    assert len(heavy.delivered) + len(light.delivered) == 120
    assert 80 <= len(heavy.delivered) <= 100  # 90 by the weights


async def test_no_relay_left_stops_the_run_as_one_relay_would(
    relays: StartRelay, make_campaign: CampaignFactory, unused_tcp_port: int
) -> None:
    refusing = await relays(auth="535 5.7.8 Authentication credentials invalid")
    secret = {"password_file": "reliances/your_pswd.txt"}
    down = {
        "name": "down",
        "host": "127.0.0.1",
        "port": unused_tcp_port,
        "security": "none",
        **QUICK,
    }
    servers = [entry("refusing", refusing, **secret), down]
    report, journal = await send(relay_campaign(make_campaign, servers, LIST[:8]))
    assert isinstance(report.fatal, AuthError | ConnectError)
    # Nothing recorded as a fact about any recipient: all still to send, untried.
    assert journal == Counter(pending=8)
    assert all(r.status is Status.NOT_ATTEMPTED for r in report.results)
    assert refusing.messages == []


async def test_no_relay_left_exits_with_the_code_of_one_relay(
    relays: StartRelay, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    a = await relays(auth="535 5.7.8 Authentication credentials invalid")
    b = await relays(auth="535 5.7.8 Authentication credentials invalid")
    secret = {"password_file": "reliances/your_pswd.txt"}
    path = relay_campaign(make_campaign, [entry("a", a, **secret), entry("b", b, **secret)], LIST)
    code, _, err = await run_cli("-c", str(path), "-q", cwd=tmp_path)
    assert code == 3, err  # as a run through one relay refusing the login
    assert "535 5.7.8" in err and PASSWORD not in err


async def test_a_permanent_sender_refusal_of_one_relay_moves_its_work(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    # Gmail's daily sending limit on one relay: a stop with one relay, a failover with two.
    quota = await relays(quota_after=3)
    b = await relays()
    path = relay_campaign(make_campaign, [entry("quota", quota), entry("b", b)], LIST)
    report, journal = await send(path)
    assert report.fatal is None and journal == Counter(accepted=len(LIST))
    assert sorted(quota.delivered + b.delivered) == LIST and len(quota.delivered) == 3


async def test_a_relay_that_keeps_saying_later_is_slowed_then_paused_and_the_other_carries(
    relays: StartRelay, make_campaign: CampaignFactory
) -> None:
    # A temporary refusal of every MAIL FROM: not a stop even with one relay; with two, the
    # relay slows (a throttling reply), then pauses out of rotation, and its work moves.
    later = await relays(mail_reply="451 4.7.1 Try again later", mail_reply_times=None)
    b = await relays()
    path = relay_campaign(make_campaign, [entry("later", later), entry("b", b)], LIST)
    started = asyncio.get_running_loop().time()
    report, journal = await send(path)
    assert report.fatal is None and journal == Counter(accepted=len(LIST))
    assert later.messages == [] and sorted(b.delivered) == LIST
    assert all(r.attempts == 1 for r in report.results)  # the refusals were no tries
    assert asyncio.get_running_loop().time() - started < 20


async def test_a_relay_without_starttls_is_out_and_nothing_goes_to_it_in_clear(
    relays: StartRelay, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    stripped = await relays()  # offers no STARTTLS
    b = await relays()
    secret = {"password_file": "reliances/your_pswd.txt"}
    servers = [entry("stripped", stripped, security="starttls", **secret), entry("b", b)]
    path = relay_campaign(make_campaign, servers, LIST[:10])
    code, _, err = await run_cli("-c", str(path), "--report", "r.csv", cwd=tmp_path)
    assert code == 0, err
    assert "via stripped (127.0.0.1:" in err and ", b (127.0.0.1:" in err
    assert stripped.auth_lines == [] and stripped.messages == []
    assert PASSWORD.encode() not in bytes(stripped.plaintext)
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0] == "recipient,status,code,message,relay"
    assert sorted(rows[1:]) == [f"{r},accepted,250,2.0.0 queued,b" for r in LIST[:10]]


# --- the same over real MTAs: two private Postfix instances ---------------------------------


async def test_two_postfix_relays_one_stopped_mid_run_deliver_everyone_once(
    postfix: PostfixFactory, make_campaign: CampaignFactory
) -> None:
    """Issue 14's case: a campaign over two Postfix relays, one of them stopped (`postfix
    abort`) mid-run, delivers every recipient once through the other; the report names the
    relay that took each one."""
    addresses = [f"p{i:03d}@example.com" for i in range(120)]
    first, second = await postfix(name="first"), await postfix(name="second")
    servers = [
        {"name": name, "host": "127.0.0.1", "port": relay.port, "security": "none", **QUICK}
        for name, relay in (("first", first), ("second", second))
    ]
    path = relay_campaign(make_campaign, servers, addresses, rate=20)  # about 6 s
    sending = asyncio.ensure_future(send(path))
    await first.sink.wait_for(10)  # well under way through both
    await first.stop()
    report, journal = await sending
    assert report.fatal is None
    named = relay_of(report)
    through = Counter(named.values())
    assert through["first"] >= 10 and through["second"] > len(addresses) // 2  # its share and more
    # What `first` took before it stopped may still be in its queue: start it again so that
    # it hands that on, then count what arrived, each recipient once, none lost.
    await first.start()
    unknown = [r.recipient for r in report.results if r.status is Status.UNKNOWN]
    assert len(unknown) <= 2  # at most the transactions past "." when it was stopped
    assert journal[JournalState.ACCEPTED] + len(unknown) == len(addresses)
    await first.sink.wait_for(through["first"])
    await second.sink.wait_for(through["second"])
    arrived = first.sink.recipients + second.sink.recipients
    assert Counter(arrived).most_common(1)[0][1] == 1  # nobody twice
    assert set(addresses) - set(arrived) <= set(unknown)
    assert {r for r, name in named.items() if name == "second"} <= set(second.sink.recipients)
