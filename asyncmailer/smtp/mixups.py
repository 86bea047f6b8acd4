"""The two common mix-ups of `security` and `port`, told apart and named with their fix:
implicit TLS (`ssl`) against a port that greets in plain text (a STARTTLS port), and a plain
greeting awaited (`starttls`, `none`) from a port that speaks TLS from the first byte (465).

Without these, the first is a bare ``[SSL: WRONG_VERSION_NUMBER]`` and the second a wait of
`connect_timeout` seconds for a greeting that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = [
    "PROBE_AFTER",
    "answered_in_plain_text",
    "implicit_tls_hint",
    "plain_text_hint",
    "speaks_tls",
]

# No greeting after this many seconds: ask, on a second connection, whether the port speaks
# TLS. A server that greets late (a greeting delay) is not hurried: its connection waits on.
PROBE_AFTER = 2.0
_PROBE_TIMEOUT = 3.0
# What OpenSSL says when the "TLS record" it read was text ("220 mail.example.com ESMTP").
_PLAIN_TEXT_REASONS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"})


def answered_in_plain_text(err: BaseException) -> bool:
    """The TLS handshake failed because the server sent plain text: `err`, or the error it was
    raised from, is such an `ssl.SSLError`."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and cause.reason in _PLAIN_TEXT_REASONS:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def plain_text_hint(port: int) -> str:
    return (
        f"the server answered in plain text, not TLS: port {port} looks like a STARTTLS port; "
        "use security: starttls (or port: 465 for implicit TLS)"
    )


def implicit_tls_hint(port: int) -> str:
    return (
        f"no greeting in plain text, and the server speaks TLS from the first byte: port {port} "
        "is an implicit-TLS port; use security: ssl (or port: 587 for STARTTLS)"
    )


def _probe_context() -> ssl.SSLContext:
    # Only to learn whether the port speaks TLS: nothing is sent over it, so nothing is
    # verified; the real connection verifies as configured.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def speaks_tls(host: str, port: int, *, timeout: float = _PROBE_TIMEOUT) -> bool:
    """Does `host:port` complete a TLS handshake at once, on a connection of its own (closed
    right after, nothing sent but the handshake)? False when it cannot be told in `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                host, port, ssl=_probe_context(), server_hostname=host
            )
    except ssl.SSLError as err:
        # An alert is TLS too (the server would not take our hello); text is not.
        return "ALERT" in (err.reason or "")
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(1):
            await writer.wait_closed()
    return True
