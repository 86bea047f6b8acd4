"""Campaign configuration: read `config.json` or a YAML campaign, validate it once, freeze it.

The original program's keys (`subject`, `attachments`, `file_with_message`, `to`, `from`, `cc`)
are read exactly as before; the keys it hard-coded (server, TLS, login) are new and optional.
Every problem is an `InputError`/`ConfigError` whose text is one line naming file, line and key.
"""

from __future__ import annotations

import asyncio
import codecs
import difflib
import ipaddress
import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiofiles
import aiofiles.os

from .addresses import Mailbox, check_header_value, dedupe, parse_address_list, parse_mailbox
from .dkim import DkimKey, DkimKeyError, DkimSigner, load_key
from .errors import ConfigError, InputError
from .html_body import HTML, MARKDOWN
from .ledger_url import LEDGER_ENV, LedgerUrl
from .schedule import Schedule, parse_duration, zone
from .textfiles import read_secret, read_secret_bytes, read_text
from .unsubscribe import EMAIL, TOKEN, ListUnsubscribe

__all__ = [
    "DEFAULT_CONFIG",
    "DKIM_BY_RELAY",
    "PASSWORD_ENV",
    "SERVER_KEYS",
    "AuthMethod",
    "Campaign",
    "DkimSettings",
    "JournalSync",
    "RelaySettings",
    "Secret",
    "Security",
    "ServerSettings",
    "load_campaign",
]

DEFAULT_CONFIG = Path("reliances/config.json")
PASSWORD_ENV = "ASYNCMAILER_PASSWORD"
# RFC 5321 4.5.3.1.8: every server must accept at least 100 recipients per transaction.
DEFAULT_GROUP_SIZE = 100
_LEGACY_FOLDER = "reliances"


class Security(StrEnum):
    """How the connection is protected."""

    SSL = "ssl"  # implicit TLS from the first byte (port 465)
    STARTTLS = "starttls"  # plaintext greeting, then a mandatory STARTTLS upgrade (port 587)
    NONE = "none"  # no TLS at all: loopback only, unless `allow_plaintext` is set


class AuthMethod(StrEnum):
    """How to log in (`auth`)."""

    LOGIN = "login"  # AUTH LOGIN, or PLAIN when the server offers no LOGIN (the default)
    PLAIN = "plain"  # AUTH PLAIN only
    XOAUTH2 = "xoauth2"  # an OAuth 2.0 access token (Gmail/Workspace, Microsoft 365)


class JournalSync(StrEnum):
    """When the journal's commits reach the disk (SQLite's synchronous setting, WAL mode)."""

    FULL = "full"  # every commit is on disk before the run goes on: survives a power cut
    NORMAL = "normal"  # survives the process dying; a power cut may lose the last commits


_DEFAULT_PORTS = {Security.SSL: 465, Security.STARTTLS: 587, Security.NONE: 25}


class Secret:
    """A password. Its `repr` and `str` are masked so it cannot leak into logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Where and how to connect and log in."""

    host: str
    port: int
    security: Security
    username: str | None
    password: Secret | None = field(repr=True)
    tls_ca_file: Path | None = None
    tls_verify: bool = True
    timeout: float = 60.0
    pipelining: bool = True
    max_messages_per_connection: int = 0
    connect_timeout: float = 30.0
    data_timeout: float = 600.0
    # The name given in EHLO (None: this host's fully qualified name, looked up as each relay
    # is set up).
    helo_name: str | None = None
    auth: AuthMethod = AuthMethod.LOGIN
    # XOAUTH2: where the access token comes from, one of them: a file read at each login, or
    # a command (argv) that prints it, run once and again when the server says it expired.
    token_file: Path | None = None
    # Not in the repr: its arguments may hold a secret (a refresh token, a client secret).
    token_command: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def logs_in(self) -> bool:
        """There is something to log in with: a password, or an XOAUTH2 token source."""
        return self.password is not None or self.auth is AuthMethod.XOAUTH2

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """One relay of the campaign: its server and its own limits and routing (an entry of
    `servers:`, or the single-server keys as the one relay)."""

    name: str  # for reports and the progress line (default host:port)
    server: ServerSettings
    concurrency: int = 4
    max_connections: int | None = None
    rate: float | None = None  # this relay's ceiling, messages per second (None: none)
    daily_quota: int = 0  # recipients a day through this relay (0: no limit)
    weight: int = 1  # share of the work not routed by domain
    domains: tuple[str, ...] = ()  # recipient domains routed to this relay (lower case)
    fallback: tuple[str, ...] = ()  # relays that take its work when it is out, in order

    @property
    def connections(self) -> int:
        """How many connections to this relay may be open at once."""
        if self.max_connections is None:
            return self.concurrency
        return min(self.concurrency, self.max_connections)


DKIM_BY_RELAY: Literal["relay"] = "relay"  # `dkim: relay`: the relay signs, not asyncmailer


@dataclass(frozen=True, slots=True)
class DkimSettings:
    """`dkim: {domain, selector, key_file}`: asyncmailer signs every message (d=, s=) with
    the private key in `key_file` (PEM: RSA of 1024 bits or more, or Ed25519), read and
    checked when the campaign is loaded."""

    domain: str  # ASCII (IDNA): the d= tag, and where the public key is published
    selector: str  # the s= tag: the key is at <selector>._domainkey.<domain>
    key_file: Path
    key: DkimKey = field(compare=False)  # its repr names only its kind and size

    @property
    def signer(self) -> DkimSigner:
        return DkimSigner(self.domain, self.selector, self.key)

    @property
    def dns_name(self) -> str:
        """Where the public key is published (a TXT record: `DkimKey.public_record()`)."""
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True, kw_only=True)
class Campaign:
    """A validated campaign: what to send, to whom, through which server."""

    source: Path
    root: Path
    subject: str
    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    bcc: tuple[Mailbox, ...]
    message_file: Path
    attachments_dir: Path | None
    text_file: Path | None = None
    server: ServerSettings  # the first relay's (the only one without `servers:`)
    relays: tuple[RelaySettings, ...] = ()
    follow_symlinks: bool = False
    concurrency: int = 4
    recipients_file: Path | None = None
    recipients_column: str = "email"
    name_column: str = "name"
    recipients_encoding: str = "utf-8"  # a Python codec's name, checked at load
    recipients_delimiter: str | None = None  # a CSV's; None: sniffed from its header line
    group_size: int = DEFAULT_GROUP_SIZE
    personalize: bool = False
    rate: float | None = None
    max_connections: int | None = None
    state_dir: Path = Path(".asyncmailer")
    retry_attempts: int = 5
    retry_delay: float = 10.0
    retry_max_age: float = 1800.0
    daily_quota: int = 0
    journal_sync: JournalSync = JournalSync.FULL
    reply_to: tuple[Mailbox, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    list_unsubscribe: ListUnsubscribe | None = None
    dkim: DkimSettings | Literal["relay"] | None = None
    suppression_file: Path | None = None  # addresses and @domains never sent to
    shared_suppression: bool = True  # honour the store in state_dir shared by campaigns
    campaign_id: str | None = None
    schedule: Schedule | None = None
    send_at_local: tuple[int, int, int] | None = None  # hour, minute, second
    timezone_column: str | None = None
    timezone: ZoneInfo | None = None
    # The shared PostgreSQL ledger (`ledger:` or ASYNCMAILER_LEDGER); None: the SQLite journal.
    ledger: LedgerUrl | None = None
    notices: tuple[str, ...] = ()

    @property
    def html(self) -> bool:
        """The message file is HTML (.html, .htm) or Markdown (.md): sent with a text
        alternative."""
        return self.message_file.suffix.lower() in (*HTML, *MARKDOWN)

    @property
    def id(self) -> str:
        """The campaign's id: the `campaign` key, else the campaign file's name."""
        return self.campaign_id or self.source.name

    @property
    def connections(self) -> int:
        """How many connections (and so transactions) may be open at once, over every relay."""
        if self.relays:
            return sum(relay.connections for relay in self.relays)
        if self.max_connections is None:
            return self.concurrency
        return min(self.concurrency, self.max_connections)

    @property
    def recipients(self) -> list[Mailbox]:
        """Everyone in the envelope: to, cc and bcc, each address once."""
        return dedupe([*self.to, *self.cc, *self.bcc])


# ---------------------------------------------------------------------------------------------
# Parsing the file


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"duplicate key {_quote(key)}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_document(text: str, path: Path) -> dict[str, Any]:
    """Parse JSON (default) or YAML (by suffix) into a mapping.

    :raises ConfigError: naming line and column of a syntax error.
    """
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only for YAML campaigns (start-up time: docs/design.md)

        try:
            data = yaml.load(text, Loader=_loader(yaml))
        except RecursionError:
            raise ConfigError("invalid YAML: nested too deeply", path=path) from None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark else None
            column = mark.column + 1 if mark else None
            reason = f"invalid YAML: {err.problem or err.context}"
            raise ConfigError(reason, path=path, line=line, column=column) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid YAML: {err}", path=path) from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except RecursionError:
            raise ConfigError("invalid JSON: nested too deeply", path=path) from None
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"invalid JSON: {err.msg}", path=path, line=err.lineno, column=err.colno
            ) from None
        except _DuplicateKey as err:
            lines = _key_lines(text, err.key)
            line = lines[1] if len(lines) > 1 else None
            raise ConfigError(f"invalid JSON: {err}", path=path, line=line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys to values", path=path)
    return data


def _loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader without aliases: a campaign needs none, and an alias of an alias
    (the billion laughs) is a bomb for whatever walks the result."""

    class NoAliases(yaml.SafeLoader):  # type: ignore[misc]
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    "aliases (*name) are not allowed in a campaign",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)

    return NoAliases


def _key_lines(text: str, key: str) -> list[int]:
    """The lines where `key` is written (JSON or YAML), for error messages."""
    pattern = re.compile(
        rf"""^[ \t]*[-{{,]?[ \t]*["']?{re.escape(key)}["']?[ \t]*:""", re.MULTILINE
    )
    return [text.count("\n", 0, match.start()) + 1 for match in pattern.finditer(text)]


def _key_line(text: str, key: str) -> int | None:
    lines = _key_lines(text, key)
    return lines[0] if lines else None


# ---------------------------------------------------------------------------------------------
# Validating keys

_RATE_RE = re.compile(r"(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-zA-Z]+)")
_RATE_UNITS = {
    unit: seconds
    for seconds, units in (
        (1.0, ("s", "sec", "secs", "second", "seconds")),
        (60.0, ("m", "min", "mins", "minute", "minutes")),
        (3600.0, ("h", "hr", "hrs", "hour", "hours")),
        (86400.0, ("d", "day", "days")),
    )
    for unit in units
}


class _Fields:
    """Typed access to the raw mapping; each failure names file, line and key."""

    def __init__(self, data: Mapping[str, Any], text: str, path: Path) -> None:
        self.data = data
        self.text = text
        self.path = path

    def error(self, key: str, reason: str) -> ConfigError:
        line = _key_line(self.text, key)
        shown = key if len(key) <= 60 else key[:60] + "..."
        return ConfigError(reason, path=self.path, line=line, field=shown)

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get_str(self, key: str, default: str | None = None, *, header: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_describe(value)}")
        if header and (problem := check_header_value(value)):
            raise self.error(key, problem)
        return value

    def get_int(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(
                key, f"expected a whole number from {low} to {high}, got {_quote(value)}"
            )
        return value

    def get_number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not (low < value <= high)
        ):
            raise self.error(key, f"expected a number of seconds above {low} up to {high}")
        return float(value)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_describe(value)}")
        return value

    def get_rate(self, key: str) -> float | None:
        """Messages per second, from a number or ``N/second``, ``N/minute``, ``N/hour``."""
        value = self.data.get(key)
        if value is None:
            return None
        reason = "expected messages per second, or 'N/second', 'N/minute', 'N/hour', 'N/day'"
        if isinstance(value, bool):
            raise self.error(key, reason)
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise self.error(key, f"{reason}, got {_quote(value)}")
            count, per = float(value), 1.0
        elif (
            isinstance(value, str)
            and (match := _RATE_RE.fullmatch(value.strip()))
            and match["unit"].lower() in _RATE_UNITS
        ):
            count, per = float(match["count"]), _RATE_UNITS[match["unit"].lower()]
        else:
            raise self.error(key, f"{reason}, got {_quote(value)}")
        if count <= 0:
            raise self.error(key, f"{reason}, above 0")
        return count / per

    def get_choice(self, key: str, choices: type[StrEnum]) -> StrEnum | None:
        raw = self.data.get(key)
        if raw is None:
            return None
        allowed = ", ".join(c.value for c in choices)
        if not isinstance(raw, str):  # YAML reads a bare off/no as false
            raise self.error(key, f"expected one of {allowed}, got {_quote(raw)}")
        try:
            return choices(raw.strip().lower())
        except ValueError:
            raise self.error(key, f"expected one of {allowed}, got {_quote(raw)}") from None

    def get_addresses(self, key: str) -> tuple[Mailbox, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, str) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise self.error(key, "expected a comma-separated string or a list of addresses")
        try:
            return tuple(parse_address_list(value))
        except ValueError as err:
            raise self.error(key, str(err)) from None

    def get_id(self, key: str) -> str | None:
        value = self.get_str(key)
        if value is not None and not _ID_RE.fullmatch(value):
            raise self.error(
                key, f"expected 1 to 64 letters, digits, '.', '_' or '-', got {_quote(value)}"
            )
        return value

    def get_schedule(self, key: str) -> Schedule | None:
        value = self.data.get(key)
        if value is None:
            return None
        known = {"cron", "every", "timezone", "grace", "until"}
        if not isinstance(value, dict) or not set(value) <= known:
            raise self.error(key, "expected a mapping of cron or every, and timezone, grace, until")
        texts = {}
        for name, item in value.items():
            if isinstance(item, date):  # YAML reads until: 2027-01-01 as a date
                item = item.isoformat()
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise self.error(key, f"{name}: expected a string, got {_describe(item)}")
            texts[name] = str(item)
        try:
            timezone = zone(texts.get("timezone", "UTC"))
            every = parse_duration(texts["every"]) if "every" in texts else None
            grace = texts.get("grace")
            until = texts.get("until")
            return Schedule(
                cron=texts.get("cron"),
                every=every,
                timezone=timezone,
                grace=parse_duration(grace) if grace else (every or 3600.0),
                until=_until(until, timezone) if until else None,
            )
        except ValueError as err:
            raise self.error(key, str(err)) from None

    def get_clock(self, key: str) -> tuple[int, int, int] | None:
        """A time of day, ``HH:MM`` or ``HH:MM:SS``."""
        value = self.get_str(key)
        if value is None:
            return None
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?", value.strip())
        if match is None:
            raise self.error(key, f"expected a time of day like 09:00, got {_quote(value)}")
        return int(match[1]), int(match[2]), int(match[3] or 0)

    def get_headers(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.error(key, "expected a mapping of header names to values")
        headers = []
        for name, text in value.items():
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise self.error(key, f"{_quote(name)} is not a header name (RFC 5322)")
            if name.lower() in _OWN_HEADERS or name.lower().startswith("content-"):
                raise self.error(key, f"{name}: asyncmailer writes this header itself")
            if not isinstance(text, str):
                raise self.error(key, f"{name}: expected a string, got {_describe(text)}")
            if problem := check_header_value(text):
                raise self.error(key, f"{name}: {problem}")
            headers.append((name, text))
        return tuple(headers)

    def get_path(self, key: str, root: Path, default: str | None = None) -> Path | None:
        value = self.get_str(key, default)
        if not value:
            return None
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else root / candidate


_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class _EntryFields(_Fields):
    """The keys of one entry of a list of mappings (`servers[2]`): errors name the key as
    ``servers[2].port`` and the line where that entry writes it.

    The line is found without a parser that keeps positions: the key's occurrences after the
    list's own key, counted past the earlier entries that also write it (an entry's keys are
    written in order, in JSON and in YAML)."""

    def __init__(
        self, data: Mapping[str, Any], parent: _Fields, key: str, index: int, before: list[Any]
    ) -> None:
        super().__init__(data, parent.text, parent.path)
        self.parent = parent
        self.prefix = f"{key}[{index}]"
        self.anchor = _key_line(parent.text, key) or 0
        self.before = before  # the earlier entries

    def error(self, key: str, reason: str) -> ConfigError:
        # A key the entry lacks (a required one): the line of its first key.
        written = key if key in self.data or not self.data else str(next(iter(self.data)))
        lines = [n for n in _key_lines(self.text, written) if n > self.anchor]
        earlier = sum(1 for entry in self.before if isinstance(entry, dict) and written in entry)
        line = lines[earlier] if earlier < len(lines) else self.anchor or None
        return ConfigError(reason, path=self.path, line=line, field=f"{self.prefix}.{key}")


def _until(text: str, timezone: ZoneInfo) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"until: expected a date or time, got {text[:40]!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone)


def _quote(value: Any) -> str:
    """A value as an error message shows it: a short prefix of a string or number, else
    only its kind (a list or mapping is never walked)."""
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)[:40]
    return _describe(value)


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


# key -> short description, for the "unknown key" error and the README.
KNOWN_KEYS: dict[str, str] = {
    "subject": "Subject line, any length and script",
    "from": 'sender address ("Name <addr>" allowed)',
    "to": "recipients: comma-separated string or list",
    "cc": "copy recipients: comma-separated string or list",
    "bcc": "blind-copy recipients (envelope only, never a header)",
    "file_with_message": "the message file (UTF-8): .txt text, .html or .md (Markdown) HTML",
    "text_file": "with an HTML message: its text alternative (default: made from the HTML)",
    "attachments": "folder whose regular files are attached (empty or missing key: none)",
    "follow_symlinks": "attach what links in the attachments folder lead to, also outside it "
    "(default false: such a link is an error)",
    "host": "SMTP server (default smtp.<domain of from>)",
    "port": "port (default 465 for ssl, 587 for starttls, 25 for none)",
    "security": "ssl (implicit TLS), starttls, or none (loopback only)",
    "allow_plaintext": "allow security: none to a non-loopback host",
    "username": "login name (default: the from address)",
    "password_file": "file with the password (default reliances/your_pswd.txt)",
    "auth": "login (default; PLAIN when the server has no LOGIN), plain, or xoauth2",
    "token_file": "with auth: xoauth2: file holding the OAuth 2.0 access token, read at each login",
    "token_command": "with auth: xoauth2: command printing the access token (a string or a list), "
    "run again when the server says the token expired",
    "tls_ca_file": "PEM file of CA certificates to trust instead of the system store",
    "tls_verify": "verify the server certificate (default true)",
    "concurrency": "number of SMTP connections used at once (default 4)",
    "timeout": "seconds to wait for the server at each step (default 60)",
    "recipients_file": "list of recipients: .csv with a header, or one address per line",
    "recipients_column": "CSV column holding the address (default email)",
    "name_column": "CSV column holding a display name, if present (default name)",
    "recipients_encoding": "the list's encoding: utf-8 (the default, BOM allowed), cp1251, "
    "latin-1, utf-16 (with a BOM) or any Python codec",
    "recipients_delimiter": 'a CSV list\'s delimiter: ",", ";", "tab" (or "\\t"), "|"... '
    "(default: the one its header line uses most)",
    "group_size": "recipients per SMTP transaction, one message each (default 100)",
    "personalize": "subject, body and header values are templates filled from each list row; "
    "one message per recipient (default false)",
    "pipelining": "use ESMTP PIPELINING when the server offers it (default true)",
    "max_messages_per_connection": "reconnect after this many messages (default 0: never)",
    "rate": "at most this many messages per second, or '600/minute', '5000/hour'",
    "max_connections": "cap on simultaneous connections (default: concurrency)",
    "daily_quota": "at most this many recipients a day, across runs (default 0: no limit)",
    "connect_timeout": "seconds to connect, greet, secure and log in (default 30)",
    "helo_name": "the name given in EHLO: the sending host's name in DNS, as its address's "
    "PTR record says (default: this machine's fully qualified name)",
    "servers": "several relays: a list of {name, host, port, security, username, "
    "password_file, ..., concurrency, max_connections, rate, daily_quota, weight, domains, "
    "fallback} (instead of the single-server keys)",
    "data_timeout": "seconds to wait for the reply to the final '.' (default 600, RFC 5321), "
    "plus one per 64 KiB of message",
    "state_dir": "folder for the campaign journal (default .asyncmailer beside reliances/)",
    "campaign": "the campaign's id: names its journal and runs (default: the file's name)",
    "reply_to": "Reply-To address(es): comma-separated string or list",
    "headers": "extra headers: a mapping of name to value (X-Campaign: november)",
    "list_unsubscribe": "{url: https://..., mailto: address, key_file: file}: List-Unsubscribe "
    "(and one-click List-Unsubscribe-Post with a URL); {{ unsubscribe_token }} and "
    "{{ email }} in the URL are each recipient's",
    "dkim": "{domain: example.com, selector: s2026, key_file: dkim.pem}: sign every message "
    "(RSA or Ed25519 key); or relay: the relay signs",
    "suppression_file": "file of addresses and @domains that never receive mail, one a line",
    "shared_suppression": "honour the suppression store in state_dir shared by campaigns "
    "(permanent failures, unsubscribes, `asyncmailer suppress`; default true)",
    "send_at_local": "HH:MM (or HH:MM:SS): each recipient's message at that time of their own "
    "zone (timezone_column), one recipient per message; the run stays open until the last",
    "timezone_column": "with send_at_local: the list column with each recipient's IANA zone",
    "timezone": "the campaign's zone, for send_at_local rows without a valid one (default: local)",
    "schedule": "recurring runs: {cron: '0 9 * * MON', timezone: Europe/Berlin, grace: 1h, "
    "until: 2027-01-01} or {every: 15m}, for `asyncmailer schedule`",
    "retry_attempts": "tries per recipient in one run on temporary failures (default 5)",
    "retry_delay": "seconds before the first retry; doubles each time, up to 300 (default 10)",
    "retry_max_age": "stop retrying in this run after this many seconds (default 1800)",
    "ledger": "postgresql://user@host/database: a shared PostgreSQL ledger, for workers on "
    f"any number of hosts (or set {LEDGER_ENV}; default: the SQLite journal in state_dir)",
    "journal_sync": "full (default): each journal commit is on disk before the final '.'; "
    "normal: faster, survives a crash of asyncmailer but not a power cut",
}


# The keys of one server: read by `_server_settings`, at the top level of a one-relay
# campaign or in each entry of `servers:`.
SERVER_KEYS = frozenset(
    {
        "host",
        "port",
        "security",
        "allow_plaintext",
        "username",
        "password_file",
        "tls_ca_file",
        "tls_verify",
        "timeout",
        "pipelining",
        "max_messages_per_connection",
        "connect_timeout",
        "data_timeout",
        "helo_name",
        "auth",
        "token_file",
        "token_command",
    }
)
# A relay's own limits and routing, besides its server's keys (an entry of `servers:`).
RELAY_KEYS = frozenset(
    {
        "name",
        "concurrency",
        "max_connections",
        "rate",
        "daily_quota",
        "weight",
        "domains",
        "fallback",
    }
)
_NOT_WITH_SERVERS = SERVER_KEYS | {"concurrency", "max_connections"}


def _unknown_key(key: object) -> str:
    """The error for a key no campaign has: the closest known key, else the whole list."""
    close = difflib.get_close_matches(str(key)[:100], KNOWN_KEYS, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}? (every key: docs/configuration.md)"
    return f"unknown key (known keys: {', '.join(KNOWN_KEYS)})"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def campaign_root(config_path: Path) -> Path:
    """The folder relative paths are read from.

    The original layout keeps `config.json` in `reliances/` and names paths from the folder above
    it (``"file_with_message": "reliances/msg.txt"``); any other config names paths from its own
    folder.
    """
    parent = Path(os.path.abspath(config_path)).parent
    return parent.parent if parent.name == _LEGACY_FOLDER else parent


UNSUBSCRIBE_KEY_ENV = "ASYNCMAILER_UNSUBSCRIBE_KEY"
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext: printable ASCII but ':'
# Headers asyncmailer writes itself: a campaign may not set them through `headers`.
_OWN_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "date",
    "message-id",
    "subject",
    "reply-to",
    "sender",
    "mime-version",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
}


_LONGEST_UNSUBSCRIBE_URL = 300  # without {{ email }} and {{ unsubscribe_token }}


async def _list_unsubscribe(
    fields: _Fields, root: Path, env: Mapping[str, str], notices: list[str]
) -> ListUnsubscribe | None:
    value = fields.data.get("list_unsubscribe")
    if value is None:
        return None
    key = "list_unsubscribe"
    if not isinstance(value, dict) or not value or not set(value) <= {"url", "mailto", "key_file"}:
        raise fields.error(key, "expected a mapping of url and/or mailto, and key_file")
    url, mailto = value.get("url"), value.get("mailto")
    if isinstance(url, str):  # {{email}} as {{ email }}: one spelling for the substitution
        url = re.sub(
            r"\{\{\s*(email|unsubscribe_token)\s*\}\}", lambda m: "{{ " + m[1] + " }}", url
        )
    if url is not None:
        if not isinstance(url, str) or not url.startswith("https://") or not url.isascii():
            raise fields.error(key, f"url: expected an https:// URL in ASCII, got {_quote(url)}")
        bare = url.replace(TOKEN, "").replace(EMAIL, "")
        if check_header_value(bare) or " " in bare:
            raise fields.error(key, "url: contains a space, line break or control character")
        if len(bare) > _LONGEST_UNSUBSCRIBE_URL:
            # A URL cannot be folded (RFC 2369): with the longest address and its token the
            # header line must stay within RFC 5322's 998 octets.
            raise fields.error(
                key,
                f"url: {len(bare)} characters; at most {_LONGEST_UNSUBSCRIBE_URL} (with the "
                "token and the address it must fit on one header line of 998)",
            )
    if mailto is not None:
        if not isinstance(mailto, str):
            raise fields.error(key, f"mailto: expected an address, got {_describe(mailto)}")
        try:
            mailto = parse_mailbox(mailto).addr
        except ValueError as err:
            raise fields.error(key, f"mailto: {err}") from None
        if not mailto.isascii():
            raise fields.error(key, "mailto: the address must be ASCII")
    secret = b""
    needs_key = mailto is not None or (url is not None and TOKEN in url)
    if env.get(UNSUBSCRIBE_KEY_ENV):
        secret = env[UNSUBSCRIBE_KEY_ENV].encode("utf-8", "surrogateescape")
    elif value.get("key_file") is not None:
        path = value["key_file"]
        if not isinstance(path, str):
            raise fields.error(key, f"key_file: expected a file name, got {_describe(path)}")
        found = Path(path).expanduser()
        text, warnings = await read_secret(
            found if found.is_absolute() else root / found, "key file"
        )
        notices.extend(warnings)
        secret = text.encode("utf-8")
    if needs_key and len(secret) < 16:
        raise fields.error(
            key,
            f"signing unsubscribe tokens needs a key of 16 characters or more: key_file, or "
            f"{UNSUBSCRIBE_KEY_ENV}",
        )
    return ListUnsubscribe(url=url, mailto=mailto, key=secret)


_SELECTOR = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)


async def _dkim(
    fields: _Fields, root: Path, notices: list[str]
) -> DkimSettings | Literal["relay"] | None:
    value = fields.data.get("dkim")
    if value is None:
        return None
    key = "dkim"
    if isinstance(value, str) and value.strip().lower() == DKIM_BY_RELAY:
        return DKIM_BY_RELAY
    if not isinstance(value, dict) or set(value) != {"domain", "selector", "key_file"}:
        raise fields.error(key, "expected relay, or a mapping of domain, selector and key_file")
    for name in ("domain", "selector", "key_file"):
        if not isinstance(value[name], str) or not value[name].strip():
            raise fields.error(key, f"{name}: expected a string, got {_describe(value[name])}")
    try:
        domain = parse_mailbox(f"postmaster@{value['domain'].strip()}").domain
    except ValueError as err:
        raise fields.error(key, f"domain: {err}") from None
    selector = value["selector"].strip()
    if len(selector) > 253 or not _SELECTOR.fullmatch(selector):
        raise fields.error(key, f"selector: expected DNS labels, got {_quote(selector)}")
    found = Path(value["key_file"]).expanduser()
    key_file = found if found.is_absolute() else root / found
    await _regular_file(fields, key, key_file)
    try:
        pem, warnings = await read_secret_bytes(key_file, "key file")
        signing_key = await asyncio.to_thread(load_key, pem)  # an RSA key takes ~1 ms
    except InputError as err:
        raise fields.error(key, f"key_file {key_file}: {err.reason}") from None
    except DkimKeyError as err:
        raise fields.error(key, f"key_file {key_file}: {err}") from None
    notices.extend(warnings)
    if signing_key.weak:
        notices.append(
            f"warning: {key_file} is an RSA key of {signing_key.bits} bits; Gmail, Yahoo and "
            "Microsoft expect 2048 (docs/configuration.md: dkim)"
        )
    return DkimSettings(domain=domain, selector=selector, key_file=key_file, key=signing_key)


async def _token_source(
    fields: _Fields, root: Path, auth: AuthMethod
) -> tuple[Path | None, tuple[str, ...] | None]:
    """`token_file` or `token_command`, exactly one and only with `auth: xoauth2`. A relative
    program path in the command is read from the campaign root, like any other path."""
    for key in ("token_file", "token_command"):
        if fields.present(key) and auth is not AuthMethod.XOAUTH2:
            raise fields.error(key, "goes with auth: xoauth2")
    if auth is not AuthMethod.XOAUTH2:
        return None, None
    if fields.present("token_file") == fields.present("token_command"):
        raise fields.error(
            "auth", "xoauth2 needs the access token: give token_file or token_command (one)"
        )
    token_file = fields.get_path("token_file", root)
    if token_file is not None:
        await _regular_file(fields, "token_file", token_file)
        return token_file, None
    raw = fields.data["token_command"]
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as err:
            raise fields.error("token_command", f"cannot split the command: {err}") from None
    elif isinstance(raw, list) and all(isinstance(arg, str) for arg in raw):
        argv = list(raw)
    else:
        raise fields.error("token_command", "expected a command: a string or a list of strings")
    if not argv or not argv[0]:
        raise fields.error("token_command", "expected a command, got nothing")
    if any("\0" in arg for arg in argv):
        raise fields.error("token_command", "contains a NUL byte")
    program = Path(argv[0])
    if len(program.parts) > 1 and not program.is_absolute():
        argv[0] = str(root / program)
    return None, tuple(argv)


async def _regular_file(fields: _Fields, key: str, path: Path) -> None:
    """:raises ConfigError: `path` is missing, or not a regular file (a FIFO would hang)."""
    if await aiofiles.os.path.isfile(path):
        return
    if await aiofiles.os.path.exists(path):
        raise fields.error(key, f"not a regular file (a folder, FIFO or device): {path}")
    raise fields.error(key, f"file not found: {path}")


async def campaign_identity(path: str | Path) -> tuple[Path, str]:
    """A campaign's state folder and id, from its file alone: what `status`, `runs` and
    `report` need, so they work when the files it names have moved.

    :raises ConfigError: the file cannot be read or parsed, or those keys are wrong.
    """
    path = Path(path)
    text = await read_text(path, "config file")
    fields = _Fields(parse_document(text, path), text, path)
    root = campaign_root(path)
    state_dir = fields.get_path("state_dir", root, ".asyncmailer") or root / ".asyncmailer"
    return state_dir, fields.get_id("campaign") or path.name


async def campaign_ledger(
    path: str | Path, *, env: Mapping[str, str] | None = None
) -> LedgerUrl | None:
    """A campaign's shared ledger, from its file (or the environment) alone, for `status`,
    `runs` and `report`.

    :raises ConfigError: the file cannot be read or parsed, or the URL is wrong.
    """
    path = Path(path)
    text = await read_text(path, "config file")
    return _ledger(
        _Fields(parse_document(text, path), text, path), os.environ if env is None else env
    )


async def load_campaign(
    path: str | Path = DEFAULT_CONFIG, *, env: Mapping[str, str] | None = None
) -> Campaign:
    """Read and validate a campaign file (JSON, or YAML by suffix).

    :raises ConfigError: unknown key, wrong type or value, syntax error.
    :raises InputError: a file it names is missing or unreadable.
    """
    env = os.environ if env is None else env
    path = Path(path)
    text = await read_text(path, "config file")
    data = parse_document(text, path)
    fields = _Fields(data, text, path)

    for key in data:
        if key not in KNOWN_KEYS:
            raise fields.error(key, _unknown_key(key))

    root = campaign_root(path)
    subject = fields.get_str("subject", "", header=True) or ""

    sender_text = fields.get_str("from", header=True)
    if not sender_text:
        raise fields.error("from", "required: the sender address")
    try:
        sender = parse_mailbox(sender_text)
    except ValueError as err:
        raise fields.error("from", str(err)) from None

    to = fields.get_addresses("to")
    cc = fields.get_addresses("cc")
    bcc = fields.get_addresses("bcc")
    key_notices: list[str] = []
    unsubscribe = await _list_unsubscribe(fields, root, env, key_notices)
    if unsubscribe is not None and unsubscribe.personal:
        if fields.present("group_size") and fields.get_int("group_size", 1, 1, 10000) != 1:
            raise fields.error(
                "group_size",
                "must be 1 with a per-recipient List-Unsubscribe: each message carries its "
                "recipient's own link",
            )
        if to or cc or bcc:
            raise fields.error(
                "list_unsubscribe",
                "a per-recipient link cannot go to to, cc or bcc (they share one message): "
                "put them in the list",
            )
    recipients_file = fields.get_path("recipients_file", root)
    if recipients_file is not None:
        await _regular_file(fields, "recipients_file", recipients_file)
    local_time = fields.get_clock("send_at_local")
    if local_time is not None and recipients_file is None:
        raise fields.error("send_at_local", "needs recipients_file: the times are each row's")
    try:
        campaign_zone = zone(fields.get_str("timezone")) if local_time is not None else None
    except ValueError as err:
        raise fields.error("timezone", str(err)) from None
    if not (to or cc or bcc or recipients_file):
        raise fields.error("to", "no recipients: fill in to, cc, bcc or recipients_file")
    personalize = fields.get_bool("personalize", False)
    if personalize:
        if recipients_file is None:
            raise fields.error("personalize", "needs recipients_file: the rows fill the templates")
        for key in ("to", "cc", "bcc"):
            if fields.present(key) and fields.get_addresses(key):
                raise fields.error(
                    key,
                    "cannot be used with personalize: to, cc and bcc share one message; put "
                    "these addresses in the list",
                )
        if fields.present("group_size") and fields.get_int("group_size", 1, 1, 10000) != 1:
            raise fields.error(
                "group_size", "must be 1 with personalize: each recipient gets their own message"
            )

    message_file = fields.get_path("file_with_message", root)
    if message_file is None:
        raise fields.error("file_with_message", "required: the file with the message text")
    await _regular_file(fields, "file_with_message", message_file)
    text_file = fields.get_path("text_file", root)
    if text_file is not None:
        if message_file.suffix.lower() not in (*HTML, *MARKDOWN):
            raise fields.error("text_file", "goes with an HTML or Markdown file_with_message")
        await _regular_file(fields, "text_file", text_file)

    attachments_dir = fields.get_path("attachments", root)
    if attachments_dir is not None and not await aiofiles.os.path.isdir(attachments_dir):
        raise fields.error("attachments", f"folder not found: {attachments_dir}")

    if fields.present("servers"):
        relays, notices = await _relays(fields, root, sender)
        server = relays[0].server
    else:
        server, notices = await _server_settings(fields, root, sender, env)
        relays = (
            RelaySettings(
                name=server.address,
                server=server,
                concurrency=fields.get_int("concurrency", 4, 1, 1000),
                max_connections=fields.get_int("max_connections", 0, 1, 1000)
                if fields.present("max_connections")
                else None,
            ),
        )
    dkim = await _dkim(fields, root, key_notices)
    suppression_file = fields.get_path("suppression_file", root)
    if suppression_file is not None:
        await _regular_file(fields, "suppression_file", suppression_file)

    return Campaign(
        source=path,
        root=root,
        subject=subject,
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        message_file=message_file,
        attachments_dir=attachments_dir,
        text_file=text_file,
        follow_symlinks=fields.get_bool("follow_symlinks", False),
        server=server,
        relays=relays,
        concurrency=fields.get_int("concurrency", 4, 1, 1000),
        recipients_file=recipients_file,
        recipients_column=fields.get_str("recipients_column", "email") or "email",
        name_column=fields.get_str("name_column", "name") or "name",
        recipients_encoding=_recipients_encoding(fields),
        recipients_delimiter=_recipients_delimiter(fields, recipients_file),
        group_size=1
        if personalize
        or local_time is not None
        or (unsubscribe is not None and unsubscribe.personal)
        else fields.get_int("group_size", DEFAULT_GROUP_SIZE, 1, 10000),
        reply_to=fields.get_addresses("reply_to"),
        headers=fields.get_headers("headers"),
        list_unsubscribe=unsubscribe,
        dkim=dkim,
        suppression_file=suppression_file,
        shared_suppression=fields.get_bool("shared_suppression", True),
        personalize=personalize,
        rate=fields.get_rate("rate"),
        max_connections=fields.get_int("max_connections", 0, 1, 1000)
        if fields.present("max_connections")
        else None,
        state_dir=fields.get_path("state_dir", root, ".asyncmailer") or root / ".asyncmailer",
        retry_attempts=fields.get_int("retry_attempts", 5, 1, 100),
        retry_delay=fields.get_number("retry_delay", 10.0, 0, 86400),
        retry_max_age=fields.get_number("retry_max_age", 1800.0, 0, 30 * 86400),
        daily_quota=fields.get_int("daily_quota", 0, 0, 100_000_000),
        journal_sync=JournalSync(fields.get_choice("journal_sync", JournalSync) or "full"),
        campaign_id=fields.get_id("campaign"),
        schedule=fields.get_schedule("schedule"),
        send_at_local=local_time,
        timezone_column=fields.get_str("timezone_column"),
        timezone=campaign_zone,
        ledger=_ledger(fields, env),
        notices=tuple(notices + key_notices),
    )


def _recipients_encoding(fields: _Fields) -> str:
    """`recipients_encoding`: a text codec Python knows, by its canonical name."""
    key = "recipients_encoding"
    name = fields.get_str(key)
    if name is None:
        return "utf-8"
    try:
        codec = codecs.lookup(name.strip())
        "@".encode(codec.name)  # a bytes-to-bytes codec (base64, zlib) is refused here
    except (LookupError, UnicodeError):
        raise fields.error(
            key, f"{_quote(name)} is not a text encoding Python knows (utf-8, cp1251, latin-1...)"
        ) from None
    return codec.name


def _recipients_delimiter(fields: _Fields, recipients_file: Path | None) -> str | None:
    """`recipients_delimiter`: one character, "tab" or a written \\t for a tab."""
    key = "recipients_delimiter"
    value = fields.get_str(key)
    if value is None:
        return None
    if recipients_file is None or recipients_file.suffix.lower() != ".csv":
        raise fields.error(key, "goes with a .csv recipients_file (a text list has one column)")
    delimiter = "\t" if value.lower() in ("tab", "\\t") else value
    if len(delimiter) != 1 or delimiter in '"\r\n\x00' or delimiter.isalnum():
        raise fields.error(
            key, f'expected one character (",", ";", "|") or "tab", got {_quote(value)}'
        )
    return delimiter


def _ledger(fields: _Fields, env: Mapping[str, str]) -> LedgerUrl | None:
    """The shared ledger's URL: the environment's first (a password stays out of the file)."""
    if env.get(LEDGER_ENV):
        try:
            return LedgerUrl(env[LEDGER_ENV])
        except ValueError as err:
            raise ConfigError(f"{err}", field=LEDGER_ENV) from None
    value = fields.get_str("ledger")
    if value is None:
        return None
    try:
        return LedgerUrl(value)
    except ValueError as err:
        raise fields.error("ledger", str(err)) from None


async def _relays(
    fields: _Fields, root: Path, sender: Mailbox
) -> tuple[tuple[RelaySettings, ...], list[str]]:
    """`servers:`: each entry's server read by `_server_settings` (the same keys and checks
    as a one-relay campaign's), plus its limits and routing.

    :raises ConfigError: naming ``servers[N].key`` and its line.
    """
    entries = fields.data["servers"]
    if not isinstance(entries, list) or not entries:
        raise fields.error("servers", "expected a list of servers, each a mapping of keys")
    for key in sorted(_NOT_WITH_SERVERS):
        if fields.present(key):
            raise fields.error(key, "goes in each entry of servers: (it is per relay)")
    notices: list[str] = []
    relays: list[RelaySettings] = []
    seen_domains: dict[str, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise fields.error("servers", f"servers[{index}]: expected a mapping of keys")
        part = _EntryFields(entry, fields, "servers", index, entries[:index])
        for key in entry:
            if key not in SERVER_KEYS | RELAY_KEYS:
                known = ", ".join(sorted(SERVER_KEYS | RELAY_KEYS))
                raise part.error(str(key), f"unknown key in a server (known: {known})")
        if not part.present("host"):
            raise part.error("host", "required in each server: its host name or address")
        # No environment password here: one variable cannot hold several relays' passwords.
        server, more = await _server_settings(part, root, sender, {}, legacy_password=False)
        notices.extend(more)
        name = part.get_str("name", server.address, header=True) or server.address
        if any(relay.name == name for relay in relays):
            raise part.error("name", f"another server is already named {_quote(name)}")
        domains = _domains(part)
        for domain in domains:
            if domain in seen_domains:
                raise part.error(
                    "domains", f"{domain} is already routed to {_quote(seen_domains[domain])}"
                )
            seen_domains[domain] = name
        relays.append(
            RelaySettings(
                name=name,
                server=server,
                concurrency=part.get_int("concurrency", 4, 1, 1000),
                max_connections=part.get_int("max_connections", 0, 1, 1000)
                if part.present("max_connections")
                else None,
                rate=part.get_rate("rate"),
                daily_quota=part.get_int("daily_quota", 0, 0, 100_000_000),
                weight=part.get_int("weight", 1, 0, 1000),
                domains=domains,
                fallback=_names(part, "fallback"),
            )
        )
    names = {relay.name for relay in relays}
    for index, relay in enumerate(relays):
        part = _EntryFields(entries[index], fields, "servers", index, entries[:index])
        for other in relay.fallback:
            if other not in names or other == relay.name:
                raise part.error(
                    "fallback", f"{_quote(other)} names no other server (names: {', '.join(names)})"
                )
    if not any(relay.weight for relay in relays if not relay.domains) and not all(
        relay.domains for relay in relays
    ):
        raise fields.error(
            "servers", "every server without domains has weight 0: none takes the rest"
        )
    return tuple(relays), notices


def _domains(fields: _Fields) -> tuple[str, ...]:
    """`domains: [gmail.com, googlemail.com]`: lower-cased, IDNA for non-ASCII ones."""
    found = []
    for value in _names(fields, "domains"):
        # IDNA 2008, as the recipients' own domains are read (their keys are compared).
        try:
            domain = parse_mailbox(f"postmaster@{value.strip().rstrip('.')}").domain.lower()
        except ValueError:
            raise fields.error("domains", f"not a domain: {_quote(value)}") from None
        if "." not in domain:
            raise fields.error("domains", f"not a domain: {_quote(value)}")
        found.append(domain)
    return tuple(found)


def _names(fields: _Fields, key: str) -> tuple[str, ...]:
    """A list of strings, or one string."""
    value = fields.data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fields.error(key, "expected a list of names")
    return tuple(value)


# RFC 5321 4.1.1.1: EHLO's argument is a domain (letters, digits and hyphens, labels joined by
# dots, the last not all digits) or an address literal ([192.0.2.1], [IPv6:2001:db8::1]).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_ADDRESS_LITERAL = re.compile(r"\[(?:(?P<v6>IPv6:)?(?P<address>[0-9A-Fa-f:.]+))\]", re.IGNORECASE)


def _helo_name(fields: _Fields) -> str | None:
    """The config's `helo_name`, checked; a trailing dot dropped (the name is sent as a host
    name, and reverse DNS is compared without it)."""
    name = fields.get_str("helo_name")
    if name is None:
        return None
    literal = _ADDRESS_LITERAL.fullmatch(name)
    if literal is not None:
        try:
            address = ipaddress.ip_address(literal["address"])
        except ValueError:
            address = None
        if address is not None and (address.version == 6) == bool(literal["v6"]):
            return name
        raise fields.error(
            "helo_name",
            "expected an address in brackets, [192.0.2.1] or [IPv6:2001:db8::1], "
            f"not {_quote(name)}",
        )
    host = name.removesuffix(".")
    labels = host.split(".")
    if len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels):
        if not labels[-1].isdigit():
            return host
        hint = "; put an address in brackets ([192.0.2.1])"
    else:
        hint = "; give a name with non-ASCII letters in its xn-- form" if not name.isascii() else ""
    raise fields.error(
        "helo_name",
        f"expected a host name (mail.example.com) or an address in brackets "
        f"([192.0.2.1]), not {_quote(name)}{hint}",
    )


async def _server_settings(
    fields: _Fields,
    root: Path,
    sender: Mailbox,
    env: Mapping[str, str],
    *,
    legacy_password: bool = True,
) -> tuple[ServerSettings, list[str]]:
    """The server keys (`SERVER_KEYS`) of `fields`: the campaign's top level, or one entry
    of `servers:` (then without the legacy reliances/your_pswd.txt default)."""
    notices: list[str] = []
    host = fields.get_str("host")
    if host is not None and (not host.strip() or check_header_value(host)):
        raise fields.error("host", "expected a host name or address")
    port_given = fields.present("port")
    port = fields.get_int("port", 0, 1, 65535)
    security = fields.get_choice("security", Security)
    if security is None:
        security = Security.STARTTLS if port in (25, 587) else Security.SSL
    security = Security(security)
    if not port_given:
        port = _DEFAULT_PORTS[security]
    if host is None:
        host = f"smtp.{sender.domain}"
        notices.append(f'no host in the config: using {host}:{port} (set "host" to choose)')

    if security is Security.NONE and not is_loopback(host):
        if not fields.get_bool("allow_plaintext", False):
            raise fields.error(
                "security",
                f"'none' sends the password and mail in clear text; it is allowed only to "
                f'loopback hosts, not {_quote(host)} (set "allow_plaintext": true to force it)',
            )
        notices.append(f"warning: sending to {host} without TLS (allow_plaintext is set)")
    else:
        fields.get_bool("allow_plaintext", False)

    tls_verify = fields.get_bool("tls_verify", True)
    if not tls_verify:
        notices.append("warning: tls_verify is false: the server's certificate is not checked")
    tls_ca_file = fields.get_path("tls_ca_file", root)
    if tls_ca_file is not None:
        await _regular_file(fields, "tls_ca_file", tls_ca_file)

    username = fields.get_str("username", sender.addr, header=True)
    auth = AuthMethod(fields.get_choice("auth", AuthMethod) or AuthMethod.LOGIN)
    token_file, token_command = await _token_source(fields, root, auth)
    password: Secret | None
    more: list[str]
    if auth is AuthMethod.XOAUTH2:
        # The token is the credential: no password goes anywhere, not even the default file's.
        if fields.present("password_file"):
            raise fields.error(
                "password_file", "not used with auth: xoauth2 (the access token logs in)"
            )
        password, more = None, []
    elif env.get(PASSWORD_ENV):
        try:
            env[PASSWORD_ENV].encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"{PASSWORD_ENV} is not valid UTF-8 text; set it to the password as UTF-8"
            ) from None
        password = Secret(env[PASSWORD_ENV])
        more = []
    else:
        explicit = fields.present("password_file")
        default = f"{_LEGACY_FOLDER}/your_pswd.txt" if legacy_password else None
        password_file = fields.get_path("password_file", root, default)
        more = []
        if password_file is None:
            password = None  # a server of servers: without one: no AUTH
        elif explicit or await aiofiles.os.path.exists(password_file):
            if not await aiofiles.os.path.exists(password_file):
                raise fields.error("password_file", f"file not found: {password_file}")
            secret, more = await read_secret(password_file, "password file")
            if not secret and explicit:
                raise fields.error(
                    "password_file",
                    f"{password_file} is empty; write the password in it, or remove the key "
                    "to send without logging in",
                )
            password = Secret(secret) if secret else None
        else:
            password, more = None, []  # no password at all: send without AUTH
    notices.extend(more)
    if password is not None and ("\n" in password.reveal() or "\r" in password.reveal()):
        where = PASSWORD_ENV if env.get(PASSWORD_ENV) else "password_file"
        raise fields.error(where, "the password must be one line")

    return (
        ServerSettings(
            host=host,
            port=port,
            security=security,
            username=username if password is not None or auth is AuthMethod.XOAUTH2 else None,
            password=password,
            auth=auth,
            token_file=token_file,
            token_command=token_command,
            tls_ca_file=tls_ca_file,
            tls_verify=tls_verify,
            timeout=fields.get_number("timeout", 60.0, 0, 3600),
            pipelining=fields.get_bool("pipelining", True),
            connect_timeout=fields.get_number("connect_timeout", 30.0, 0, 3600),
            helo_name=_helo_name(fields),
            data_timeout=fields.get_number("data_timeout", 600.0, 0, 86400),
            max_messages_per_connection=fields.get_int(
                "max_messages_per_connection", 0, 0, 10_000_000
            ),
        ),
        notices,
    )
