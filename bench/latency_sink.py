"""An SMTP sink that answers every command N ms after it arrived: a model of network latency.

Plain SMTP on loopback only: no TLS, no AUTH; advertises PIPELINING and SIZE and accepts every
message. Each reply is due at (arrival of its command line + delay) and replies go out in order,
so pipelined commands are not delayed cumulatively: three commands that arrive together are
answered together, one delay later. The reply to the end of DATA is due one delay after the
final ``.`` arrives.

    python bench/latency_sink.py --delay-ms 50 [--port 0] [--max-seconds 900]
                                 [--throttle-rate 50 [--throttle-burst 10]]

With --throttle-rate it is a relay that throttles: a token bucket over MAIL FROM of every
session, and above that rate ``421 4.7.0`` and the connection closed (as Postfix's
smtpd_client_message_rate_limit does).

It prints ``listening 127.0.0.1:PORT`` once ready. On SIGTERM/SIGINT (or after --max-seconds)
it prints ``sessions=N messages=N recipients=N data_bytes=N throttled=N settled=X`` and exits
(`settled`: messages a second accepted over the second half of them).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from dataclasses import dataclass, field

HOST = "127.0.0.1"
MAX_SIZE = 64 * 1024 * 1024
MAX_LINE = 4096
_END_OF_DATA = b"\r\n.\r\n"


@dataclass(slots=True)
class Totals:
    """What the sink accepted, over all sessions."""

    sessions: int = 0
    messages: int = 0
    recipients: int = 0
    data_bytes: int = 0
    throttled: int = 0  # MAIL FROM answered 421 by the token bucket
    accepted_at: list[float] = field(default_factory=list)  # with a throttle: when, each

    def settled(self) -> float:
        """Messages a second over the second half of those accepted (0: too few)."""
        later = self.accepted_at[len(self.accepted_at) // 2 :]
        if len(later) < 2 or later[-1] <= later[0]:
            return 0.0
        return (len(later) - 1) / (later[-1] - later[0])

    def line(self) -> str:
        return (
            f"sessions={self.sessions} messages={self.messages} "
            f"recipients={self.recipients} data_bytes={self.data_bytes} "
            f"throttled={self.throttled} settled={self.settled():.1f}"
        )


class Bucket:
    """A token bucket: `rate` a second, `burst` at once; rate 0: no limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.filled: float | None = None

    def take(self, now: float) -> bool:
        if not self.rate:
            return True
        if self.filled is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.filled) * self.rate)
        self.filled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _ehlo_reply(argument: str) -> bytes:
    lines = [f"localhost greets {argument or 'you'}", "PIPELINING", f"SIZE {MAX_SIZE}"]
    lines += ["8BITMIME", "ENHANCEDSTATUSCODES"]
    text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
    return text.encode()


_SIMPLE_REPLIES: dict[str, bytes] = {
    "HELO": b"250 localhost\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
}
_UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
_TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
_QUEUED = b"250 2.0.0 Ok: queued\r\n"
_THROTTLED = b"421 4.7.0 Error: too many messages from 127.0.0.1, slow down\r\n"


class DelayedReplies:
    """Write replies in order, each at its own due time (arrival + delay)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, delay: float):
        self._loop = loop
        self._transport = transport
        self._delay = delay
        self._pending: deque[tuple[float, bytes, bool]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, arrival: float, reply: bytes, *, close: bool = False) -> None:
        self._pending.append((arrival + self._delay, reply, close))
        if self._timer is None:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._pending and self._pending[0][0] <= now:
            _, reply, close = self._pending.popleft()
            if self._transport.is_closing():
                self._pending.clear()
                return
            self._transport.write(reply)
            if close:
                self._pending.clear()
                self._transport.close()
                return
        if self._pending:
            self._timer = self._loop.call_at(self._pending[0][0], self._flush)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pending.clear()


class SinkProtocol(asyncio.Protocol):
    """One SMTP session: parse command lines; in DATA, scan for CRLF.CRLF without keeping data."""

    def __init__(self, delay: float, totals: Totals, bucket: Bucket) -> None:
        self._delay = delay
        self._totals = totals
        self._bucket = bucket
        self._buffer = bytearray()
        self._in_data = False
        self._tail = b""
        self._recipients = 0
        self._replies: DelayedReplies | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._totals.sessions += 1
        self._replies = DelayedReplies(self._loop, transport, self._delay)
        self._replies.add(self._loop.time(), b"220 localhost ESMTP latency sink\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._replies is not None:
            self._replies.cancel()

    def data_received(self, data: bytes) -> None:
        arrival = self._loop.time()
        rest = self._data_received(data, arrival) if self._in_data else data
        if rest:
            self._buffer += rest
            self._commands(arrival)

    def _data_received(self, data: bytes, arrival: float) -> bytes:
        """Consume message data; return what follows the end of data (or b"")."""
        window = self._tail + data
        end = window.find(_END_OF_DATA)
        if end < 0:
            self._totals.data_bytes += len(data)
            self._tail = window[-(len(_END_OF_DATA) - 1) :]
            return b""
        consumed = end + len(_END_OF_DATA) - len(self._tail)
        self._totals.data_bytes += consumed
        self._in_data = False
        self._totals.messages += 1
        if self._bucket.rate:
            self._totals.accepted_at.append(arrival)
        self._totals.recipients += self._recipients
        self._recipients = 0
        self._reply(arrival, _QUEUED)
        return data[consumed:]

    def _commands(self, arrival: float) -> None:
        while self._buffer:
            if self._in_data:  # message data that arrived together with commands
                self._buffer = bytearray(self._data_received(bytes(self._buffer), arrival))
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._reply(arrival, _TOO_LONG, close=True)
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._command(line.decode("ascii", "replace"), arrival)

    def _command(self, line: str, arrival: float) -> None:
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            self._reply(arrival, _ehlo_reply(argument.strip()))
            return
        if verb == "MAIL" and not self._bucket.take(arrival):
            self._totals.throttled += 1
            self._reply(arrival, _THROTTLED, close=True)
            self._buffer.clear()  # the pipelined RCPT and DATA are never answered
            return
        if verb == "RCPT":
            self._recipients += 1
        elif verb in ("MAIL", "RSET"):
            self._recipients = 0
        elif verb == "DATA":
            self._in_data = True
            self._tail = b"\r\n"  # the DATA line's own CRLF may start the terminator
        self._reply(arrival, _SIMPLE_REPLIES.get(verb, _UNKNOWN), close=verb == "QUIT")

    def _reply(self, arrival: float, reply: bytes, *, close: bool = False) -> None:
        assert self._replies is not None
        self._replies.add(arrival, reply, close=close)


async def serve(
    delay_ms: float, port: int, max_seconds: float, bucket: Bucket | None = None
) -> Totals:
    loop = asyncio.get_running_loop()
    totals = Totals()
    shared = bucket or Bucket(0.0, 0)  # one bucket for every session: the client's rate
    server = await loop.create_server(
        lambda: SinkProtocol(delay_ms / 1000, totals, shared), HOST, port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {HOST}:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        try:
            await asyncio.wait_for(stop.wait(), timeout=max_seconds)
        except TimeoutError:
            print("latency_sink: --max-seconds reached, stopping", file=sys.stderr)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=50.0, help="per-reply delay")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long")
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="messages/s, then 421")
    parser.add_argument("--throttle-burst", type=int, default=10, help="messages at once")
    args = parser.parse_args()
    bucket = Bucket(args.throttle_rate, args.throttle_burst)
    totals = asyncio.run(serve(args.delay_ms, args.port, args.max_seconds, bucket))
    print(totals.line(), flush=True)


if __name__ == "__main__":
    main()
