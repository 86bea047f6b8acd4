"""A recording aiosmtpd server class for tests: keeps every byte each client sent."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from asyncmailer.server import MailStore


@dataclass
class Chunk:
    data: bytes
    tls: bool


@dataclass
class Recorder:
    """What clients sent, per connection, with whether it came over TLS."""

    connections: list[list[Chunk]] = field(default_factory=list)

    def lines(self) -> list[bytes]:
        return [b"".join(c.data for c in conn) for conn in self.connections]

    def commands(self) -> list[str]:
        """Every command line of every connection, upper-cased verb first."""
        found = []
        for raw in self.lines():
            for line in raw.split(b"\r\n"):
                if line:
                    found.append(line.decode("utf-8", "replace"))
        return found

    def plaintext(self) -> bytes:
        return b"".join(c.data for conn in self.connections for c in conn if not c.tls)


class RecordingSMTP(SMTP):
    def __init__(self, *args: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder
        self._chunks: list[Chunk] = []
        recorder.connections.append(self._chunks)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        tls = self._tls_protocol is not None or (
            transport is not None and transport.get_extra_info("sslcontext") is not None
        )
        self._chunks.append(Chunk(bytes(data), tls))
        super().data_received(data)


class DsnSMTP(SMTP):
    """An aiosmtpd server that takes the DSN parameters (RFC 3461: RET, ENVID on MAIL;
    NOTIFY, ORCPT on RCPT) and keeps them, upper-cased, in the envelope's `mail_options` and
    `rcpt_options` (aiosmtpd refuses any parameter it does not know). Its handler says DSN in
    EHLO (`DsnStore`, `tests.postfix.Sink`)."""

    _DSN = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})

    def _getparams(self, params: Any) -> Any:
        found = super()._getparams(params)
        return None if found is None else {k: v for k, v in found.items() if k not in self._DSN}


class RecordingDsnSMTP(DsnSMTP, RecordingSMTP):
    """Both: takes the DSN parameters, and records every byte."""


class DsnStore(MailStore):
    """The embedded server's store, offering DSN."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        responses.insert(-1, "250-DSN")
        return responses


class OAuthStore(MailStore):
    """The embedded server's store, also taking AUTH XOAUTH2 (an aiosmtpd handler's
    `auth_XOAUTH2`) for `user` with a token in `valid`. Any other token gets what Gmail sends
    for an expired one: a 334 with its JSON error, then, after the client's empty line,
    535 (with the token echoed, so that tests see it scrubbed)."""

    def __init__(self, *args: Any, user: str, valid: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.valid = valid
        self.tokens: list[str] = []  # every token tried, in order

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        fields = base64.b64decode(args[1]).decode().split("\x01") if len(args) > 1 else []
        user = fields[0].removeprefix("user=") if fields else ""
        token = fields[1].removeprefix("auth=Bearer ") if len(fields) > 1 else ""
        self.tokens.append(token)
        if user == self.user and token in self.valid:
            return AuthResult(success=True, auth_data=user)
        error = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        await server.challenge_auth(json.dumps(error))
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 Token not accepted: {token}"
        )
