"""`asyncmailer check`: every row rendered without sending, and the bulk-sender verdict, against
a real DNS server on loopback (tests/dns_server.py) and real in-process SMTP servers."""

from __future__ import annotations

import base64
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from asyncmailer.check import (
    BULK_CONFIG_RECIPIENTS,
    CheckOptions,
    Code,
    Finding,
    Severity,
    Verdict,
    check_campaign,
)
from asyncmailer.config import load_campaign
from asyncmailer.dkim import DkimKey
from asyncmailer.dns_records import DnsRecords, Nameserver
from asyncmailer.errors import ConfigError

from .conftest import USER, CampaignFactory, ServerFactory, plain_list_campaign, run_cli
from .dns_server import closed_port, serve_zone
from .faulty import Faults, FaultyServer
from .postfix import Limits, PostfixFactory
from .smtpd import OAuthStore

SELECTOR = "s2026"
UNSUBSCRIBE = {"url": "https://example.com/u?t={{ unsubscribe_token }}", "key_file": "unsub.key"}
DKIM = {"domain": "example.com", "selector": SELECTOR, "key_file": "dkim.pem"}
ROWS = "email,first_name\nalice@example.com,Alice\nbob@example.org,Bob\nALICE@example.com,A2\n"


def _pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def dkim_record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def good_zone(key: rsa.RSAPrivateKey) -> dict[str, list[str]]:
    return {
        "example.com": ["v=spf1 ip4:127.0.0.1 -all", "some-site-verification=abc"],
        f"{SELECTOR}._domainkey.example.com": [dkim_record(key)],
        "_dmarc.example.com": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.com"],
    }


def newsletter(
    make_campaign: CampaignFactory,
    key: PrivateKeyTypes,
    *,
    rows: str = ROWS,
    body: str = "Hi {{ first_name }}!\n",
    **keys: Any,
) -> Path:
    """A personalised list campaign with one-click unsubscribe and DKIM, in the legacy layout
    (the list and the keys beside reliances/)."""
    settings: dict[str, Any] = {
        "to": None,
        "cc": None,
        "recipients_file": "list.csv",
        "personalize": True,
        "subject": "Hello {{ first_name }}",
        "list_unsubscribe": UNSUBSCRIBE,
        "dkim": DKIM,
        "security": "starttls",
        "port": 1,
        **keys,
    }
    path = make_campaign(body=body, suffix=".yaml", **settings)
    root = path.parent.parent
    (root / "list.csv").write_text(rows, encoding="utf-8")
    (root / "dkim.pem").write_bytes(_pem(key))
    (root / "unsub.key").write_text("an unsubscribe key of 32 chars!!")
    (root / "unsub.key").chmod(0o600)
    return path


async def check(path: Path, **options: Any) -> Verdict:
    options.setdefault("dns", None)
    options.setdefault("connect", False)
    return await check_campaign(await load_campaign(path, env={}), CheckOptions(**options))


def only(verdict: Verdict, code: Code) -> list[Finding]:
    return [f for f in verdict.findings if f.code is code]


def texts(verdict: Verdict, severity: Severity) -> list[str]:
    return [str(f) for f in verdict.of(severity)]


# ---------------------------------------------------------------------------------------------
# The whole verdict


async def test_a_good_campaign_is_ready(
    make_campaign: CampaignFactory, smtp_server: ServerFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    running = await smtp_server(data_size_limit=1_000_000)
    path = newsletter(make_campaign, rsa_key, port=running.server.starttls_port)
    with serve_zone(good_zone(rsa_key)) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver), connect=True)
    assert verdict.errors == [] and verdict.warnings == [], verdict.findings
    assert verdict.ready
    assert verdict.codes(Severity.OK) == {
        Code.RECIPIENTS,
        Code.UNSUBSCRIBE,
        Code.ONE_CLICK,
        Code.ENCRYPTION,
        Code.CERTIFICATE,
        Code.DKIM,
        Code.DKIM_RECORD,
        Code.SPF,
        Code.DMARC,
        Code.ALIGNMENT,
        Code.SERVER,
        Code.SIZE,
    }
    assert verdict.recipients == 2  # ALICE@ is alice@ again
    assert "2 recipients to send to from 3 list rows (1 duplicate left out)" in str(
        only(verdict, Code.RECIPIENTS)[0]
    )
    assert "within the server's SIZE of 1,000,000" in only(verdict, Code.SIZE)[0].text
    assert "logged in as sender@example.com" in only(verdict, Code.SERVER)[0].text
    # as the config writes it: a rendered link holds a recipient's token
    assert only(verdict, Code.UNSUBSCRIBE)[0].text == (
        "<https://example.com/u?t={{ unsubscribe_token }}>"
    )
    # connected, secured, logged in, tried the envelope to the sender alone, sent nothing
    commands = running.recorder.commands()
    assert any(c.startswith("AUTH") for c in commands)
    login = [c.startswith("AUTH") for c in commands].index(True)
    assert commands[login + 2 :] == [
        "MAIL FROM:<sender@example.com>",
        "RCPT TO:<postmaster@example.com>",
        "RSET",
        "QUIT",
    ], commands
    assert running.messages == []


@pytest.mark.parametrize(
    ("change", "code", "expected"),
    [
        ({"example.com": ["some-site-verification=abc"]}, Code.SPF, "no SPF record (v=spf1)"),
        (
            {"example.com": ["v=spf1 -all", "v=spf1 ip4:127.0.0.1 -all"]},
            Code.SPF,
            "2 SPF records for example.com: more than one is a permanent error",
        ),
        ({"_dmarc.example.com": []}, Code.DMARC, "no DMARC record at _dmarc.example.com"),
        (
            {"_dmarc.example.com": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]},
            Code.DMARC,
            "2 DMARC records",
        ),
        ({"_dmarc.example.com": ["v=DMARC1; p=maybe"]}, Code.DMARC, "has no valid p="),
        (
            {f"{SELECTOR}._domainkey.example.com": []},
            Code.DKIM_RECORD,
            "no DKIM key at s2026._domainkey.example.com",
        ),
        (
            {f"{SELECTOR}._domainkey.example.com": ["v=DKIM1; p="]},
            Code.DKIM_RECORD,
            "the key is revoked",
        ),
        (
            {f"{SELECTOR}._domainkey.example.com": ["v=DKIM1; p=%%%"]},
            Code.DKIM_RECORD,
            "p= is not base64",
        ),
    ],
)
async def test_bad_zones_are_errors(
    make_campaign: CampaignFactory,
    rsa_key: rsa.RSAPrivateKey,
    change: dict[str, list[str]],
    code: Code,
    expected: str,
) -> None:
    zone = {**good_zone(rsa_key), **change}
    path = newsletter(make_campaign, rsa_key)
    with serve_zone(zone) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert not verdict.ready
    assert [f.code for f in verdict.errors] == [code]
    assert expected in verdict.errors[0].text


async def test_wrong_dkim_key_is_an_error(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    zone = {**good_zone(rsa_key), f"{SELECTOR}._domainkey.example.com": [dkim_record(other_key)]}
    path = newsletter(make_campaign, rsa_key)
    with serve_zone(zone) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert [str(f) for f in verdict.errors] == [
        "dkim-record: s2026._domainkey.example.com: k=rsa, another key than the key_file's "
        "(rsa): receivers will fail every signature"
    ]


async def test_dmarc_p_none_is_ok_with_a_note(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    zone = {**good_zone(rsa_key), "_dmarc.example.com": ["v=DMARC1; p=none"]}
    path = newsletter(make_campaign, rsa_key)
    with serve_zone(zone) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert verdict.ready
    (dmarc,) = only(verdict, Code.DMARC)
    assert dmarc.severity is Severity.OK
    assert dmarc.text.startswith("_dmarc.example.com: p=none (monitoring only")


async def test_ed25519_key_matches_its_record(make_campaign: CampaignFactory) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    zone = {
        "example.com": ["v=spf1 -all"],
        f"{SELECTOR}._domainkey.example.com": [record],
        "_dmarc.example.com": ["v=DMARC1; p=quarantine"],
    }
    path = newsletter(make_campaign, key)
    with serve_zone(zone) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert verdict.ready, verdict.errors
    assert (
        "the published key is the key_file's (ed25519)" in only(verdict, Code.DKIM_RECORD)[0].text
    )


async def test_dns_not_reachable_is_a_warning(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = newsletter(make_campaign, rsa_key)
    dns = DnsRecords(Nameserver("127.0.0.1", closed_port()), lifetime=0.5)
    verdict = await check(path, dns=dns)
    assert verdict.ready
    assert sorted(texts(verdict, Severity.WARNING)) == [
        "dkim-record: could not check the DKIM record at s2026._domainkey.example.com: DNS not "
        "reachable (no answer in time)",
        "dmarc: could not check the DMARC record at _dmarc.example.com: DNS not reachable (no "
        "answer in time)",
        "server: not connected to (--no-connect)",
        "size: the largest message is " + only(verdict, Code.SIZE)[0].text.split(" is ")[1],
        "spf: could not check the SPF record at example.com: DNS not reachable (no answer in time)",
    ]


# ---------------------------------------------------------------------------------------------
# The campaign's settings


async def test_no_unsubscribe_no_dkim(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    path = newsletter(make_campaign, rsa_key, list_unsubscribe=None, dkim=None)
    verdict = await check(path)
    assert {f.code for f in verdict.errors} == {Code.UNSUBSCRIBE, Code.ONE_CLICK, Code.DKIM}
    assert only(verdict, Code.ALIGNMENT) == []


async def test_a_message_to_the_configs_own_recipients_is_not_held_to_the_bulk_rules(
    make_campaign: CampaignFactory,
) -> None:
    """The original program's job (one message to the config's to/cc, as `make demo` sends
    it) is no bulk mail: no DKIM and no unsubscribe are warnings there, not errors."""
    path = make_campaign(port=1)  # to and cc, no list, no dkim, no list_unsubscribe
    verdict = await check(path)
    assert verdict.ready and not verdict.errors
    advised = {f.code: f.text for f in verdict.warnings if f.code in _BULK_RULES}
    assert set(advised) == _BULK_RULES
    assert all(text.endswith(BULK_ONLY) for text in advised.values())
    code, out, err = await run_cli(
        "check", str(path), "--no-dns", "--no-connect", cwd=path.parent.parent
    )
    assert code == 0 and "ready to send: 0 errors" in out, out + err


async def test_a_config_bcc_of_many_is_held_to_the_bulk_rules_as_a_list_is(
    make_campaign: CampaignFactory,
) -> None:
    many = [f"r{n}@example.org" for n in range(BULK_CONFIG_RECIPIENTS)]
    verdict = await check(make_campaign(port=1, bcc=many))  # with to and cc: over the line
    assert not verdict.ready
    assert {f.code for f in verdict.errors} >= _BULK_RULES
    assert not any(f.text.endswith(BULK_ONLY) for f in verdict.errors)


async def test_no_dmarc_is_a_warning_for_a_message_to_the_configs_own_recipients(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = make_campaign(port=1)
    with serve_zone({**good_zone(rsa_key), "_dmarc.example.com": []}) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert verdict.ready
    (dmarc,) = only(verdict, Code.DMARC)
    assert dmarc.severity is Severity.WARNING and dmarc.text.endswith(BULK_ONLY)


_BULK_RULES = {Code.DKIM, Code.UNSUBSCRIBE, Code.ONE_CLICK}
BULK_ONLY = "(a message to the config's own recipients need not; a list campaign must)"


async def test_mailto_alone_is_not_one_click(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    mailto = {"mailto": "unsubscribe@example.com", "key_file": "unsub.key"}
    path = newsletter(make_campaign, rsa_key, list_unsubscribe=mailto)
    verdict = await check(path)
    assert [f.code for f in verdict.errors] == [Code.ONE_CLICK]
    assert only(verdict, Code.UNSUBSCRIBE)[0].text == "<mailto:unsubscribe@example.com>"


async def test_a_one_click_link_the_same_for_everyone_is_a_warning(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    # RFC 8058 3.1: the POST carries only the URL; without a token it cannot say who left.
    shared = {"url": "https://example.com/unsubscribe/list"}
    verdict = await check(newsletter(make_campaign, rsa_key, list_unsubscribe=shared))
    warnings = [f for f in only(verdict, Code.ONE_CLICK) if f.severity is Severity.WARNING]
    assert [f.text for f in warnings] == [
        "the one-click link is the same for every recipient, so a click cannot say who asked "
        "to leave: put {{ unsubscribe_token }} in list_unsubscribe.url"
    ]
    # With the token, no such warning.
    verdict = await check(newsletter(make_campaign, rsa_key))
    assert all(f.severity is not Severity.WARNING for f in only(verdict, Code.ONE_CLICK))


async def test_dkim_by_the_relay(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    verdict = await check(newsletter(make_campaign, rsa_key, dkim="relay"))
    assert verdict.ready
    assert "declared done by the relay" in only(verdict, Code.DKIM)[0].text
    (alignment,) = only(verdict, Code.ALIGNMENT)
    assert alignment.severity is Severity.WARNING
    assert "the relay signs" in alignment.text


@pytest.mark.parametrize(
    ("domain", "dmarc", "severity", "expected"),
    [
        ("mail.example.com", "v=DMARC1; p=reject", Severity.OK, "align (relaxed)"),
        ("mail.example.com", "v=DMARC1; p=reject; adkim=s", Severity.WARNING, "adkim=s"),
        ("example.org", "v=DMARC1; p=reject", Severity.WARNING, "different domains"),
    ],
)
async def test_dmarc_alignment(
    make_campaign: CampaignFactory,
    rsa_key: rsa.RSAPrivateKey,
    domain: str,
    dmarc: str,
    severity: Severity,
    expected: str,
) -> None:
    zone = {
        "example.com": ["v=spf1 -all"],
        f"{SELECTOR}._domainkey.{domain}": [dkim_record(rsa_key)],
        "_dmarc.example.com": [dmarc],
    }
    path = newsletter(make_campaign, rsa_key, dkim={**DKIM, "domain": domain})
    with serve_zone(zone) as dns:
        verdict = await check(path, dns=DnsRecords(dns.nameserver))
    assert verdict.ready
    (alignment,) = only(verdict, Code.ALIGNMENT)
    assert alignment.severity is severity
    assert expected in alignment.text


async def test_plaintext_and_unverified_tls(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    remote = await check(
        newsletter(
            make_campaign, rsa_key, host="mail.example.net", security="none", allow_plaintext=True
        )
    )
    assert [str(f) for f in remote.errors] == [
        "encryption: no TLS to mail.example.net:1: the mail and the password cross the network "
        "in clear"
    ]
    unverified = await check(
        newsletter(make_campaign, rsa_key, host="mail.example.net", tls_verify=False)
    )
    assert [f.code for f in unverified.errors] == [Code.CERTIFICATE]
    local = await check(newsletter(make_campaign, rsa_key, tls_verify=False))
    assert local.ready  # a relay on this machine: a warning
    assert Code.CERTIFICATE in local.codes(Severity.WARNING)


def test_the_dkim_key_gives_both_forms_of_its_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    kind, forms = DkimKey(rsa_key).public_forms()
    assert kind == "rsa" and len(forms) == 2
    assert base64.b64decode(dkim_record(rsa_key).split("p=")[1]) in forms


async def test_an_unreadable_dkim_key_stops_the_check_at_loading(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = newsletter(make_campaign, rsa_key)
    (path.parent.parent / "dkim.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ConfigError, match="dkim: key_file"):
        await check(path, dns=None)


# ---------------------------------------------------------------------------------------------
# Every row


BAD_ROWS = (
    "email,first_name,count\n"
    "alice@example.com,Alice,2\n"  # 2
    "bob@example.org,,1\n"  # 3: first_name empty
    "not-an-address,Carl,1\n"  # 4: the loader's bad row
    '"dave@example.net","Da\nve",1\n'  # 5-6: a line break in the subject
    "erin@example.com,Erin\n"  # 7: a column short: count is empty, the body divides by zero
    "frank@example.com,Frank,0\n"  # 8: the body divides by zero
    "ALICE@example.com,Alice2,3\n"  # 9: alice again
    "FRANK@example.com,Frank2,5\n"  # 10: frank again: the run has him already (his body failed)
    "dave@example.net,Dave,1\n"  # 11: dave again: the run has not (his subject failed)
)


async def test_every_row_is_rendered(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    path = newsletter(
        make_campaign, rsa_key, rows=BAD_ROWS, body="Hi {{ first_name }}: {{ 10 // count|int }}\n"
    )
    verdict = await check(path)
    listed = path.parent.parent / "list.csv"
    assert verdict.ready  # skipped rows are the run's business: warnings
    assert texts(verdict, Severity.WARNING) == [
        f"bad-row: {listed}:4: email: " + only(verdict, Code.BAD_ROW)[0].text.split(": email: ")[1],
        f"row: {listed}:5: dave@example.net: subject contains a line break (CR/LF), which could "
        "inject headers",
        f"row: {listed}:7: erin@example.com: template error: integer division or modulo by zero",
        f"row: {listed}:8: frank@example.com: template error: integer division or modulo by zero",
        f"empty-field: {listed}:3: bob@example.org: first_name is empty",
        "dns: SPF, DMARC and DKIM records not looked up (--no-dns)",
        "server: not connected to (--no-connect)",
        only(verdict, Code.SIZE)[0].__str__(),
    ]
    assert verdict.recipients == 3  # alice, bob and dave's later row
    assert only(verdict, Code.RECIPIENTS)[0].text == (
        "3 recipients to send to from 9 list rows (2 duplicates left out, 4 rows skipped)"
    )


async def test_the_check_counts_whom_a_run_sends_to(
    make_campaign: CampaignFactory, smtp_server: ServerFactory, rsa_key: Any
) -> None:
    running = await smtp_server()
    body = "Hi {{ first_name }}: {{ 10 // count|int }}\n"
    path = newsletter(
        make_campaign, rsa_key, rows=BAD_ROWS, body=body, port=running.server.starttls_port
    )
    verdict = await check(path)
    code, out, err = await run_cli("send", str(path), cwd=path.parent.parent)
    assert code == 1, out + err  # rows were skipped
    sent = sorted(rcpt for message in running.messages for rcpt in message.rcpt_tos)
    assert sent == ["alice@example.com", "bob@example.org", "dave@example.net"]
    assert verdict.recipients == len(sent)


async def test_rows_shown_are_capped(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    rows = "email,first_name\n" + "".join(f"bad{n},X\n" for n in range(30)) + "a@example.com,A\n"
    verdict = await check(newsletter(make_campaign, rsa_key, rows=rows), rows_shown=5)
    bad = only(verdict, Code.BAD_ROW)
    assert len(bad) == 6
    assert bad[-1].text == "... and 25 more rows like these"
    assert verdict.count(Severity.WARNING) == 30 + 3  # and the server, size and DNS ones
    assert verdict.recipients == 1


async def test_a_template_name_the_list_lacks(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    path = newsletter(make_campaign, rsa_key, subject="Hello {{ nickname }}")
    verdict = await check(path)
    (error,) = verdict.errors
    assert error.code is Code.TEMPLATES
    assert "uses 'nickname'" in error.text
    assert only(verdict, Code.RECIPIENTS) == []


async def test_no_recipients_left_is_an_error(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    verdict = await check(newsletter(make_campaign, rsa_key, rows="email,first_name\nnope,X\n"))
    assert [f.code for f in verdict.errors] == [Code.RECIPIENTS]
    assert verdict.recipients == 0


async def test_suppression_predicate_is_counted(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    rows = ROWS + "carol@example.net,\n"  # suppressed: her empty name is no matter
    path = newsletter(make_campaign, rsa_key, rows=rows)
    verdict = await check(path, suppressed=lambda mailbox: mailbox.domain != "example.com")
    assert verdict.recipients == 1
    assert "(1 duplicate left out, 2 suppressed)" in only(verdict, Code.RECIPIENTS)[0].text
    assert only(verdict, Code.EMPTY_FIELD) == []


async def test_memory_stays_flat_as_the_list_grows(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    """The addresses met so far are kept in a temporary file, not in memory. From 10,000 to
    100,000 rows, the peak of Python's allocations grew by 1.7 MB (the list file's index of
    lines, among others); with a set of the addresses, by 10.4 MB."""
    peaks = []
    for count in (10_000, 100_000):
        rows = "email\n" + "".join(f"user{n}@example.com\n" for n in range(count))
        path = newsletter(
            make_campaign,
            rsa_key,
            rows=rows,
            personalize=False,
            subject="Hi",
            group_size=100,
            list_unsubscribe=None,
        )
        campaign = await load_campaign(path, env={})
        tracemalloc.start()
        try:
            verdict = await check_campaign(campaign, CheckOptions(dns=None, connect=False))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert verdict.recipients == count
    assert peaks[1] - peaks[0] < 5_000_000, peaks  # the set: 10.4 MB more


# ---------------------------------------------------------------------------------------------
# The server


@pytest.mark.parametrize(
    ("limits", "keys", "said"),
    [
        (Limits(blocked_client=True), {}, "Client host rejected: Access denied"),
        (
            Limits(fqdn_helo=True),
            {"helo_name": "mailer"},
            "Helo command rejected: need fully-qualified hostname; set helo_name",
        ),
        (Limits(blocked_senders=("sender@example.com",)), {}, "Sender address rejected"),
        (Limits(), {}, None),
    ],
)
async def test_the_check_finds_the_refusal_a_run_would_stop_on(
    postfix: PostfixFactory,
    make_campaign: CampaignFactory,
    limits: Limits,
    keys: dict[str, str],
    said: str | None,
) -> None:
    # Postfix says these only to a RCPT: connecting and logging in is not enough to know.
    relay = await postfix(limits)
    path = plain_list_campaign(make_campaign, relay.port, ["a@example.com"], **keys)
    verdict = await check(path, connect=True)
    (server,) = only(verdict, Code.SERVER)
    if said is None:
        assert server.severity is Severity.OK, server.text
        assert server.text.endswith(
            "MAIL FROM <sender@example.com> taken, and RCPT TO <postmaster@example.com>"
        )
    else:
        assert server.severity is Severity.ERROR and not verdict.ready
        assert "the server refused the" in server.text and said in server.text
    assert relay.sink.messages == []


@pytest.mark.parametrize(
    ("faults", "severity", "said"),
    [
        (
            Faults(rcpt_421_at=1),
            Severity.WARNING,
            "the server refused the session (its reply to RCPT TO): 421",
        ),
        (
            # a refusal that quotes the address is not taken for the sender's
            Faults(rcpt={"postmaster@example.com": "550 5.7.1 <postmaster@example.com>: no"}),
            Severity.WARNING,
            "RCPT TO <postmaster@example.com> refused as a recipient (550 5.7.1",
        ),
        (
            Faults(mail_reply="530 5.7.0 Authentication required"),
            Severity.ERROR,
            "530 5.7.0 Authentication required; the server wants a login: set the password",
        ),
        (
            Faults(mail_reply="530 5.7.0 Must issue a STARTTLS command first"),
            Severity.ERROR,
            "STARTTLS command first; the server wants TLS first: use security: starttls",
        ),
    ],
)
async def test_what_the_envelope_is_answered_is_told(
    make_campaign: CampaignFactory, faults: Faults, severity: Severity, said: str
) -> None:
    server = await FaultyServer(faults).start()
    try:
        path = plain_list_campaign(make_campaign, server.port, ["a@example.com"])
        verdict = await check(path, connect=True)
    finally:
        await server.stop()
    (finding,) = only(verdict, Code.SERVER)
    assert finding.severity is severity
    assert said in finding.text, finding.text


async def test_a_login_with_an_oauth_token_is_checked_as_a_run_logs_in(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server(store=OAuthStore(user=USER, valid={"ya29.good"}))
    token = tmp_path / "token.txt"
    token.write_text("ya29.good\n")
    token.chmod(0o600)
    path = make_campaign(
        port=running.server.ssl_port, password=None, auth="xoauth2", token_file=str(token)
    )
    verdict = await check(path, connect=True)
    (server,) = only(verdict, Code.SERVER)
    assert server.severity is Severity.OK, server.text
    assert f"logged in as {USER}" in server.text and "ya29" not in server.text


async def test_a_sender_that_is_the_postmaster_in_capitals_is_not_asked_about_itself(
    make_campaign: CampaignFactory,
) -> None:
    server = await FaultyServer(Faults()).start()
    try:
        path = plain_list_campaign(
            make_campaign, server.port, ["a@example.com"], **{"from": "Postmaster@Example.COM"}
        )
        verdict = await check(path, connect=True)
    finally:
        await server.stop()
    (finding,) = only(verdict, Code.SERVER)
    assert finding.text.endswith("and RCPT TO <abuse@Example.COM>"), finding.text


async def test_every_relay_is_probed_and_the_smallest_size_counts(
    make_campaign: CampaignFactory,
) -> None:
    small = await FaultyServer(Faults(size=400)).start()
    large = await FaultyServer(Faults()).start()
    gone = closed_port()
    try:
        servers = [
            {"name": name, "host": "127.0.0.1", "port": port, "security": "none"}
            for name, port in (("small", small.port), ("large", large.port), ("gone", gone))
        ]
        path = make_campaign(host=None, tls_ca_file=None, servers=servers)
        verdict = await check(path, connect=True)
        reached = make_campaign(host=None, tls_ca_file=None, servers=servers[:2])
        (smallest,) = only(await check(reached, connect=True), Code.SIZE)
    finally:
        await small.stop()
        await large.stop()
    assert smallest.severity is Severity.ERROR and "the server's SIZE of 400" in smallest.text
    found = {f.text.split(": ")[0]: f.severity for f in only(verdict, Code.SERVER)}
    assert found == {"small": Severity.OK, "large": Severity.OK, "gone": Severity.ERROR}
    assert any(
        t.startswith(f"server: gone: 127.0.0.1:{gone}: could not connect")
        for t in texts(verdict, Severity.ERROR)
    )
    assert len(only(verdict, Code.ENCRYPTION)) == 3
    (size,) = only(verdict, Code.SIZE)  # the relays reached still count
    assert size.severity is Severity.ERROR and "SIZE of 400" in size.text


@pytest.mark.parametrize(("size", "severity"), [(400, Severity.ERROR), (100_000, Severity.OK)])
async def test_message_size_against_the_servers_size(
    make_campaign: CampaignFactory, size: int, severity: Severity
) -> None:
    server = await FaultyServer(Faults(size=size)).start()
    try:
        path = plain_list_campaign(make_campaign, server.port, ["a@example.com", "b@example.org"])
        verdict = await check(path, connect=True)
    finally:
        await server.stop()
    (finding,) = only(verdict, Code.SIZE)
    assert finding.severity is severity
    assert f"the server's SIZE of {size:,}" in finding.text
    assert server.messages == [] and server.mails == 1  # the envelope tried, no DATA
    assert only(verdict, Code.ENCRYPTION)[0].severity is Severity.WARNING  # plain to loopback


async def test_a_server_that_cannot_be_reached_is_a_finding(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    port = closed_port()
    verdict = await check(newsletter(make_campaign, rsa_key, port=port), connect=True)
    (error,) = verdict.errors
    assert error.code is Code.SERVER
    assert error.text.startswith(f"127.0.0.1:{port}: could not connect")
    assert "not compared with the server's SIZE" in only(verdict, Code.SIZE)[0].text


async def test_a_refused_login_is_a_finding(
    make_campaign: CampaignFactory, smtp_server: ServerFactory, rsa_key: Any
) -> None:
    running = await smtp_server()
    path = newsletter(
        make_campaign, rsa_key, port=running.server.starttls_port, password="wrong password"
    )
    verdict = await check(path, connect=True)
    (error,) = verdict.errors
    assert error.code is Code.SERVER
    assert "login as sender@example.com failed: 535" in error.text
    assert "wrong password" not in str(verdict.findings)


# ---------------------------------------------------------------------------------------------
# The command line


async def test_cli_ready_and_exit_0(
    make_campaign: CampaignFactory, smtp_server: ServerFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    running = await smtp_server(data_size_limit=1_000_000)
    path = newsletter(make_campaign, rsa_key, port=running.server.starttls_port)
    with serve_zone(good_zone(rsa_key)) as dns:
        code, out, err = await run_cli(
            "check", str(path), "--dns-server", str(dns.nameserver), cwd=path.parent.parent
        )
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == f"check of {path}: 2 recipients"
    assert lines[1] == "ok (12):"
    assert lines[-1] == "ready to send: 0 errors, 0 warnings"
    assert "errors" not in out.split("\n", 1)[1].rsplit("\n", 2)[0]


async def test_cli_errors_apart_from_warnings_and_exit_1(
    make_campaign: CampaignFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = newsletter(make_campaign, rsa_key, rows=BAD_ROWS)
    zone = {**good_zone(rsa_key), "_dmarc.example.com": []}
    with serve_zone(zone) as dns:
        code, out, _ = await run_cli(
            "check", str(path), "--no-connect", "-q", "--dns-server", str(dns.nameserver),
            cwd=path.parent.parent,
        )  # fmt: skip
    assert code == 1
    lines = out.splitlines()
    assert lines[1] == "errors (1):"
    assert lines[2].startswith("  dmarc: no DMARC record at _dmarc.example.com")
    assert lines[3].startswith("warnings (")
    assert "ok (" not in out  # -q
    assert lines[-1].startswith("not ready to send: 1 error, ")


async def test_cli_no_dns_and_bad_options(make_campaign: CampaignFactory, rsa_key: Any) -> None:
    path = newsletter(make_campaign, rsa_key)
    root = path.parent.parent
    code, out, _ = await run_cli("check", str(path), "--no-connect", "--no-dns", cwd=root)
    assert code == 0 and "spf:" not in out and out.endswith("ready to send: 0 errors, 3 warnings\n")
    assert "  dns: SPF, DMARC and DKIM records not looked up (--no-dns)\n" in out
    code, _, err = await run_cli("check", str(path), "--dns-server", "dns.example", cwd=root)
    assert code == 2
    assert err == (
        "asyncmailer: --dns-server: expected an IP address with an optional :port, got "
        "'dns.example'\n"
    )
    code, _, err = await run_cli("check", str(root / "missing.yaml"), cwd=root)
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err


async def test_a_suppression_file_not_applied_is_said(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    path = newsletter(make_campaign, rsa_key, suppression_file="suppressed.txt")
    (path.parent.parent / "suppressed.txt").write_text("bob@example.org\n")
    verdict = await check(path)
    (warning,) = only(verdict, Code.SUPPRESSION)
    assert warning.severity is Severity.WARNING
    assert warning.text.endswith("suppressed.txt was not applied to this count")


async def test_a_list_that_cannot_be_read_is_an_error(
    make_campaign: CampaignFactory, rsa_key: Any
) -> None:
    verdict = await check(newsletter(make_campaign, rsa_key, rows="mail,first_name\na@b.c,A\n"))
    (error,) = verdict.errors
    assert error.code is Code.LIST
    assert "list.csv:1: no 'email' column in the header" in error.text
