"""A scriptable misbehaving SMTP server for the fault matrix: plain asyncio, real sockets.

Every fault is a field of `Faults`; `times` fields say how often a fault fires (None: always),
so a test can make the first attempt fail and the retry succeed. The server keeps every message
whose final "." it read, even when it then drops the connection without replying: exactly what
a real server may have done (RFC 1047), and what a duplicate check must count.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field


@dataclass
class Faults:
    greeting: str = "220 faulty.test ESMTP"
    greeting_421: int = 0  # times to greet with 421 and close
    greeting_delay: float = 0.0  # seconds; float("inf"): never greet
    pipelining: bool = True
    starttls: str | None = None  # offer STARTTLS and answer it with this ("454 ..." refuses)
    auth: str = "235 2.7.0 OK"  # the reply to the password
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply
    rcpt_once: dict[str, str] = field(default_factory=dict)  # address -> reply, first time only
    max_rcpt: int = 0  # 452 past this many recipients in one transaction
    rcpt_421_at: int = 0  # reply 421 and close at the Nth RCPT of a session...
    rcpt_421_times: int | None = 1  # ...this many times
    drop_after_354: int | None = 0  # times to close right after 354
    drop_after_dot: int | None = 0  # times to keep the message, then close without a reply
    stall_after_354: bool = False  # stop reading after 354, connection left open
    final_delay: float = 0.0  # seconds before the reply to "."
    final_delay_times: int | None = 0
    close_after: int = 0  # 421 at MAIL after this many messages in one session
    data_reply: str = "250 2.0.0 queued"
    # After this many MAIL FROM accepted in all (the server's, not one session's), every
    # MAIL FROM gets `quota_reply` (Gmail's daily limit); None: never.
    quota_after: int | None = None
    quota_reply: str = "550 5.4.5 Daily user sending limit exceeded"
    mail_reply: str | None = None  # the reply to MAIL FROM, `mail_reply_times` times
    mail_reply_times: int | None = None
    max_connections: int = 0  # connections beyond this many at once are reset at once
    echo: str = ""  # appended to every reply after DATA (a server that echoes a secret)
    size: int = 100_000_000  # the SIZE it advertises
    # A token bucket over MAIL FROM of every session: above `rate_limit` messages a second
    # (with `rate_burst` at once), `rate_reply` and the connection closed (Postfix's
    # smtpd_client_message_rate_limit); 0: no limit.
    rate_limit: float = 0.0
    rate_burst: int = 10
    rate_reply: str = "421 4.7.0 Error: too many messages from 127.0.0.1, slow down"
    # After this many messages stored in all, the server stops: it listens no more, and
    # every session is closed at its next command, without a reply (a relay shut down
    # between two transactions); None: never.
    halt_after: int | None = None


@dataclass
class Stored:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class FaultyServer:
    def __init__(self, faults: Faults, *, tls: ssl.SSLContext | None = None) -> None:
        self.faults = faults
        self.tls = tls  # for STARTTLS
        self.messages: list[Stored] = []
        self.connections = 0
        self.open = 0  # connections open now
        self.mails = 0  # MAIL FROM commands accepted
        self.refused_connections = 0
        self.auth_lines: list[bytes] = []  # everything sent after AUTH, in the clear or not
        self.plaintext: bytearray = bytearray()  # every byte received before any TLS
        self._server: asyncio.Server | None = None
        self._counters: dict[str, int] = {}
        self.port = 0
        self.throttled = 0  # rate_reply answers given
        self.halted = False
        self.accepted_at: list[float] = []  # when each message was taken (loop time)
        self._tokens = 0.0
        self._filled = 0.0

    def _fire(self, name: str, times: int | None) -> bool:
        if times is None:
            return True
        used = self._counters.get(name, 0)
        if used < times:
            self._counters[name] = used + 1
            return True
        return False

    async def start(self) -> FaultyServer:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def halt(self) -> None:
        """Stop listening; every open session ends at its next command."""
        self.halted = True
        if self._server is not None:
            self._server.close()

    def _take_token(self) -> bool:
        """The token bucket of `rate_limit`: True when a message may go now."""
        now = asyncio.get_running_loop().time()
        if not self._filled:
            self._tokens, self._filled = float(self.faults.rate_burst), now
        self._tokens = min(
            float(self.faults.rate_burst),
            self._tokens + (now - self._filled) * self.faults.rate_limit,
        )
        self._filled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def delivered(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            if self.faults.max_connections and self.open > self.faults.max_connections:
                self.refused_connections += 1
                return  # closed before the greeting: a connection limit
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        f = self.faults
        if f.greeting_delay:
            await asyncio.sleep(f.greeting_delay)
        if self._fire("greeting_421", f.greeting_421):
            await self._say(writer, "421 4.3.2 Service not available, try later")
            return
        await self._say(writer, f.greeting)
        if not f.greeting.startswith("220"):
            return
        tls = False
        mail_from: str | None = None
        rcpts: list[str] = []
        messages = rcpt_count = 0

        while line := await reader.readline():
            if self.halted:
                return
            if not tls:
                self.plaintext.extend(line)
            command = line.rstrip(b"\r\n")
            verb = command[:4].upper()
            if verb == b"EHLO":
                extensions = ["250-faulty.test", f"250-SIZE {f.size}", "250-AUTH LOGIN PLAIN"]
                if f.pipelining:
                    extensions.append("250-PIPELINING")
                if f.starttls and not tls:
                    extensions.append("250-STARTTLS")
                await self._say(writer, "\r\n".join([*extensions, "250 8BITMIME"]))
            elif verb == b"STAR":
                await self._say(writer, f.starttls or "502 no")
                if f.starttls and f.starttls.startswith("220") and self.tls:
                    await writer.start_tls(self.tls)
                    tls = True
            elif verb == b"AUTH":
                self.auth_lines.append(command)
                parts = command.split()
                if len(parts) == 2 and parts[1].upper() == b"LOGIN":
                    await self._say(writer, "334 " + base64.b64encode(b"Username:").decode())
                    self.auth_lines.append(await reader.readline())
                await self._say(writer, "334 " + base64.b64encode(b"Password:").decode())
                self.auth_lines.append(await reader.readline())
                await self._say(writer, f.auth)
                if not f.auth.startswith("235"):
                    continue
            elif verb == b"MAIL":
                if f.close_after and messages >= f.close_after:
                    await self._say(writer, "421 4.7.0 too many messages, closing")
                    return
                mail_from, rcpts = None, []
                if f.rate_limit and not self._take_token():
                    self.throttled += 1
                    await self._say(writer, f.rate_reply)
                    if f.rate_reply.startswith("421"):
                        return
                    continue
                if f.quota_after is not None and self.mails >= f.quota_after:
                    await self._say(writer, f.quota_reply)
                    continue
                if f.mail_reply and self._fire("mail_reply", f.mail_reply_times):
                    await self._say(writer, f.mail_reply)
                    if f.mail_reply.startswith("421"):
                        return
                    continue
                mail_from = command.decode().split(":", 1)[1].split(">")[0].strip("<")
                rcpts = []
                self.mails += 1
                await self._say(writer, "250 2.1.0 OK")
            elif verb == b"RCPT":
                rcpt_count += 1
                address = command.decode().split(":", 1)[1].split(">")[0].strip("<")
                if (
                    f.rcpt_421_at
                    and rcpt_count == f.rcpt_421_at
                    and self._fire("rcpt_421", f.rcpt_421_times)
                ):
                    await self._say(writer, "421 4.3.2 shutting down")
                    return
                reply = f.rcpt.get(address) or f.rcpt_once.pop(address, None)
                if mail_from is None:
                    reply = "503 5.5.1 Error: need MAIL command"
                if reply is None and f.max_rcpt and len(rcpts) >= f.max_rcpt:
                    reply = "452 4.5.3 Too many recipients"
                if reply is None:
                    rcpts.append(address)
                    reply = "250 2.1.5 OK"
                await self._say(writer, reply)
            elif verb == b"DATA":
                if not rcpts:
                    await self._say(writer, "554 5.5.1 no valid recipients")
                    continue
                await self._say(writer, "354 go ahead")
                if self._fire("drop_after_354", f.drop_after_354):
                    return
                if f.stall_after_354:
                    await asyncio.sleep(3600)  # cancelled when the server stops
                body = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append(Stored(mail_from or "", tuple(rcpts), body))
                self.accepted_at.append(asyncio.get_running_loop().time())
                messages += 1
                if self._fire("drop_after_dot", f.drop_after_dot):
                    return
                if f.final_delay and self._fire("final_delay", f.final_delay_times):
                    await asyncio.sleep(f.final_delay)
                await self._say(writer, f.data_reply + f.echo)
                rcpts = []
                if f.halt_after is not None and len(self.messages) >= f.halt_after:
                    await self.halt()
            elif verb == b"RSET":
                rcpts = []
                await self._say(writer, "250 2.0.0 OK")
            elif verb == b"NOOP":
                await self._say(writer, "250 2.0.0 OK")
            elif verb == b"QUIT":
                await self._say(writer, "221 2.0.0 bye")
                return
            else:
                await self._say(writer, "500 5.5.2 what?")

    @staticmethod
    async def _say(writer: asyncio.StreamWriter, text: str) -> None:
        writer.write(text.encode() + b"\r\n")
        await writer.drain()
