"""Rows of results, the printed table, the target ratios and bench/results.json."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cases import (
    ASYNCMAILER,
    MEMORY,
    ORIGINAL,
    PERSONAL_CPU_RATIO,
    PERSONAL_HTML,
    PERSONAL_TEXT,
    PG_LOAD_SECONDS,
    PG_PROCESSES,
    PG_PROCESSES_RATIO,
    PG_WORKERS,
    PG_WORKERS_RATIO,
    SMTP_SOURCE,
    TLS_CONCURRENCIES,
    TLS_SIZE,
    Case,
)

OK = "ok"


@dataclass(frozen=True, slots=True)
class Row:
    """The outcome of one case. Numbers are None when the run did not happen."""

    case: Case
    sink: str
    status: str  # "ok", "skipped", "not available yet", "failed", "timeout"
    detail: str = ""
    seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss_kb: int | None = None
    message_bytes: int | None = None
    # From the sender's start until the sink had accepted a message (smtp-sink rows only).
    first_message_s: float | None = None
    sink_cpu_seconds: float | None = None
    # Implicit-TLS rows: the stunnel legs' CPU time and the session the server leg logged.
    tls_server_cpu_seconds: float | None = None
    tls_client_cpu_seconds: float | None = None  # smtp-source's client leg
    tls_session: str | None = None
    # The adaptive-throttling row: the sink's 421 replies, and the rate it settled at.
    throttled: int | None = None
    settled_per_s: float | None = None
    # The PostgreSQL ledger rows: the server's CPU time during the run.
    pg_cpu_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def msgs_per_s(self) -> float | None:
        if not self.ok or not self.seconds:
            return None
        return self.case.messages / self.seconds

    @property
    def cpu_per_1k(self) -> float | None:
        if not self.ok or self.cpu_seconds is None:
            return None
        return self.cpu_seconds * 1000 / self.case.messages

    @property
    def rss_mb(self) -> float | None:
        return None if self.max_rss_kb is None else self.max_rss_kb / 1024

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["case"] = asdict(self.case)
        data["msgs_per_s"] = self.msgs_per_s
        data["recipients_per_s"] = (
            self.case.recipients / self.seconds if self.ok and self.seconds else None
        )
        data["cpu_s_per_1k_msgs"] = self.cpu_per_1k
        data["peak_rss_mb"] = self.rss_mb
        return data


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def pipelining_label(value: bool | None) -> str:
    return "-" if value is None else ("on" if value else "off")


_HEADERS = (
    "sender",
    "sink",
    "latency",
    "size",
    "conc",
    "pipelining",
    "messages",
    "rcpts",
    "seconds",
    "msgs/s",
    "CPU s/1k",
    "RSS MB",
    "1st msg s",
    "status",
)


def _cells(row: Row) -> tuple[str, ...]:
    case = row.case
    status = row.status if not row.detail else f"{row.status}: {row.detail}"
    return (
        case.label,
        row.sink,
        f"{case.latency_ms} ms",
        case.size,
        str(case.concurrency),
        pipelining_label(case.pipelining),
        f"{case.messages:,}",
        f"{case.recipients:,}",
        _num(row.seconds, 2),
        _num(row.msgs_per_s, 0),
        _num(row.cpu_per_1k, 2),
        _num(row.rss_mb, 1),
        _num(row.first_message_s, 2),
        status,
    )


def format_table(rows: Sequence[Row]) -> str:
    table = [_HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS) - 1)]
    numeric = set(range(6, 13))

    def render(cells: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join([*parts, cells[-1]]).rstrip()

    return "\n".join(render(cells) for cells in table)


@dataclass(frozen=True, slots=True)
class Ratio:
    """One target line: a measured value against its target."""

    name: str
    value: float | None
    target: float
    at_least: bool  # True: value >= target passes; False: value <= target passes
    missing: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "N/A"
        passed = self.value >= self.target if self.at_least else self.value <= self.target
        return "PASS" if passed else "FAIL"

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        value = f"{self.value:.4g}" if self.value is not None else f"n/a ({self.missing})"
        return f"{self.verdict:4}  {self.name}: {value} (target {sign} {self.target:g})"


def _find(rows: Sequence[Row], match: Callable[[Case], bool]) -> Row | None:
    return next((row for row in rows if match(row.case)), None)


def _why(row: Row | None, label: str) -> str:
    if row is None:
        return f"no {label} row"
    return f"{label}: {row.status}" + (f": {row.detail}" if row.detail else "")


def _speed_ratio(name: str, top: Row | None, bottom: Row | None, target: float) -> Ratio:
    a = top.msgs_per_s if top else None
    b = bottom.msgs_per_s if bottom else None
    if a is None or b is None:
        missing = _why(top, "asyncmailer") if a is None else _why(bottom, "baseline")
        return Ratio(name, None, target, True, missing)
    return Ratio(name, a / b, target, True)


def _row(
    rows: Sequence[Row], sender: str, latency: int, size: str, conc: int, *, tls: bool = False
) -> Row | None:
    """The row for these settings (for asyncmailer: the one with pipelining on)."""

    def match(case: Case) -> bool:
        same = (case.sender, case.latency_ms, case.size, case.concurrency, case.tls) == (
            sender,
            latency,
            size,
            conc,
            tls,
        )
        mine = sender != ASYNCMAILER or (case.pipelining is True and case.dkim is None)
        # adaptive throttling's and the personalised rows measure something else
        return same and mine and not (case.personal or case.throttle or case.processes)

    return _find(rows, match)


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    """The project's targets, each computed from rows of this run."""
    result = []
    for size, target in (("2.4KB", 0.40), ("143KB", 0.75)):
        result.append(
            _speed_ratio(
                f"0 ms, {size}, c=32, pipelining on: asyncmailer / smtp-source msgs/s",
                _row(rows, ASYNCMAILER, 0, size, 32),
                _row(rows, SMTP_SOURCE, 0, size, 32),
                target,
            )
        )
    for conc in TLS_CONCURRENCIES:
        result.append(
            _speed_ratio(
                f"0 ms, {TLS_SIZE}, c={conc}, implicit TLS: asyncmailer / smtp-source via stunnel"
                " msgs/s",
                _row(rows, ASYNCMAILER, 0, TLS_SIZE, conc, tls=True),
                _row(rows, SMTP_SOURCE, 0, TLS_SIZE, conc, tls=True),
                1.0,
            )
        )
    for size in ("2.4KB", "143KB"):
        mailer = _row(rows, ASYNCMAILER, 50, size, 32)
        result.append(
            _speed_ratio(
                f"50 ms, {size}, c=32: asyncmailer / smtp-source -s 32 msgs/s",
                mailer,
                _row(rows, SMTP_SOURCE, 50, size, 32),
                1.8,
            )
        )
        result.append(
            _speed_ratio(
                f"50 ms, {size}, c=32: asyncmailer / original way msgs/s",
                mailer,
                _row(rows, ORIGINAL, 50, size, 1),
                100,
            )
        )
    result.append(_personal_cpu(rows))
    result.extend(_long_list(rows))
    result.extend(_postgresql(rows))
    return result


def _pg_row(rows: Sequence[Row], latency: int, processes: int) -> Row | None:
    return _find(
        rows,
        lambda c: c.processes == processes and c.latency_ms == latency and not c.until_loaded,
    )


def _postgresql(rows: Sequence[Row]) -> list[Ratio]:
    """The shared ledger's targets: several workers (processes) against one, and the time
    until 1,000,000 recipients are loaded."""
    result = [
        _speed_ratio(
            f"PostgreSQL, 50 ms, 2.4KB, c=32 each: {PG_WORKERS} workers / 1 worker msgs/s",
            _pg_row(rows, 50, PG_WORKERS),
            _pg_row(rows, 50, 1),
            PG_WORKERS_RATIO,
        ),
        _speed_ratio(
            f"PostgreSQL, 0 ms, 2.4KB, c=32, 1 rcpt/msg: --processes {PG_PROCESSES} / 1 msgs/s",
            _pg_row(rows, 0, PG_PROCESSES),
            _pg_row(rows, 0, 1),
            PG_PROCESSES_RATIO,
        ),
    ]
    load = _find(rows, lambda c: c.until_loaded)
    name = "PostgreSQL: seconds until the list is loaded"
    if load is not None:
        name = f"PostgreSQL: seconds until {load.case.recipients:,} recipients are loaded"
    if load is not None and load.ok and load.seconds is not None:
        result.append(Ratio(name, load.seconds, PG_LOAD_SECONDS, False))
    else:
        result.append(Ratio(name, None, PG_LOAD_SECONDS, False, _why(load, "load run")))
    return result


def postgresql_cpu(rows: Sequence[Row]) -> list[str]:
    """Where the CPU went in each PostgreSQL sending row: asyncmailer's processes, the sink,
    the database server; per 1,000 messages, and as cores busy over the run."""
    lines = []
    for row in rows:
        case = row.case
        if not case.processes or case.until_loaded or not row.ok or not row.seconds:
            continue
        parts = (
            ("asyncmailer", row.cpu_seconds),
            (row.sink, row.sink_cpu_seconds),
            ("postgres", row.pg_cpu_seconds),
        )
        split = ", ".join(
            f"{who} {_num(None if cpu is None else cpu * 1000 / case.messages, 3)}"
            for who, cpu in parts
        )
        busy = sum(cpu or 0.0 for _, cpu in parts) / row.seconds
        lines.append(
            f"CPU s/1k msgs, PostgreSQL x{case.processes}, {case.latency_ms} ms: {split} "
            f"({busy:.2f} cores busy, {row.msgs_per_s or 0:,.0f} msgs/s)"
        )
    return lines


def _personal_cpu(rows: Sequence[Row]) -> Ratio:
    """Personalised HTML+text against personalised text: CPU per message, at most 1.5x."""
    name = f"0 ms, 2.4KB, c=32, personalised: {PERSONAL_HTML} / {PERSONAL_TEXT} CPU per message"
    html = _find(rows, lambda c: c.personal == PERSONAL_HTML)
    text = _find(rows, lambda c: c.personal == PERSONAL_TEXT)
    a = html.cpu_per_1k if html else None
    b = text.cpu_per_1k if text else None
    if a is None or not b:
        missing = _why(html, PERSONAL_HTML) if a is None else _why(text, PERSONAL_TEXT)
        return Ratio(name, None, PERSONAL_CPU_RATIO, False, missing)
    return Ratio(name, a / b, PERSONAL_CPU_RATIO, False)


# The 1,000,000-recipient run (groups of 100, journal_sync full, --report): its targets.
LONG_LIST_SECONDS = 20.0
LONG_LIST_FIRST_MESSAGE_S = 1.0
LONG_LIST_RSS_MB = 64.0


def _long_list(rows: Sequence[Row]) -> list[Ratio]:
    """End to end, until the first message and peak RSS, of asyncmailer at 1,000,000
    recipients: each at most its target."""
    row = _find(rows, lambda c: c.sender == MEMORY and c.recipients == 1_000_000)
    found = row is not None and row.ok
    lines = (
        ("seconds end to end", LONG_LIST_SECONDS, row.seconds if row else None),
        (
            "seconds to the first message",
            LONG_LIST_FIRST_MESSAGE_S,
            row.first_message_s if row else None,
        ),
        ("peak RSS, MB", LONG_LIST_RSS_MB, row.rss_mb if row else None),
    )
    result = []
    for what, target, value in lines:
        name = f"asyncmailer at 1,000,000 recipients, {what}"
        if found and value is not None:
            result.append(Ratio(name, value, target, False))
        else:
            why = "not measured" if found else _why(row, "1,000,000-recipient run")
            result.append(Ratio(name, None, target, False, why))
    return result


def signing_costs(rows: Sequence[Row]) -> list[str]:
    """What DKIM signing costs per message: each signed row's CPU per message against the
    unsigned row of the same run (they took turns)."""
    found = {row.case.dkim: row for row in rows if row.case.dkim is not None}
    unsigned = found.get("unsigned")
    if unsigned is None or unsigned.cpu_per_1k is None:
        return [] if unsigned is None else [f"DKIM: n/a ({_why(unsigned, 'unsigned row')})"]
    lines = []
    for kind, row in found.items():
        if kind == "unsigned":
            continue
        if row.cpu_per_1k is None:
            lines.append(f"DKIM {kind}: n/a ({_why(row, 'signed row')})")
            continue
        extra = row.cpu_per_1k - unsigned.cpu_per_1k  # CPU s per 1,000 = ms per message
        speed = (row.msgs_per_s or 0) / (unsigned.msgs_per_s or 1)
        lines.append(
            f"DKIM {kind}: {row.cpu_per_1k:.3f} ms CPU per message against "
            f"{unsigned.cpu_per_1k:.3f} unsigned (+{extra:.3f} ms); msgs/s x{speed:.2f}"
        )
    return lines


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[Row], lines: list[Ratio]) -> None:
    document = {
        **meta,
        "rows": [row.to_json() for row in rows],
        "ratios": [
            {**asdict(ratio), "verdict": ratio.verdict, "line": ratio.line()} for ratio in lines
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
