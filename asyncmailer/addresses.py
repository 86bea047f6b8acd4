"""Recipient addresses: parse, validate strictly, normalise and de-duplicate. Pure functions.

An address is accepted only if it is exactly one RFC 5321 mailbox that parses back to itself:
nothing is silently rewritten (aiosmtplib's own quoting turns ``a@b.com, c@d.com`` into
``<a@b.com>``; we refuse it instead).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import formataddr
from typing import overload

__all__ = [
    "ATOM",
    "Mailbox",
    "Mailboxes",
    "check_header_value",
    "dedupe",
    "parse_address_list",
    "parse_mailbox",
    "plain_address",
    "validate_addr_spec",
]

# RFC 5322 atext: a word allowed unquoted (a local part's, a display name's), as a pattern.
ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{ATOM}(?:\.{ATOM})*")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_RE = re.compile(r"\s")
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
# The common case in one match: an all-ASCII address every check below would pass (local
# part at most 64, whole at most 254 characters, LDH labels of at most 63). Anything else
# goes through the checks one by one, which name the problem.
_PLAIN_RE = re.compile(
    rf"(?=[^@]{{1,64}}@)(?=.{{3,254}}\Z){ATOM}(?:\.{ATOM})*@"
    r"(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.?",
    re.ASCII,
)
_NAME_ADDR_RE = re.compile(r"(?P<name>[^<>]*)<(?P<addr>[^<>]*)>")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One validated address, with an optional display name for headers."""

    addr: str
    name: str = ""

    def __str__(self) -> str:
        return formataddr((self.name, self.addr)) if self.name else self.addr

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2]

    @property
    def key(self) -> str:
        """The identity used to send an address once: case does not make a new recipient."""
        return self.addr.lower()


class Mailboxes(Sequence[Mailbox]):
    """Mailboxes kept as two columns, addresses and display names: a long list's rows
    without an object each. A `Mailbox` is made only for one that is looked at."""

    __slots__ = ("addrs", "names")

    def __init__(self, addrs: list[str] | None = None, names: list[str] | None = None) -> None:
        self.addrs: list[str] = [] if addrs is None else addrs
        self.names: list[str] = [""] * len(self.addrs) if names is None else names

    @classmethod
    def of(cls, mailboxes: Iterable[Mailbox]) -> Mailboxes:
        """The columns of `mailboxes` (itself when it is a `Mailboxes`)."""
        if isinstance(mailboxes, Mailboxes):
            return mailboxes
        found = list(mailboxes)
        return cls([m.addr for m in found], [m.name for m in found])

    def __repr__(self) -> str:
        return f"<Mailboxes of {len(self.addrs)}>"

    def __len__(self) -> int:
        return len(self.addrs)

    @overload
    def __getitem__(self, index: int) -> Mailbox: ...
    @overload
    def __getitem__(self, index: slice) -> Mailboxes: ...
    def __getitem__(self, index: int | slice) -> Mailbox | Mailboxes:
        if isinstance(index, slice):
            return Mailboxes(self.addrs[index], self.names[index])
        return Mailbox(self.addrs[index], self.names[index])

    def __iter__(self) -> Iterator[Mailbox]:
        return map(Mailbox, self.addrs, self.names)

    def append(self, addr: str, name: str = "") -> None:
        self.addrs.append(addr)
        self.names.append(name)

    def extend(self, other: Mailboxes) -> None:
        self.addrs.extend(other.addrs)
        self.names.extend(other.names)


_LONGEST_WORD = 900  # leaves room for the longest header name before it


def check_header_value(value: str) -> str | None:
    """Return why `value` cannot go into a header: CR, LF or another control character, or
    an invisible one a header cannot carry as it is (zero width, soft hyphen, bidi
    controls, line and paragraph separators: a client would drop, reorder or break on
    them)."""
    if "\r" in value or "\n" in value:
        return "contains a line break (CR/LF), which could inject headers"
    if _CONTROL_RE.search(value.replace("\t", "")):
        return "contains a control character"
    if len(value) > _LONGEST_WORD and value.isascii():
        longest = max(value.split(), key=len, default="")
        if len(longest) > _LONGEST_WORD:
            # A header is folded only at spaces: one line must hold the word (RFC 5322: 998).
            return (
                f"has a word of {len(longest)} characters; a header line holds at most 998, "
                f"so at most {_LONGEST_WORD} without a space"
            )
    if not value.isascii():
        for char in value:
            if unicodedata.category(char) in _INVISIBLE:
                name = unicodedata.name(char, "a control character")
                return f"contains U+{ord(char):04X} ({name}), an invisible or control character"
    return None


def plain_address(text: str) -> str | None:
    """`text` as an address when it is a bare, valid, all-ASCII one (most list lines), in one
    match: what `validate_addr_spec` and `parse_mailbox` give for it. None: anything else,
    which the checks one by one accept or refuse, naming the problem."""
    if _PLAIN_RE.fullmatch(text):
        return text[:-1] if text.endswith(".") else text
    return None


def validate_addr_spec(addr: str) -> str:
    """Check a bare ``local@domain`` address and return it with its domain in ASCII (IDNA).

    :raises ValueError: with the reason, when the address is not one valid mailbox.
    """
    plain = plain_address(addr)
    return plain if plain is not None else _checked_addr_spec(addr)


def _checked_addr_spec(addr: str) -> str:
    """`validate_addr_spec` check by check, without the one-match fast path."""
    if not addr:
        raise ValueError("empty address")
    if ";" in addr:
        raise ValueError(f"{addr!r}: separate addresses with commas, not semicolons")
    if _CONTROL_RE.search(addr) or _SPACE_RE.search(addr):
        raise ValueError(f"{addr!r} contains spaces or control characters")
    if len(addr) > 254:
        raise ValueError(f"{addr!r} is longer than 254 characters")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{addr!r} is not of the form name@domain")
    if not local.isascii():
        raise ValueError(f"{addr!r}: non-ASCII local parts (SMTPUTF8) are not supported")
    if not _LOCAL_RE.fullmatch(local) or len(local) > 64:
        raise ValueError(f"{addr!r}: invalid local part {local!r}")
    if not domain.isascii():
        for char in domain:  # UTS 46 would drop a zero-width space, sending elsewhere
            if unicodedata.category(char) in _INVISIBLE:
                raise ValueError(
                    f"{addr!r}: the domain holds U+{ord(char):04X}, an invisible character"
                )
    if domain.isascii():
        ascii_domain = domain
    else:
        # Imported for the first domain that needs it: its tables cost every start otherwise.
        import idna

        try:
            # IDNA 2008 with UTS 46 mapping, not Python's IDNA 2003 codec: straße.de stays
            # xn--strae-oqa.de instead of becoming strasse.de (another domain).
            ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as err:
            raise ValueError(f"{addr!r}: invalid domain {domain!r}") from err
    labels = ascii_domain.rstrip(".").split(".") if ascii_domain != "." else []
    if len(labels) < 1 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{addr!r}: invalid domain {domain!r}")
    return f"{local}@{ascii_domain.rstrip('.')}"


def parse_mailbox(text: str) -> Mailbox:
    """Parse one ``addr`` or ``Name <addr>``; refuse anything that is not exactly one mailbox.

    :raises ValueError: with the reason.
    """
    text = text.strip()
    plain = plain_address(text)  # most list lines: a bare, valid ASCII address
    if plain is not None:
        return Mailbox(plain)
    problem = check_header_value(text)
    if problem:
        raise ValueError(f"{text!r} {problem}")
    if "<" not in text and ">" not in text:
        return Mailbox(validate_addr_spec(text))
    match = _NAME_ADDR_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not exactly one address")
    name = match["name"].strip()
    if name.startswith('"') and name.endswith('"') and len(name) >= 2:
        name = name[1:-1].replace('\\"', '"')
    elif '"' in name or "," in name:
        raise ValueError(f"{text!r} is not exactly one address")
    # The name was checked for line breaks and control characters with the whole text; the
    # header machinery encodes the rest (RFC 2047) when the message is made.
    return Mailbox(validate_addr_spec(match["addr"]), name)


def _split_list(text: str) -> Iterator[str]:
    """Split a comma-separated list, keeping commas inside quoted display names."""
    start, quoted, angle = 0, False, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            angle = True
        elif char == ">" and not quoted:
            angle = False
        elif char == "," and not quoted and not angle:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def parse_address_list(value: str | Iterable[str]) -> list[Mailbox]:
    """Parse a comma-separated string (the original config's form) or a list of addresses.

    Empty entries (``"a@x.org, "``) are ignored; every other entry must be one valid mailbox.

    :raises ValueError: naming the first bad entry.
    """
    items = _split_list(value) if isinstance(value, str) else iter(value)
    return [parse_mailbox(item) for item in items if item.strip()]


def dedupe(mailboxes: Iterable[Mailbox]) -> list[Mailbox]:
    """Keep the first of each address (compared without regard to case), in order."""
    seen: set[str] = set()
    unique = []
    for mailbox in mailboxes:
        if mailbox.key not in seen:
            seen.add(mailbox.key)
            unique.append(mailbox)
    return unique
