"""What never receives mail: addresses and whole domains (``@example.org``), the rule that
matches a mailbox against them (`Suppression`), and the campaign's suppression file.

An entry's key is what `addresses.Mailbox.key` is for an address (the address with its domain
in ASCII, IDNA 2008, lower-cased), or ``@`` and the domain so normalised: a list row, a
config address and an entry written in any case or in Unicode meet on the same key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from .addresses import Mailbox, parse_mailbox, validate_addr_spec
from .errors import InputError
from .textfiles import read_text

__all__ = [
    "Entry",
    "Reason",
    "Suppression",
    "SuppressionStorage",
    "entry_key",
    "parse_suppression",
    "read_suppression_file",
]

_COMMENT = re.compile(r"^\s*#|\s#")  # a comment: at the start, or after a space


class Reason(StrEnum):
    """Why an entry of the shared store is there."""

    UNSUBSCRIBE = "unsubscribe"  # the recipient asked (one-click, or a mailto: reply)
    BOUNCE = "bounce"  # a permanent address failure (5.1.1, 5.1.2, 5.1.10, 550 user unknown)
    MANUAL = "manual"  # `asyncmailer suppress add`
    IMPORT = "import"  # `asyncmailer suppress import FILE`


@dataclass(frozen=True, slots=True)
class Entry:
    """One suppressed address or domain (`key`, see `suppression.entry_key`), and why."""

    key: str
    reason: Reason
    code: str | None = None  # a bounce's: "550 5.1.1"
    note: str = ""  # the server's text for a bounce; the user's words otherwise
    campaign: str | None = None
    added: float = 0.0  # when it was added (0: now, for `add`)

    @property
    def why(self) -> str:
        """What a suppressed recipient's result says: ``suppressed: bounce 550 5.1.1 (news)``."""
        text = f"suppressed: {self.reason.value}"
        if self.code:
            text += f" {self.code}"
        if self.campaign:
            text += f" ({self.campaign})"
        return text

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.added, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_key(text: str) -> str:
    """The key of one entry: ``user@example.org`` (or ``Name <user@example.org>``) as
    `Mailbox.key`, ``@example.org`` as ``@`` and the domain in ASCII, lower-cased.

    :raises ValueError: not one address nor ``@`` and a domain, with the reason.
    """
    text = text.strip()
    if text.startswith("@"):
        domain = text[1:]
        if not domain or "@" in domain:
            raise ValueError(f"{text!r} is not @ followed by a domain")
        # A domain is checked and made ASCII exactly as an address's is: through an address.
        try:
            checked = validate_addr_spec(f"postmaster@{domain}")
        except ValueError:
            raise ValueError(f"{text!r}: invalid domain {domain!r}") from None
        return "@" + checked.rpartition("@")[2].lower()
    return parse_mailbox(text).key


class Suppression:
    """Addresses and domains that never receive mail, each with a note saying why (what a
    suppressed recipient's result says). Immutable once made; ``a | b`` joins two (the
    first's note wins)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        self._entries: dict[str, str] = dict(entries or {})  # key -> why

    def __repr__(self) -> str:
        domains = sum(key.startswith("@") for key in self._entries)
        return f"<Suppression of {len(self._entries) - domains} addresses, {domains} domains>"

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __or__(self, other: Suppression) -> Suppression:
        return Suppression({**other._entries, **self._entries})

    def why(self, mailbox: Mailbox | str) -> str | None:
        """Why `mailbox` is suppressed (its address's note, else its domain's), or None.

        A `str` is taken as an address already normalised (its domain in ASCII), such as
        `Mailbox.addr`."""
        key = mailbox.key if isinstance(mailbox, Mailbox) else mailbox.lower()
        found = self._entries.get(key)
        if found is None and (at := key.rfind("@")) >= 0:
            found = self._entries.get(key[at:])
        return found

    def matches(self, mailbox: Mailbox | str) -> bool:
        return self.why(mailbox) is not None

    def __contains__(self, mailbox: object) -> bool:
        return isinstance(mailbox, Mailbox | str) and self.why(mailbox) is not None


def parse_suppression(text: str, path: Path | str) -> Suppression:
    """The entries of a suppression file's text: one address or ``@domain`` a line; blank
    lines and ``#`` comments (a whole line, or after an entry and a space: ``#`` itself may
    be in an address's local part) are ignored.

    :raises InputError: naming the file and line of the first line that is not an entry.
    """
    entries: dict[str, str] = {}
    name = Path(path).name
    for number, line in enumerate(text.splitlines(), 1):
        entry = _COMMENT.split(line, maxsplit=1)[0].strip()
        if not entry:
            continue
        try:
            key = entry_key(entry)
        except ValueError as err:
            raise InputError(
                f"not an address or @domain: {err} (one a line; # starts a comment)",
                path=path,
                line=number,
            ) from None
        entries.setdefault(key, f"suppressed: {name} line {number}")
    return Suppression(entries)


async def read_suppression_file(path: Path) -> Suppression:
    """Read a campaign's `suppression_file` (UTF-8) without blocking.

    :raises InputError: it cannot be read, or a line is not an entry (file and line named).
    """
    text = await read_text(path, "the suppression file", field="suppression_file")
    return parse_suppression(text, path)


class SuppressionStorage(Protocol):
    """A shared suppression store: a state folder's file (`journal.suppressions`) or a
    shared ledger's table (`pg.suppressions`). Every writer goes through `add`.

    :raises JournalError: (from every method) the store cannot be reached, read or written.
    """

    @property
    def where(self) -> str:
        """The store, as said to the user (a path, or a URL with its password masked)."""

    async def add(self, entries: Iterable[Entry], *, unless_removed_after: float = 0.0) -> int:
        """Add entries not there yet (one already there keeps its first reason). With
        `unless_removed_after` (a time), an entry removed by hand since then is not added
        back (a run's bounces, read from its ledger again at each end). Returns how many
        were added."""

    async def remove(self, keys: Sequence[str]) -> list[str]:
        """Remove entries by key; returns the keys that were there."""

    async def entries(self) -> list[Entry]:
        """Every entry, by key."""

    async def suppression(self) -> Suppression:
        """The store as a `Suppression`."""
