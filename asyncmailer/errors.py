"""The exception tree of asyncmailer: every error it raises derives from `MailerError`.

    MailerError
    ├── MissingExtraError (ImportError)    an optional part is not installed; exit code 2
    ├── NothingToSendError                 the campaign's last run finished: exit code 4
    ├── InputError (ValueError)            bad config, addresses or files; exit code 2
    │   ├── ConfigError                    a config key or the config file itself
    │   └── JournalError                   the campaign journal: locked by another run, or
    │       │                              cannot be created or written
    │       └── LeaseLostError             a worker of a shared ledger lost its lease: it
    │                                      stops (exit code 75); run it again
    └── DeliveryError                      the run could not go on; exit code 3
        ├── ConnectError (ConnectionError) server unreachable, TLS handshake or certificate failed
        ├── TLSRequiredError               STARTTLS required but not offered or refused
        ├── AuthError (PermissionError)    login refused, or no usable AUTH mechanism
        └── RefusedError                   the server refused the sender or the session (a
                                           quota, a block, "authentication required"): the
                                           recipients were left as they were

Details are fields, not only text: `InputError.path`, `.line`, `.field`; `DeliveryError.host`,
`.port`, `.code`. No message ever contains a password.
"""

from __future__ import annotations

from pathlib import Path

from .display import printable

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectError",
    "DeliveryError",
    "InputError",
    "JournalError",
    "LeaseLostError",
    "MailerError",
    "MissingExtraError",
    "NothingToSendError",
    "RefusedError",
    "TLSRequiredError",
]


class MailerError(Exception):
    """Root of every error asyncmailer raises."""


class MissingExtraError(MailerError, ImportError):
    """An optional part of asyncmailer is used without its extra installed; the text says
    what to install (from PyPI and from a clone)."""

    def __init__(self, extra: str, missing: str) -> None:
        self.extra = extra
        super().__init__(
            f"this needs the {extra!r} extra ({missing} is not installed): "
            f"pip install 'asyncmailer[{extra}]', or from a clone: pip install -e '.[{extra}]'",
            name=missing,
        )


class NothingToSendError(MailerError):
    """The campaign's last run finished: sending it again needs `--new-run`. The text says
    when it was sent, to how many, and whether it changed since."""


class InputError(MailerError, ValueError):
    """Bad input: a file, line or field that cannot be used. Nothing was sent.

    `str()` is one line: ``path:line: field: reason``, omitting the parts that are unknown.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        what = f"{self.field}: " if self.field else ""
        return printable(" ".join(f"{where}{what}{self.reason}".split("\n")))


class ConfigError(InputError):
    """The campaign configuration is invalid (a key, its type or value, or the file itself)."""


class JournalError(InputError):
    """The campaign journal cannot be used: another run holds it, or it cannot be created or
    written (read-only folder, full disk)."""


class LeaseLostError(JournalError):
    """A worker's lease on the shared ledger lapsed or was reaped (the database was out of
    reach, or the worker stalled, for longer than the lease): what it held belongs to the
    other workers now, so it writes no final "." and stops."""


class DeliveryError(MailerError):
    """The run cannot go on: the server is unreachable, refuses TLS or refuses the login."""

    def __init__(self, message: str, *, host: str, port: int, code: int | None = None) -> None:
        self.host = host
        self.port = port
        self.code = code
        super().__init__(f"{host}:{port}: {message}")


class ConnectError(DeliveryError, ConnectionError):
    """Could not connect: refused, timed out, TLS handshake or certificate verification failed."""


class TLSRequiredError(DeliveryError):
    """`security: starttls` was asked for but the server did not offer or complete STARTTLS."""


class AuthError(DeliveryError, PermissionError):
    """The server refused the login, or offers no mechanism we may use."""


class RefusedError(DeliveryError):
    """The server refused the sender or the session, not a recipient: a refused MAIL FROM,
    "authentication required", a sending quota or rate limit, a blocked sender, 421. The
    transaction's recipients are left pending. `scope` is ``sender`` or ``session``;
    `temporary` (a 4xx reply) means trying again later may work."""

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        code: int | None,
        scope: str,
        temporary: bool,
    ) -> None:
        self.scope = scope
        self.temporary = temporary
        super().__init__(message, host=host, port=port, code=code)
