"""SPF, DKIM and DMARC lookups against a real DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

import pytest
from dnslib import RCODE

from asyncmailer.dns_records import DnsRecords, Nameserver, Outcome, is_spf, tags

from .dns_server import closed_port, serve_zone


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]:5353", "::1", 5353),
        (" [::1] ", "::1", 53),
    ],
)
def test_nameserver_parse(text: str, host: str, port: int) -> None:
    assert Nameserver.parse(text) == Nameserver(host, port)


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:0", "127.0.0.1:x", "[::1]5353", "1.2.3"])
def test_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        Nameserver.parse(text)


def test_nameserver_str() -> None:
    assert str(Nameserver("::1", 5353)) == "[::1]:5353"
    assert str(Nameserver("127.0.0.1")) == "127.0.0.1:53"


def test_tags() -> None:
    assert tags("v=DKIM1; k=rsa; p=MIIB IjAN ;") == {"v": "DKIM1", "k": "rsa", "p": "MIIB IjAN"}
    assert tags("v=DMARC1;P=reject;p=none; junk") == {"v": "DMARC1", "p": "reject"}


@pytest.mark.parametrize(
    ("record", "spf"),
    [("v=spf1 -all", True), ("V=SPF1", True), ("v=spf10 -all", False), ("x v=spf1", False)],
)
def test_is_spf(record: str, spf: bool) -> None:
    assert is_spf(record) is spf


async def test_lookups_found_absent_and_joined() -> None:
    long_key = "v=DKIM1; k=rsa; p=" + "A" * 600  # three TXT strings on the wire
    zone = {
        "example.com": ["v=spf1 ip4:127.0.0.1 -all", "google-site-verification=x"],
        "s1._domainkey.example.com": [long_key],
        "_dmarc.example.com": ["v=DMARC1; p=reject"],
        "bare.example.com": [],  # exists, no TXT
    }
    with serve_zone(zone) as server:
        dns = DnsRecords(server.nameserver)
        spf = await dns.spf("example.com")
        assert spf.outcome is Outcome.FOUND
        assert spf.records == ("v=spf1 ip4:127.0.0.1 -all",)
        dkim = await dns.dkim("s1", "example.com")
        assert dkim.records == (long_key,)
        assert (await dns.dmarc("example.com")).records == ("v=DMARC1; p=reject",)
        assert (await dns.spf("bare.example.com")).outcome is Outcome.ABSENT
        assert (await dns.spf("nowhere.example.com")).outcome is Outcome.ABSENT
        assert (await dns.dkim("s2", "example.com")).outcome is Outcome.ABSENT
        # a TXT record that is not SPF is not counted as one
        assert (await dns.txt("example.com")).outcome is Outcome.FOUND
        assert len((await dns.txt("example.com")).records) == 2


async def test_dmarc_falls_back_to_the_parent_domain() -> None:
    zone = {"_dmarc.example.com": ["v=DMARC1; p=quarantine"], "news.example.com": []}
    with serve_zone(zone) as server:
        lookup = await DnsRecords(server.nameserver).dmarc("news.example.com")
        assert lookup.outcome is Outcome.FOUND
        assert lookup.name == "_dmarc.example.com"
        asked = [name for name, _ in server.queries]
        assert asked == ["_dmarc.news.example.com", "_dmarc.example.com"]
        # never the top-level domain's
        missing = await DnsRecords(server.nameserver).dmarc("other.org")
        assert missing.outcome is Outcome.ABSENT
        assert missing.name == "_dmarc.other.org"
        assert "_dmarc.org" not in [name for name, _ in server.queries]


async def test_dmarc_ignores_records_of_another_kind() -> None:
    zone = {"_dmarc.example.com": ["p=reject", "v=DMARC1 ; p=none"]}
    with serve_zone(zone) as server:
        lookup = await DnsRecords(server.nameserver).dmarc("example.com")
        assert lookup.records == ("v=DMARC1 ; p=none",)


async def test_servfail_is_unreachable() -> None:
    with serve_zone({}, rcode=RCODE.SERVFAIL) as server:
        lookup = await DnsRecords(server.nameserver).spf("example.com")
    assert lookup.outcome is Outcome.UNREACHABLE
    assert lookup.reason == "every nameserver failed to answer"


async def test_no_server_is_unreachable() -> None:
    dns = DnsRecords(Nameserver("127.0.0.1", closed_port()), lifetime=0.5)
    lookup = await dns.dmarc("example.com")
    assert lookup.outcome is Outcome.UNREACHABLE
    assert lookup.reason == "no answer in time"
