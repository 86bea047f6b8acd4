"""The shared ledger's address: a ``postgresql://`` URL, checked, with its password masked
wherever it is shown (`repr`, `str`, messages) and scrubbed from any text that might repeat
it."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["LEDGER_ENV", "SCHEMES", "LedgerUrl"]

LEDGER_ENV = "ASYNCMAILER_LEDGER"  # the URL, when not in the campaign (it may hold a password)
SCHEMES = ("postgresql", "postgres")
_MASK = "********"


class LedgerUrl:
    """A PostgreSQL connection URL (libpq's form). `reveal()` gives it whole, to the driver
    only; `masked` and `str()` show it with the password replaced."""

    __slots__ = ("_passwords", "_value", "masked")

    def __init__(self, value: str) -> None:
        """:raises ValueError: not a postgresql:// URL, or CR, LF or NUL in it."""
        if any(c in value for c in "\r\n\0"):
            raise ValueError("a line break or NUL in the URL")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (it raises for a port that is not a number)
        except ValueError as err:
            raise ValueError(f"not a URL: {err}") from None
        if parts.scheme not in SCHEMES:
            raise ValueError("expected a postgresql://user@host:port/database URL")
        self._value = value
        passwords = []
        if parts.password:
            passwords += [parts.password, unquote(parts.password)]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if query.get("password"):
            passwords.append(query["password"])
        self._passwords = tuple(p for p in passwords if p)
        self.masked = self.scrub(value)

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """`text` without the password (in clear and as written in the URL)."""
        for password in sorted(self._passwords, key=len, reverse=True):
            text = text.replace(password, _MASK)
        return re.sub(r"(password=)[^&\s]*", rf"\1{_MASK}", text)

    def __repr__(self) -> str:
        return f"LedgerUrl({self.masked!r})"

    def __str__(self) -> str:
        return self.masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LedgerUrl) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
