"""A real DNS server on loopback for the tests: dnslib's `DNSServer` (UDP and TCP on one port,
in threads of its own) answering TXT queries from a zone given as a mapping, and recording
every query it was asked."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from asyncmailer.dns_records import Nameserver


class _Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: Mapping[str, Sequence[str]], rcode: int | None) -> None:
        self.records = {name.lower().rstrip("."): list(texts) for name, texts in records.items()}
        self.rcode = rcode
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        self.queries.append((name, kind))
        reply = request.reply()
        if self.rcode is not None:
            reply.header.rcode = self.rcode
            return reply
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if kind == "TXT":
            for text in self.records[name]:
                data = text.encode("utf-8")
                # A TXT record's strings are 255 bytes at most: a long key is split.
                strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(strings), ttl=60))
        return reply  # the name exists, with no record of that kind: NOERROR, no answer


class ZoneServer:
    """The running server: `nameserver` to point `DnsRecords` at, `queries` it answered."""

    def __init__(self, zone: _Zone, port: int) -> None:
        self._zone = zone
        self.nameserver = Nameserver("127.0.0.1", port)

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self._zone.queries


@contextlib.contextmanager
def serve_zone(
    records: Mapping[str, Sequence[str]], *, rcode: int | None = None
) -> Iterator[ZoneServer]:
    """Serve `records` (a name's TXT records) on 127.0.0.1; every other name is NXDOMAIN.
    With `rcode` (e.g. `RCODE.SERVFAIL`), every query gets that answer instead."""
    zone = _Zone(records, rcode)
    quiet = DNSLogger(logf=lambda text: None)
    udp, tcp, port = _bind_pair(zone, quiet)
    threads = [
        # A short poll, so stopping takes milliseconds, not socketserver's half second.
        threading.Thread(target=server.server.serve_forever, args=(0.02,), daemon=True)
        for server in (udp, tcp)
    ]
    for thread in threads:
        thread.start()
    try:
        yield ZoneServer(zone, port)
    finally:
        for server in (udp, tcp):
            server.stop()
            server.server.server_close()
        for thread in threads:
            thread.join()


def _bind_pair(zone: _Zone, quiet: DNSLogger) -> tuple[DNSServer, DNSServer, int]:
    """A UDP and a TCP server on one free port. The UDP port's number may be taken for TCP by
    another program (seen under load: EADDRINUSE): then close it and try another."""
    for _ in range(20):
        udp = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
        port: int = udp.server.server_address[1]
        try:
            tcp = DNSServer(zone, address="127.0.0.1", port=port, tcp=True, logger=quiet)
        except OSError:
            udp.server.server_close()
            continue
        return udp, tcp, port
    raise OSError("no loopback port free for both UDP and TCP")


def closed_port() -> int:
    """A loopback UDP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
