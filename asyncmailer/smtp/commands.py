"""SMTP command bytes, and the last check before they reach the wire: no argument may carry a
CR, LF or NUL (a second command smuggled into the first). With DSN (RFC 3461), the envelope
id and the notifications asked for."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import InputError

__all__ = [
    "DATA",
    "DSN_NOTIFY",
    "DSN_RET",
    "QUIT",
    "RSET",
    "UnsafeArgumentError",
    "envelope",
    "mail_from",
    "rcpt_to",
    "xtext",
]

DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
RSET = b"RSET\r\n"
_UNSAFE = re.compile(r"[\r\n\x00]")
# RFC 3461: a failure or a delay is reported (not a success: a bulk sender does not want one
# per recipient), with the message's headers only.
DSN_NOTIFY = " NOTIFY=FAILURE,DELAY"
DSN_RET = "HDRS"
# xtext (RFC 3461 4): printable ASCII but "+" and "=" as it is, every other byte "+HH".
_XTEXT_PLAIN = frozenset(range(33, 127)) - {ord("+"), ord("=")}
# The same set as a pattern: an envelope id is plain ASCII, so `xtext` nearly always returns
# it as it is after one C-level match, not a Python step per character (once per message).
_XTEXT_AS_IS = re.compile(r"[!-*,-<>-~]*")


class UnsafeArgumentError(InputError):
    """A command argument holds CR, LF or NUL: nothing of the command was written."""


def _check(*arguments: str) -> None:
    for argument in arguments:
        if _UNSAFE.search(argument):
            raise UnsafeArgumentError(
                f"refusing to send a command argument with CR, LF or NUL: {argument[:60]!r}"
            )


def xtext(text: str) -> str:
    """`text` as RFC 3461 xtext (UTF-8 bytes outside printable ASCII, "+" and "=" as "+HH")."""
    if _XTEXT_AS_IS.fullmatch(text):
        return text
    return "".join(chr(b) if b in _XTEXT_PLAIN else f"+{b:02X}" for b in text.encode())


def mail_from(sender: str, size: int | None, envid: str | None = None) -> str:
    """``MAIL FROM:<sender>``, with ``SIZE=`` (RFC 1870) when the server takes it, and
    ``RET=HDRS ENVID=`` (RFC 3461) when an `envid` is given (the server offers DSN).

    :raises UnsafeArgumentError: the address or the envelope id holds CR, LF or NUL.
    """
    _check(sender)
    return _mail_from(sender, size, envid)


def _mail_from(sender: str, size: int | None, envid: str | None) -> str:
    """`mail_from` without the check of `sender` (the caller's); `envid` is checked here, as
    its xtext would hide a CR, LF or NUL from a look at the command."""
    command = f"MAIL FROM:<{sender}>"
    if size is not None:
        command += f" SIZE={size}"
    if envid is not None:
        if not _XTEXT_AS_IS.fullmatch(envid):  # plain, as nearly always: nothing to check
            _check(envid)
            envid = xtext(envid)
        command += f" RET={DSN_RET} ENVID={envid}"
    return command + "\r\n"


def rcpt_to(recipient: str, *, dsn: bool = False) -> str:
    """``RCPT TO:<recipient>``, with ``NOTIFY=FAILURE,DELAY`` when `dsn` (RFC 3461).

    :raises UnsafeArgumentError: the address holds CR, LF or NUL.
    """
    _check(recipient)
    return f"RCPT TO:<{recipient}>{DSN_NOTIFY if dsn else ''}\r\n"


def envelope(
    sender: str, recipients: Sequence[str], size: int | None, envid: str | None = None
) -> bytes:
    """MAIL, RCPT for everyone and DATA: one pipelined group (RFC 2920), built as one string;
    with an `envid`, the DSN parameters (`mail_from`, `rcpt_to`).

    :raises UnsafeArgumentError: an address or the envelope id holds CR, LF or NUL.
    """
    notify = DSN_NOTIFY if envid is not None else ""
    if len(recipients) == 1:
        rcpt = f"RCPT TO:<{recipients[0]}>{notify}\r\n"
    else:
        rcpt = "".join([f"RCPT TO:<{r}>{notify}\r\n" for r in recipients])
    text = _mail_from(sender, size, envid) + rcpt + "DATA\r\n"
    # The addresses checked in one look at the whole group (once per message, not a search
    # per address): it holds its commands' CRLFs and no more, unless an address brought some.
    lines = len(recipients) + 2
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        _check(sender, *recipients)  # raises, naming the address
    return text.encode()
