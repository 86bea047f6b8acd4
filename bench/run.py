"""Benchmark asyncmailer against smtplib (the original way) and Postfix's smtp-source.

    python bench/run.py [--quick] [--scale X] [--budget SECONDS] [--only TEXT]

Every sender runs as its own subprocess against a fresh sink on 127.0.0.1: smtp-sink for 0 ms
per reply, bench/latency_sink.py for 50 ms; the implicit-TLS rows reach smtp-sink through
stunnel (see tls.py). Prints a table and the target ratios, writes bench/results.json, and
exits 0 whatever the numbers (it is a measurement, not a test).
BENCH_QUICK=1 in the environment is the same as --quick (leave out the 1,000,000-recipient run).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import cases
import postgres
import report
import sinks
import tls
import workload
from cases import ASYNCMAILER, MEMORY, ORIGINAL, SMTP_SOURCE, Case
from measure import ProcessStats, cpu_seconds, reap, run_measured
from report import Row
from tools import Tools, ensure_tools

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results.json"
ORIGINAL_WAY = BENCH / "original_way.py"
DEFAULT_BUDGET = 900.0  # seconds for all runs together; later runs are skipped past it
PROBE = Case(ASYNCMAILER, 0, "2.4KB", 2, True, 20, 20)
_SUMMARY = re.compile(r"^([\d,]+) recipients?: (.*)$", re.MULTILINE)
_ACCEPTED = re.compile(r"([\d,]+) accepted")
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a run needs; `mailer_missing` says why asyncmailer rows cannot run, and
    `tls_missing` why the implicit-TLS rows cannot (`certs` is None then)."""

    folder: Path
    work: workload.Workload
    tools: Tools
    env: dict[str, str]
    deadline: float
    mailer_missing: str = ""
    certs: tls.Certificates | None = None
    tls_missing: str = ""
    pg: Any = None  # the private PostgreSQL server (tests/postgres.py's PgServer)
    pg_missing: str = ""  # why the PostgreSQL ledger rows cannot run


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished sender process and what its sink counted."""

    stats: ProcessStats
    stdout: str
    stderr: str
    sink: sinks.SinkTotals
    tunnel: tls.TunnelTotals
    pg_cpu_seconds: float | None = None  # the PostgreSQL server's, during the run


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return handle.read().decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _sink_for(case: Case, ctx: Context, output: Path) -> sinks.Sink:
    if case.throttle:
        return sinks.latency_sink(case.latency_ms, output, case.timeout + 60, case.throttle)
    if case.latency_ms == 0 and ctx.tools.sink is not None:
        return sinks.smtp_sink(ctx.tools.sink, output)
    return sinks.latency_sink(case.latency_ms, output, case.timeout + 60)


def _sink_label(case: Case, sink: str) -> str:
    return f"stunnel+{sink}" if case.tls else sink


def _tunnel_for(case: Case, ctx: Context, name: str, backend_port: int) -> tls.Tunnel:
    """stunnel in front of the sink: the server leg, and a client leg for smtp-source."""
    assert ctx.tools.stunnel is not None and ctx.certs is not None
    client_leg = case.sender == SMTP_SOURCE
    stem = ctx.folder / name
    return tls.Tunnel(ctx.tools.stunnel, ctx.certs, stem, backend_port, client_leg=client_leg)


def _argv(case: Case, ctx: Context, port: int, name: str, ledger: str = "") -> list[str]:
    size = ctx.work.sizes[case.size]
    if case.sender == ORIGINAL:
        return [
            sys.executable,
            str(ORIGINAL_WAY),
            *("--port", str(port), "--count", str(case.messages)),
            *("--message", str(size.eml_crlf)),
        ]
    if case.sender == SMTP_SOURCE:
        assert ctx.tools.source is not None
        return [
            str(ctx.tools.source),
            "-d",  # don't disconnect: reuse each connection for the next message
            *("-s", str(case.concurrency), "-m", str(case.messages), "-F", str(size.eml_lf)),
            *("-M", "localhost", "-f", workload.SENDER, "-t", workload.RECIPIENT),
            f"{sinks.HOST}:{port}",
        ]
    personal = {
        cases.PERSONAL_TEXT: ctx.work.personal_text,
        cases.PERSONAL_HTML: ctx.work.personal_html,
    }.get(case.personal)
    listing = (workload.personal_recipients_file if personal else workload.recipients_file)(
        ctx.folder, case.recipients
    )
    spec = workload.CampaignSpec(
        port=port,
        recipients=listing,
        size=size,
        concurrency=case.concurrency,
        pipelining=bool(case.pipelining),
        group_size=case.group_size,
        tls_ca_file=ctx.certs.ca_file if case.tls and ctx.certs else None,
        personal=personal,
        dkim_key=ctx.work.dkim_keys.get(case.dkim or ""),
        rate=case.throttle * cases.THROTTLE_ASK if case.throttle else None,
        ledger=ledger or None,
    )
    campaign = workload.write_campaign(ctx.folder, name, ctx.work.body_file, spec)
    if case.processes:
        # No --report: with N processes each writes every recipient of the run at its end,
        # which would measure N reports, not the sending.
        processes = ("--processes", str(case.processes)) if case.processes > 1 else ()
        return [
            *(sys.executable, "-m", "asyncmailer", "worker", str(campaign), "-q"),
            *processes,
        ]
    # Reports on, as a user runs it: every recipient's result goes to a CSV file as it comes.
    report_file = ctx.folder / f"{name}.report.csv"
    return [
        *(sys.executable, "-m", "asyncmailer", "-c", str(campaign), "-q"),
        *("--report", str(report_file)),
    ]


def _execute(case: Case, ctx: Context, name: str) -> tuple[str, Outcome]:
    """Start a sink (with stunnel in front for TLS), run the sender against it, stop them."""
    out, err, sink_log = (ctx.folder / f"{name}.{ext}" for ext in ("out", "err", "sink"))
    timeout = max(1.0, min(case.timeout, ctx.deadline - time.monotonic()))
    with ExitStack() as stack:
        sink = stack.enter_context(_sink_for(case, ctx, sink_log))
        tunnel = None
        if case.tls:
            tunnel = stack.enter_context(_tunnel_for(case, ctx, name, sink.port))
        ledger = postgres.new_database(ctx.pg) if case.processes else ""
        argv = _argv(case, ctx, tunnel.port if tunnel else sink.port, name, ledger)
        pg_before = postgres.cpu_seconds(ctx.pg) if ledger else 0.0
        sink.watch_first(time.perf_counter())  # the sender starts now
        if case.until_loaded:
            stats = run_until_loaded(argv, ledger, out, err, timeout, ctx.env)
        else:
            stats = run_measured(
                argv,
                stdout=out,
                stderr=err,
                timeout=timeout,
                env=ctx.env,
                gnu_time=ctx.tools.gnu_time,
            )
        pg_cpu = None
        if ledger:
            time.sleep(0.3)  # the backends of the closed sessions exit and are reaped
            pg_cpu = postgres.cpu_seconds(ctx.pg) - pg_before
        legs = tunnel.stop() if tunnel else tls.TunnelTotals()
        totals = sink.stop()
    outcome = Outcome(stats, _tail(out), _tail(err), totals, legs, pg_cpu)
    return _sink_label(case, sink.name), outcome


def run_until_loaded(
    argv: list[str], ledger: str, stdout: Path, stderr: Path, timeout: float, env: dict[str, str]
) -> ProcessStats:
    """Start the worker and stop it (SIGKILL to its group) once its list is all in the
    ledger: the seconds until then, and its CPU time until then."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        loaded = postgres.wait_loaded(ledger, timeout)
        seconds = time.perf_counter() - start
        done = reap(proc, 0.0, group=True)
    return ProcessStats(
        returncode=0 if loaded else done.returncode,
        seconds=seconds,
        cpu_seconds=cpu_seconds(done.usage),
        max_rss_kb=done.usage.ru_maxrss,
        timed_out=not loaded,
    )


def _judge(case: Case, outcome: Outcome) -> tuple[str, str]:
    """(status, detail) for a finished run."""
    stats, delivered = outcome.stats, outcome.sink.messages
    if stats.timed_out:
        return "timeout", f"killed after {stats.seconds:.0f} s"
    if case.until_loaded:
        return report.OK, ""  # loaded before the timeout: what the row measures
    if case.sender in (ASYNCMAILER, MEMORY) and not case.processes:
        # (workers print a summary each, of their part: the sink's count is checked below)
        if stats.returncode == 2 and "unknown key" in outcome.stderr:
            return "not available yet", _last_line(outcome.stderr).partition(" (known keys")[0]
        summary = _SUMMARY.findall(outcome.stdout)
        accepted = _ACCEPTED.search(summary[-1][1]) if summary else None
        if accepted is None or int(accepted.group(1).replace(",", "")) != case.recipients:
            shown = " ".join(summary[-1]) if summary else "no summary line"
            return "failed", f"exit {stats.returncode}: {shown}; {_last_line(outcome.stderr)}"
    if stats.returncode != 0:
        return "failed", f"exit {stats.returncode}: {_last_line(outcome.stderr)}"
    if delivered != case.messages and not case.until_loaded:
        return "failed", f"sink counted {delivered} messages, expected {case.messages}"
    return report.OK, ""


def run_case(case: Case, ctx: Context, name: str) -> Row:
    sink = _sink_label(
        case,
        "smtp-sink"
        if case.latency_ms == 0 and ctx.tools.sink and not case.throttle
        else "latency_sink",
    )
    if case.sender == SMTP_SOURCE and not ctx.tools.postfix:
        return Row(case, sink, "skipped", "smtp-source not installed (see notes)")
    if case.tls and ctx.tls_missing:
        return Row(case, sink, "skipped", ctx.tls_missing)
    if case.processes and ctx.pg_missing:
        return Row(case, sink, "skipped", ctx.pg_missing)
    if case.sender in (ASYNCMAILER, MEMORY) and ctx.mailer_missing:
        return Row(case, sink, "not available yet", ctx.mailer_missing)
    if time.monotonic() >= ctx.deadline:
        return Row(case, sink, "skipped", "time budget used up (see --budget)")
    try:
        sink, outcome = _execute(case, ctx, name)
    except (OSError, RuntimeError) as err:
        return Row(case, sink, "failed", f"{type(err).__name__}: {err}")
    status, detail = _judge(case, outcome)
    stats, data_bytes, legs = outcome.stats, outcome.sink.data_bytes, outcome.tunnel
    ok = status == report.OK
    if ok and case.throttle:  # what the row measures: the settled rate and the refusals
        detail = (
            f"settled at {outcome.sink.settled or 0:.1f} msgs/s, "
            f"{outcome.sink.throttled or 0:,} x 421 4.7.0"
        )
    return Row(
        case,
        sink,
        status,
        detail,
        seconds=stats.seconds,
        cpu_seconds=stats.cpu_seconds,
        max_rss_kb=stats.max_rss_kb,
        message_bytes=data_bytes // case.messages if data_bytes and ok else None,
        first_message_s=outcome.sink.first_message_s,
        sink_cpu_seconds=outcome.sink.cpu_seconds,
        tls_server_cpu_seconds=legs.server_cpu_seconds,
        tls_client_cpu_seconds=legs.client_cpu_seconds,
        tls_session=legs.session,
        throttled=outcome.sink.throttled if case.throttle else None,
        settled_per_s=outcome.sink.settled if case.throttle else None,
        pg_cpu_seconds=outcome.pg_cpu_seconds,
    )


REPEATS = 3  # the 0 ms rows behind the target ratios move +-15% between runs on 2 cores


def _compared(case: Case) -> bool:
    """The rows the 0 ms ratios compare: concurrency 32 (and every implicit-TLS row),
    asyncmailer with pipelining and smtp-source; and the two personalised rows."""
    return bool(case.personal) or (
        case.latency_ms == 0
        and not case.processes
        and case.dkim is None
        and (case.concurrency == 32 or case.tls)
        and (case.sender == SMTP_SOURCE or (case.sender == ASYNCMAILER and bool(case.pipelining)))
    )


def _ratio_key(case: Case) -> tuple[int, str, int, bool, bool]:
    """Compared rows with the same key are the two sides of one ratio."""
    return case.latency_ms, case.size, case.concurrency, case.tls, bool(case.personal)


def _median(rows: list[Row]) -> Row:
    """The median run by msgs/s (personalised rows: by CPU per message, what their ratio
    compares), its detail listing every run (or the first that failed)."""
    failed = [r for r in rows if not r.ok]
    if failed:  # a failed run has no figures to list
        return failed[0]
    if rows and rows[0].case.personal:
        done = sorted(rows, key=lambda r: r.cpu_per_1k or 0.0)
        spread = ", ".join(f"{r.cpu_per_1k:.3f}" for r in done) + " CPU s/1k"
    else:
        done = sorted(rows, key=lambda r: r.msgs_per_s or 0.0)
        spread = ", ".join(f"{r.msgs_per_s:,.0f}" for r in rows) + " msgs/s"
    return replace(done[len(rows) // 2], detail=f"median of {len(rows)} runs: {spread}")


def run_interleaved(cases: list[Case], names: dict[Case, str], ctx: Context) -> list[Row]:
    """The compared rows of one ratio, REPEATS times each and taking turns (asyncmailer,
    smtp-source, asyncmailer, ...), so that a machine that speeds up or slows down during
    the benchmark moves both sides of the ratio alike; each keeps its median run."""
    runs: list[list[Row]] = [[] for _ in cases]
    for repeat in range(REPEATS):
        for case, done in zip(cases, runs, strict=True):
            done.append(run_case(case, ctx, f"{names[case]}-{repeat}"))
    return [_median(done) for done in runs]


def _describe(case: Case) -> str:
    on_off = report.pipelining_label(case.pipelining)
    pipelining = "" if case.pipelining is None else f" pipelining {on_off}"
    over_tls = ", implicit TLS" if case.tls else ""
    throttled = (
        f", throttled above {case.throttle}/s, rate {case.throttle * cases.THROTTLE_ASK}/s"
        if case.throttle
        else ""
    )
    return (
        f"{case.label}, {case.latency_ms} ms, {case.size}, c={case.concurrency}{pipelining}"
        f"{over_tls}{throttled}, {case.messages:,} messages"
    )


def _progress(number: int, total: int, row: Row) -> None:
    speed = f"{row.msgs_per_s:,.0f} msgs/s" if row.msgs_per_s else row.status
    detail = f" ({row.detail})" if row.detail and (not row.ok or row.case.throttle) else ""
    print(f"[{number}/{total}] {_describe(row.case)}: {speed}{detail}", file=sys.stderr, flush=True)


def compile_package(notes: list[str]) -> None:
    """Write asyncmailer's bytecode, as `pip install` does for an installed package. The
    editable install has none until a run writes it, and with PYTHONDONTWRITEBYTECODE set
    no run does: every start would compile the package (~45 ms), measured as sending time."""
    package = REPO / "asyncmailer"
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)], capture_output=True, text=True
    )
    if done.returncode != 0:
        notes.append(f"could not compile {package}: {done.stderr.strip() or done.stdout.strip()}")


def probe(ctx: Context) -> str:
    """Run asyncmailer cheaply once; return why its rows cannot run ("" if they can)."""
    row = run_case(PROBE, ctx, "probe")
    result = f"{row.status}: {row.detail}" if row.detail else row.status
    print(f"asyncmailer probe ({PROBE.messages} messages): {result}", file=sys.stderr, flush=True)
    return row.detail if row.status == "not available yet" else ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.rstrip("\n")


def _deb_version(package: str) -> str:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _versions(*names: str) -> dict[str, str | None]:
    """Installed versions in this interpreter, which also runs asyncmailer (None: missing)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tmpdir": tempfile.gettempdir(),  # sender inputs and asyncmailer's journal live here
        "postfix": _deb_version("postfix"),
        "stunnel4": _deb_version("stunnel4"),
        "openssl": ssl.OPENSSL_VERSION,  # the one asyncmailer's TLS runs on
        "packages": _versions("asyncmailer", "aiosmtplib", "uvloop"),
    }


def git_state() -> dict[str, Any]:
    """The commit and the uncommitted files of asyncmailer/ that the runs measure."""
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty_files": _git("status", "--porcelain", "--", "asyncmailer").splitlines(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="asyncmailer benchmark (see bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="leave out the 1,000,000 list")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds in all")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results JSON file")
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only the rows whose progress line contains TEXT (case-insensitive; may be "
        "repeated: any of them), e.g. --only 'implicit TLS'",
    )
    args = parser.parse_args()
    args.quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    return args


def _tls_setup(folder: Path, found: Tools, notes: list[str]) -> tuple[tls.Certificates | None, str]:
    """What the implicit-TLS rows need: a CA and a certificate, or why they cannot run."""
    if found.stunnel is None:
        why = "stunnel not installed (see notes)"
    else:
        try:
            return tls.make_certificates(folder), ""
        except ImportError as err:
            why = f"no trustme to make a certificate ({err}); it is in the dev extras"
    notes.append(f"implicit-TLS rows skipped: {why}")
    return None, why


def _chosen(case: Case, only: list[str]) -> bool:
    described = _describe(case).lower()
    return any(text.lower() in described for text in only)


def run_all(
    args: argparse.Namespace, folder: Path, notes: list[str], stack: ExitStack
) -> tuple[list[Row], dict[str, int]]:
    """Run every case; return the rows and the stdlib message sizes in bytes."""
    found = ensure_tools(notes)
    notes.extend(found.problems)
    if not found.postfix:
        notes.append("so smtp-source rows are skipped and the 0 ms rows use latency_sink")
    env = {k: v for k, v in os.environ.items() if k != "ASYNCMAILER_PASSWORD"}
    compile_package(notes)
    ctx = Context(folder, workload.prepare(folder), found, env, time.monotonic() + args.budget)
    missing = probe(ctx)
    if missing:
        notes.append(f"asyncmailer rows not available yet: {missing}")
    certs, tls_missing = _tls_setup(folder, found, notes)
    ctx = replace(ctx, mailer_missing=missing, certs=certs, tls_missing=tls_missing)
    plan = cases.matrix(quick=args.quick, scale=args.scale)
    if args.only:
        plan = [case for case in plan if _chosen(case, args.only)]
        notes.append(f"only the rows matching {' or '.join(map(repr, args.only))} ran")
    if any(case.processes for case in plan):
        server, pg_missing = postgres.start()
        if server is not None:
            stack.callback(server.stop)
        else:
            notes.append(f"PostgreSQL ledger rows skipped: {pg_missing}")
            print(f"PostgreSQL ledger rows skipped: {pg_missing}", file=sys.stderr, flush=True)
        ctx = replace(ctx, pg=server, pg_missing=pg_missing)
    if args.quick:
        notes.append("quick run: the 1,000,000-recipient memory run is left out")
    names = {case: f"run{number:02d}" for number, case in enumerate(plan, 1)}
    ready: dict[Case, Row] = {}  # compared rows run beside an earlier one
    rows = []
    for number, case in enumerate(plan, 1):
        row = ready.pop(case, None)
        if row is None and _compared(case):
            pair = [c for c in plan if _compared(c) and _ratio_key(c) == _ratio_key(case)]
            ready.update(zip(pair, run_interleaved(pair, names, ctx), strict=True))
            row = ready.pop(case)
        elif row is None and case.dkim is not None:  # unsigned and signed, taking turns
            signing = [c for c in plan if c.dkim is not None]
            ready.update(zip(signing, run_interleaved(signing, names, ctx), strict=True))
            row = ready.pop(case)
        elif row is None:
            row = run_case(case, ctx, names[case])
        _progress(number, len(plan), row)
        rows.append(row)
    return rows, {label: size.nbytes for label, size in ctx.work.sizes.items()}


def main() -> int:
    args = parse_args()
    notes: list[str] = []
    started = time.monotonic()
    git = git_state()  # before the runs: the code they measure
    with tempfile.TemporaryDirectory(prefix="asyncmailer-bench-") as tmp, ExitStack() as stack:
        rows, sizes = run_all(args, Path(tmp), notes, stack)
    lines = report.ratios(rows)
    print()
    print(report.format_table(rows))
    print()
    for line in lines:
        print(line.line())
    costs = report.signing_costs(rows)
    for cost in costs:
        print(cost)
    splits = report.postgresql_cpu(rows)
    for split in splits:
        print(split)
    for note in notes:
        print(f"note: {note}")
    meta = {
        "machine": machine_info(),
        "git": git,
        "quick": args.quick,
        "scale": args.scale,
        "only": args.only or [],
        "duration_s": round(time.monotonic() - started, 1),
        "message_bytes_stdlib": sizes,
        "notes": notes,
        "dkim_signing": costs,
        "postgresql_cpu": splits,
    }
    report.write_json(args.output, meta, rows, lines)
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
