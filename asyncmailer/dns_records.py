"""The DNS records a bulk sender's domain publishes: SPF, DKIM and DMARC TXT records, looked up
with dnspython's async resolver (the system's, or one nameserver given as ``host:port``).

A lookup never raises: its answer is `Found`, `Absent` (the name or its TXT records do not
exist) or `Unreachable` (a timeout, no resolver, every server failing), so a check can say
"could not check" instead of failing. The tag parser (`tags`) is pure.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

__all__ = [
    "DNS_LIFETIME",
    "DnsRecords",
    "Lookup",
    "Nameserver",
    "Outcome",
    "is_spf",
    "tags",
]

DNS_LIFETIME = 5.0  # seconds one lookup may take, retries included


class Outcome(StrEnum):
    """What one lookup came back with."""

    FOUND = "found"
    ABSENT = "absent"  # NXDOMAIN, or the name has no record of the kind asked for
    UNREACHABLE = "unreachable"  # no answer at all: the records are not known


@dataclass(frozen=True, slots=True)
class Lookup:
    """The TXT records of one name (each record's strings joined, as RFC 7208 3.3 and
    RFC 6376 3.6.2.2 say), those of the kind asked for; `reason` says why it is
    unreachable."""

    name: str
    outcome: Outcome
    records: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Nameserver:
    """One nameserver to ask instead of the system's resolvers (`--dns-server`)."""

    host: str  # an IP address
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        """``127.0.0.1``, ``127.0.0.1:5353``, ``::1`` or ``[::1]:5353``.

        :raises ValueError: not an IP address with an optional port from 1 to 65535.
        """
        host, port = text.strip(), "53"
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"expected [address]:port, got {text!r}")
                port = rest[1:]
        elif host.count(":") == 1:
            host, port = host.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"expected an IP address with an optional :port, got {text!r}"
            ) from None
        if not port.isascii() or not port.isdecimal() or not 1 <= int(port) <= 65535:
            raise ValueError(f"expected a port from 1 to 65535, got {port!r}")
        return cls(str(address), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def tags(record: str) -> dict[str, str]:
    """A DKIM key record's or a DMARC record's ``tag=value; ...`` list (RFC 6376 3.2), tags
    lower-cased, values stripped of white space at their ends. A piece without ``=`` is left
    out; a tag given twice keeps its first value (a record with one is invalid anyway)."""
    found: dict[str, str] = {}
    for piece in record.split(";"):
        name, equals, value = piece.partition("=")
        if equals and name.strip():
            found.setdefault(name.strip().lower(), value.strip())
    return found


def is_spf(record: str) -> bool:
    """An SPF record: it begins with the version ``v=spf1``, alone or followed by a space
    (RFC 7208 4.5: ``v=spf10`` is not one)."""
    lowered = record.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


class DnsRecords:
    """Looks up a domain's mail records. Only this class talks to DNS."""

    def __init__(
        self, nameserver: Nameserver | None = None, *, lifetime: float = DNS_LIFETIME
    ) -> None:
        self.nameserver = nameserver
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"<DnsRecords {self.nameserver or 'system resolver'}>"

    def _resolver(self) -> dns.asyncresolver.Resolver:
        """A resolver per lookup set: reading /etc/resolv.conf is the only thing it does on
        creation, and a missing one raises (reported as unreachable)."""
        if self.nameserver is None:
            resolver = dns.asyncresolver.Resolver()
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [self.nameserver.host]
            resolver.port = self.nameserver.port
        resolver.lifetime = self.lifetime
        resolver.timeout = min(2.0, self.lifetime)
        return resolver

    async def txt(self, name: str) -> Lookup:
        """Every TXT record of `name`."""
        try:
            return await self._txt(name)
        finally:
            # dnspython closes its UDP transport with transport.close(), which closes the
            # socket on the loop's next turn: give it that turn, so a caller that ends its
            # loop right after the answer does not leave the socket to the collector.
            await asyncio.sleep(0)

    async def _txt(self, name: str) -> Lookup:
        try:
            answer = await self._resolver().resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Lookup(name, Outcome.ABSENT)
        except dns.resolver.NoResolverConfiguration:
            return Lookup(name, Outcome.UNREACHABLE, reason="no resolver is configured")
        except dns.resolver.NoNameservers:
            return Lookup(name, Outcome.UNREACHABLE, reason="every nameserver failed to answer")
        except dns.exception.Timeout:
            return Lookup(name, Outcome.UNREACHABLE, reason="no answer in time")
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel) as err:
            return Lookup(name, Outcome.ABSENT, reason=str(err))
        except (dns.exception.DNSException, OSError) as err:
            return Lookup(name, Outcome.UNREACHABLE, reason=str(err) or type(err).__name__)
        records = []
        for rdata in answer:
            strings = getattr(rdata, "strings", ())
            records.append(b"".join(strings).decode("utf-8", "replace"))
        return Lookup(name, Outcome.FOUND, tuple(records))

    async def spf(self, domain: str) -> Lookup:
        """The SPF records (``v=spf1``) of `domain`: more than one is an error (RFC 7208
        4.5)."""
        return _only(await self.txt(domain), is_spf)

    async def dkim(self, selector: str, domain: str) -> Lookup:
        """The DKIM key records at ``<selector>._domainkey.<domain>``: those with a ``p=``
        tag (``v=DKIM1``, when present, must come first: RFC 6376 3.6.1)."""

        def is_key(record: str) -> bool:
            found = tags(record)
            version = record.lstrip().lower().startswith("v=")
            return "p" in found and (not version or found.get("v") == "DKIM1")

        return _only(await self.txt(f"{selector}._domainkey.{domain}"), is_key)

    async def dmarc(self, domain: str) -> Lookup:
        """The DMARC records (``v=DMARC1`` first) at ``_dmarc.<domain>``; when there is
        none, at its parent domains (RFC 7489 6.6.3 looks in the organisational domain;
        without the public suffix list, each parent of two labels or more is tried)."""
        labels = domain.rstrip(".").split(".")
        found = Lookup(f"_dmarc.{domain}", Outcome.ABSENT)
        for start in range(max(len(labels) - 1, 1)):
            name = "_dmarc." + ".".join(labels[start:])
            lookup = _only(await self.txt(name), _is_dmarc)
            if lookup.outcome is not Outcome.ABSENT:
                return lookup
            if start == 0:
                found = lookup
        return found


def _is_dmarc(record: str) -> bool:
    first = record.split(";", 1)[0].replace(" ", "").replace("\t", "")
    return first == "v=DMARC1"


def _only(lookup: Lookup, keep: Callable[[str], bool]) -> Lookup:
    """`lookup` with only the records `keep` accepts: none left is `Absent`."""
    if lookup.outcome is not Outcome.FOUND:
        return lookup
    records = tuple(r for r in lookup.records if keep(r))
    if not records:
        return Lookup(lookup.name, Outcome.ABSENT)
    return Lookup(lookup.name, Outcome.FOUND, records)
