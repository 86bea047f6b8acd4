"""Implicit TLS for the benchmark: a CA and a server certificate for 127.0.0.1, and stunnel in
front of a sink.

    asyncmailer --TLS--> stunnel server leg --plain--> smtp-sink
    smtp-source --plain--> stunnel client leg --TLS--> the same server leg --plain--> smtp-sink

smtp-source has no TLS, so the client leg pays for it in its place. The client leg verifies the
server's certificate against the same CA file as asyncmailer (`tls_ca_file`), and its IP
address: the campaign's host is 127.0.0.1, and asyncmailer checks the name too. Each leg is a
stunnel process in the foreground with a config file of its own in the harness's temporary
folder, no pid file, and its log in a file beside it; it is stopped with the run's sink.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sinks import HOST, Sink, free_port

_READY = re.compile(rb"Accepting new connections")
_SESSION = re.compile(rb"(TLSv[\d.]+) ciphersuite: (\S+)")


@dataclass(frozen=True, slots=True)
class Certificates:
    """A CA made for this run and the server certificate it signed for 127.0.0.1."""

    ca_file: Path  # PEM: what asyncmailer (tls_ca_file) and the client leg (CAfile) trust
    server_pem: Path  # PEM: the server's private key and certificate chain, for the server leg


def make_certificates(folder: Path) -> Certificates:
    """Write a new CA and a server certificate for 127.0.0.1 into `folder`.

    Raises ImportError without trustme (the dev extras have it)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(HOST)  # an IP address SAN: what the senders check against the host
    certs = Certificates(folder / "tls-ca.pem", folder / "tls-server.pem")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.server_pem.touch(mode=0o600)  # stunnel warns about a key others can read
    cert.private_key_and_cert_chain_pem.write_to_path(str(certs.server_pem))
    return certs


@dataclass(frozen=True, slots=True)
class TunnelTotals:
    """What the stunnel legs of one run used (None: no such leg, or it did not say)."""

    server_cpu_seconds: float | None = None
    client_cpu_seconds: float | None = None
    session: str | None = None  # protocol and cipher suite as the server leg logged them


def _leg(stunnel: Path, stem: Path, port: int, service: dict[str, str]) -> Sink:
    """A stunnel process with one service, accepting on HOST:`port`; its config is
    `stem`.conf and its log `stem`.log."""
    config = stem.with_name(f"{stem.name}.conf")
    lines = [
        "foreground = yes",  # logs to stderr, stays the child the harness stops
        "pid =",  # no pid file anywhere
        "debug = info",  # logs each connection's protocol and cipher suite
        f"[{stem.name}]",
        f"accept = {HOST}:{port}",
        *(f"{key} = {value}" for key, value in service.items()),
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = stem.with_name(f"{stem.name}.log")
    return Sink(stem.name, [str(stunnel), str(config)], log, port=port, counter=None, ready=_READY)


class Tunnel:
    """The stunnel legs in front of a sink listening on `backend_port`, as a context manager.

    `port` is where the sender connects: the server leg (TLS), or with `client_leg` a client
    leg (plain) that goes on to the server leg over TLS, verifying its certificate.
    """

    def __init__(
        self,
        stunnel: Path,
        certs: Certificates,
        stem: Path,
        backend_port: int,
        *,
        client_leg: bool,
    ) -> None:
        server_port = free_port()
        server_stem = stem.with_name(f"{stem.name}-stunnel-server")
        self._server_log = server_stem.with_name(f"{server_stem.name}.log")
        self._server = _leg(
            stunnel,
            server_stem,
            server_port,
            {"connect": f"{HOST}:{backend_port}", "cert": str(certs.server_pem)},
        )
        self._client: Sink | None = None
        self.port = server_port
        if client_leg:
            self.port = free_port()
            client = {
                "client": "yes",
                "connect": f"{HOST}:{server_port}",
                "CAfile": str(certs.ca_file),
                "verifyChain": "yes",
                "checkIP": HOST,
            }
            stem = stem.with_name(f"{stem.name}-stunnel-client")
            self._client = _leg(stunnel, stem, self.port, client)

    def __enter__(self) -> Tunnel:
        self._server.__enter__()
        try:
            if self._client is not None:
                self._client.__enter__()
        except BaseException:
            self._server.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> TunnelTotals:
        """Stop both legs; return their CPU time and the TLS session the server leg saw."""
        client = self._client.stop() if self._client is not None else None
        server = self._server.stop()
        found = sorted({b" ".join(m).decode() for m in _SESSION.findall(self._read_log())})
        return TunnelTotals(
            server.cpu_seconds,
            client.cpu_seconds if client is not None else None,
            ", ".join(found) or None,
        )

    def _read_log(self) -> bytes:
        try:
            return self._server_log.read_bytes()
        except OSError:
            return b""
