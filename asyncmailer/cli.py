"""The command line: `asyncmailer [send]` runs a campaign, `asyncmailer serve` the local server.

Exit codes (EXIT_CODES below): 0 every recipient accepted; 1 some recipient not accepted; 2 bad
config, input or usage, or an unusable journal; 3 the server could not be reached, refused TLS
or the login, or refused the sender or the session; 4 the last run finished, nothing to send;
70 an internal error (a bug: please report it); 75 interrupted, a limit reached, or the server
kept asking to try later: run the same command again to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
import gc
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .config import (
    DEFAULT_CONFIG,
    PASSWORD_ENV,
    Campaign,
    ServerSettings,
    campaign_identity,
    load_campaign,
)
from .display import printable
from .dryrun import ENVELOPES, EmlTransport
from .errors import (
    InputError,
    JournalError,
    MailerError,
    MissingExtraError,
    NothingToSendError,
    RefusedError,
)
from .journal import Journal, JournalReader, journal_path, probe_lock
from .journal.runs import RunCatalog, RunRecord
from .ledger import JournalState
from .message import MessageTemplate
from .progress import ConsoleObserver
from .report import ReportWriter, format_table
from .results import CampaignReport, Status, plural
from .run.campaign import RunOptions, prepare_message, prepare_personalizer, run_campaign
from .run.recurring import Recurring
from .run.runs import Runs, fingerprint
from .schedule import parse_send_time, zone

if TYPE_CHECKING:
    from .personalize import Personalizer

__all__ = ["EXIT_CODES", "main", "run"]

EXIT_OK, EXIT_NOT_ALL_ACCEPTED, EXIT_USAGE, EXIT_SERVER, EXIT_NOTHING_TO_SEND = 0, 1, 2, 3, 4
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 75
EXIT_CODES = {
    EXIT_OK: "every recipient was accepted",
    EXIT_NOT_ALL_ACCEPTED: "at least one recipient was refused, deferred, unknown or skipped",
    EXIT_USAGE: "bad config, input file or command line, or the journal is locked or cannot "
    "be written; nothing was sent, or (the journal or a long list failing part-way) the run "
    "stopped: fix, then resume",
    EXIT_SERVER: "the server could not be reached, refused TLS or the login, or refused the "
    "sender or the session (a quota, a block): the recipients not sent are left pending",
    EXIT_NOTHING_TO_SEND: "the campaign's last run finished: nothing to send (it says when it was "
    "sent, and whether it changed since); --new-run sends it again",
    EXIT_INTERNAL: "internal error (a bug; run with --debug and report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM), the daily quota or --limit reached, or the "
    "server kept asking to try later; run the same command again to resume",
}
_COMMANDS = ("send", "serve", "status", "runs", "report", "schedule")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _campaign_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "campaign", nargs="?", type=Path, help=f"{help_text} (default: {DEFAULT_CONFIG})"
    )
    parser.add_argument("-c", "--config", type=Path, help="the campaign file, as an option")


def parseargs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*_COMMANDS, "-h", "--help", "--version"):
        first = args[0] if args else ""
        if first and not first.startswith("-") and not Path(first).exists():
            close = difflib.get_close_matches(first, _COMMANDS, n=1, cutoff=0.6)
            if close:
                _Parser(prog="asyncmailer").error(
                    f"unknown command {first!r}; did you mean {close[0]!r}?"
                )
        args.insert(0, "send")
    parser = _Parser(
        prog="asyncmailer",
        description="Send one message with attachments to many recipients over SMTP.",
        epilog="Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"asyncmailer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    send = commands.add_parser(
        "send", help="send a campaign (the default command)", description="Send a campaign."
    )
    _campaign_arguments(send, "the campaign file, JSON or YAML")
    send.add_argument(
        "--report", type=Path, help="also write every result to this .csv or .jsonl file"
    )
    send.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the campaign's journal (default: state_dir of the config)",
    )
    send.add_argument(
        "-q", "--quiet", action="store_true", help="print only the final table and summary"
    )
    send.add_argument(
        "--new-run",
        action="store_true",
        help="begin a new run: send to everyone again (the last run's journal is kept)",
    )
    send.add_argument("--restart", action="store_true", help="the same as --new-run")
    send.add_argument(
        "--continue",
        dest="keep_changes",
        action="store_true",
        help="resume an unfinished run although the campaign changed: the rest get the new content",
    )
    send.add_argument(
        "--retry-refused",
        action="store_true",
        help="send again to recipients recorded as refused (for a refusal that was wrong)",
    )
    send.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="CODE",
        help="with --retry-refused: only those refused with this reply code (550) or "
        "enhanced code (5.7.1); may be repeated",
    )
    send.add_argument(
        "--resend-unknown",
        action="store_true",
        help="also send again to recipients whose outcome is unknown (may duplicate)",
    )
    send.add_argument(
        "--dry-run",
        type=Path,
        metavar="DIR",
        help="write every message that would be sent to DIR as .eml files (envelopes in "
        "DIR/envelopes.jsonl); nothing is sent and the campaign's journal is not touched",
    )
    send.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="stop after N messages (a real run resumes with the rest next time)",
    )
    send.add_argument(
        "--at",
        metavar="TIME",
        help="wait until TIME ('2026-12-07 09:00', ISO 8601, or 'now'), then send",
    )
    send.add_argument(
        "--tz", metavar="ZONE", help="the time zone of --at, e.g. Europe/Berlin (default: local)"
    )
    send.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    def reader(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        """A command that reads a campaign's journal: the campaign, --state-dir, --debug."""
        command = commands.add_parser(name, help=help_text, description=description)
        _campaign_arguments(command, "the campaign file")
        command.add_argument("--state-dir", type=Path, help="folder of the campaign's journal")
        command.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        return command

    reader(
        "status",
        "show a campaign's counts from its journal",
        "Show how many recipients of a campaign are in each state.",
    )
    reader("runs", "list a campaign's runs, with their counts", "List every run of a campaign.")
    report = reader(
        "report",
        "write a run's per-recipient report from its journal",
        "Print a run's summary and write every recipient's result to a report file, from the "
        "run's journal.",
    )
    report.add_argument("--run", metavar="ID", help="the run (default: the latest; see runs)")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="the report file, .csv or .jsonl (default: CAMPAIGN.RUN.report.csv here)",
    )
    report.add_argument(
        "--format",
        choices=("csv", "jsonl", "json"),
        default="csv",
        help="csv or jsonl: the report file's format (default csv); json: also print the "
        "run's summary as JSON",
    )

    schedule = commands.add_parser(
        "schedule",
        help="send campaigns on their schedules, in the foreground, until stopped",
        description="Run each campaign's schedule (its schedule: key): every occurrence is a "
        "run of its own. SIGTERM or Ctrl-C lets the run in flight finish, then exits 75; the "
        "next start resumes it.",
    )
    schedule.add_argument("campaigns", nargs="+", type=Path, metavar="CAMPAIGN")
    schedule.add_argument("--state-dir", type=Path, help="folder for the campaigns' journals")
    schedule.add_argument("-q", "--quiet", action="store_true", help="only the final lines")
    schedule.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    serve = commands.add_parser(
        "serve",
        help="run the local SMTP server (TLS, STARTTLS, AUTH LOGIN) for demos and trials",
        description="Run a local SMTP server on loopback that stores every message it accepts. "
        "With a command after --, serve while it runs, then stop and exit with its status.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    serve.add_argument("--ssl-port", type=int, default=8465, help="implicit TLS port (8465)")
    serve.add_argument("--starttls-port", type=int, default=8587, help="STARTTLS port (8587)")
    serve.add_argument(
        "--dir", type=Path, default=Path(".demo"), help="CA file and mail folder (.demo)"
    )
    serve.add_argument("--user", help="the account's login (default: no AUTH required)")
    serve.add_argument(
        "--password-file",
        type=Path,
        help=f"file with the account's password (or set {PASSWORD_ENV})",
    )
    serve.add_argument("command_line", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    serve.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args(args)
    if parsed.command in ("send", "status", "runs", "report"):
        if parsed.campaign is not None and parsed.config is not None:
            parser.error("name the campaign once: as an argument or with --config, not both")
        parsed.config = parsed.campaign or parsed.config or DEFAULT_CONFIG
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code. Never raises for bad input."""
    args = parseargs(argv)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.command == "serve":
                from .server import serve_command

                return runner.run(serve_command(args))
            if args.command == "status":
                return runner.run(status_command(args))
            if args.command == "runs":
                return runner.run(runs_command(args))
            if args.command == "schedule":
                return runner.run(schedule_command(args))
            if args.command == "report":
                return runner.run(report_command(args))
            return runner.run(send_command(args))
    except KeyboardInterrupt:
        print("asyncmailer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InputError, MissingExtraError) as err:
        print(f"asyncmailer: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NothingToSendError as err:
        print(f"asyncmailer: {err}", file=sys.stderr)
        return EXIT_NOTHING_TO_SEND
    except MailerError as err:
        print(f"asyncmailer: {err}", file=sys.stderr)
        return EXIT_SERVER
    except Exception as err:
        if args.debug:
            raise
        print(
            f"asyncmailer: internal error: {type(err).__name__}: {err} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


TABLE_ROWS = 100  # a longer result list is summarised; the report file has every row
STOP_TIMEOUT = 30.0  # seconds transactions in flight get to finish after Ctrl-C or SIGTERM


async def _campaign(args: argparse.Namespace, path: Path | None = None) -> Campaign:
    """The campaign of `path` (else --config/the argument), with --state-dir applied."""
    campaign = await load_campaign(path or args.config)
    if args.state_dir is not None:
        campaign = dataclasses.replace(campaign, state_dir=args.state_dir)
    return campaign


async def send_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    at = _send_time(args)
    campaign = await _campaign(args)
    # What the message is built from, as it is built (the run records it).
    built = await asyncio.to_thread(fingerprint, campaign)
    # Read and check the body, attachments and templates before anything is sent or written.
    with await prepare_message(campaign) as template:
        return await _send(args, campaign, template, out, built, at)


async def _send(
    args: argparse.Namespace,
    campaign: Campaign,
    template: MessageTemplate,
    out: TextIO,
    built: dict[str, str],
    at: datetime | None = None,
) -> int:
    personalizer = await prepare_personalizer(campaign)
    if args.dry_run is not None:
        return await _dry_run(args, campaign, template, personalizer, out)
    # A second run of the same campaign is refused before it prints or truncates anything
    # (the run lock and the journal's own lock still guard the run itself).
    await asyncio.to_thread(probe_lock, journal_path(campaign.state_dir, campaign.id))
    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    async with Runs(campaign) as runs:
        if args.code and not args.retry_refused:
            raise InputError("--code goes with --retry-refused", field="--code")
        for code in args.code:
            if not re.fullmatch(r"[245]\d\d|[245]\.\d{1,3}\.\d{1,3}", code):
                raise InputError(
                    f"expected a reply code like 550 or 5.7.1, got {code[:20]!r}", field="--code"
                )
        record = await runs.begin(
            new_run=args.new_run or args.restart,
            keep_changes=args.keep_changes,
            reopen=args.resend_unknown or args.retry_refused,
            current=built,
        )
        # Waiting for --at comes after the check: a campaign sent already says so at once.
        if at is not None and not await _wait_until(at, quiet=args.quiet):
            print("asyncmailer: stopped before the send time; nothing was sent", file=sys.stderr)
            return EXIT_INTERRUPTED
        earlier = runs.runs[:-1]
        if (args.new_run or args.restart) and earlier:
            kept = runs.catalog.journal_of(earlier[-1])
            print(f"asyncmailer: the previous run's journal is kept as {kept}", file=sys.stderr)
        return await _run_once(args, campaign, template, personalizer, runs, record, out)


async def _run_once(
    args: argparse.Namespace,
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    runs: Runs,
    record: RunRecord,
    out: TextIO,
    signals: _SignalStop | None = None,
) -> int:
    """One run of the campaign with its progress, report file and final table, recorded in
    the campaign's runs as it ends (SIGINT and SIGTERM stop it: `signals`, when a scheduler
    already watches them). Returns the exit code."""
    writer = ReportWriter(args.report) if args.report else None
    target = plural(len(campaign.recipients), "recipient")
    if campaign.recipients_file is not None:
        target = f"the list {campaign.recipients_file}" + (
            f" and {target}" if campaign.recipients else ""
        )
    if not args.quiet:
        print(f"asyncmailer: sending to {target} via {_relays(campaign)}", file=sys.stderr)
        if campaign.list_unsubscribe is not None and campaign.list_unsubscribe.personal:
            print(
                "asyncmailer: one recipient per message: each carries its own unsubscribe link",
                file=sys.stderr,
            )
    full = ReportWriter(_partial(args.report)) if args.report else None
    observer = ConsoleObserver(
        writer=writer,
        full_report=full,
        per_recipient=campaign.recipients_file is None,
        quiet=args.quiet,
    )
    quota_used = 0
    if campaign.daily_quota:
        quota_used = await runs.sent_today(datetime.now().strftime("%Y-%m-%d"))
    options = RunOptions(
        resend_unknown=args.resend_unknown,
        limit=args.limit,
        retry_refused=args.retry_refused,
        retry_codes=tuple(args.code),
        quota_used=quota_used,
    )
    try:
        with signals.covering(options.stop) if signals else _SignalStop(options.stop):
            async with contextlib.AsyncExitStack() as files:
                if writer is not None:
                    await files.enter_async_context(writer)
                if full is not None:
                    await files.enter_async_context(_replacing(full, args.report))
                report = await run_campaign(
                    campaign,
                    template=template,
                    personalizer=personalizer,
                    observer=observer,
                    options=options,
                )
    except asyncio.CancelledError:
        observer.finish()
        print(
            "asyncmailer: stopped at once; the journal knows where every recipient stands. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    observer.finish()
    await runs.end(record, stopped=options.stop.is_set() or report.fatal is not None)

    _print_outcome(report, args, out)
    if report.fatal is not None:
        print(f"asyncmailer: {report.fatal}", file=sys.stderr)
        if isinstance(report.fatal, RefusedError):
            cause = (
                "the message is made smaller"
                if report.fatal.scope == "message"
                else "a quota resets, or the sender is allowed"
            )
            print(
                "asyncmailer: the recipients not sent yet are left as they were: once the "
                f"cause is gone ({cause}), run the same command again to send them",
                file=sys.stderr,
            )
            if report.fatal.temporary:
                return EXIT_INTERRUPTED
        return EXIT_SERVER
    if report.quota_reached:
        quota = (
            f"daily quota of {campaign.daily_quota} recipients"
            if campaign.daily_quota
            else "daily quota of every relay"
        )
        print(
            f"asyncmailer: {quota} reached; run the same command again tomorrow to go on",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if report.limit_reached:
        print(
            f"asyncmailer: stopped after {plural(args.limit, 'message')} (--limit); run the same "
            "command again to send the rest",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if options.stop.is_set():
        print("asyncmailer: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if report.all_accepted else EXIT_NOT_ALL_ACCEPTED


def _send_time(args: argparse.Namespace) -> datetime | None:
    """The --at time, or None to send now.

    :raises InputError: not a time, an unknown --tz, or a time that has passed.
    """
    if args.at is None:
        if args.tz is not None:
            raise InputError("--tz goes with --at", field="--tz")
        return None
    try:
        return parse_send_time(args.at, zone(args.tz), datetime.now(UTC))
    except ValueError as err:
        raise InputError(str(err), field="--at") from None


WAIT_TELL_EVERY = 60.0  # seconds between "time left" lines while waiting for --at


async def _wait_until(when: datetime, *, quiet: bool) -> bool:
    """Wait for `when`, saying how long is left; False when SIGINT or SIGTERM came first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        shown = when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        while (left := (when - datetime.now(UTC)).total_seconds()) > 0:
            if not quiet:
                print(
                    f"asyncmailer: sending at {shown}, in {_duration(left)}; "
                    "Ctrl-C or SIGTERM cancels",
                    file=sys.stderr,
                    flush=True,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, WAIT_TELL_EVERY))
            if stop.is_set():
                return False
        return True
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _duration(seconds: float) -> str:
    """``2 d 3 h``, ``5 min 3 s``, ``42 s``."""
    whole = int(seconds + 0.999)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


PREVIEW_LINES = 40  # of the first message a dry run wrote


async def _dry_run(
    args: argparse.Namespace,
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    out: TextIO,
) -> int:
    """`send --dry-run DIR`: the whole run, through a transport that writes .eml files and a
    scratch journal that is deleted afterwards; the campaign's own journal is not opened."""
    for flag, given in (
        ("--report", args.report),
        ("--new-run", args.new_run),
        ("--restart", args.restart),
        ("--continue", args.keep_changes),
        ("--resend-unknown", args.resend_unknown),
        ("--retry-refused", args.retry_refused),
    ):
        if given:
            raise InputError(
                f"{flag} has no meaning with --dry-run: a dry run sends nothing and keeps no "
                "journal",
                field="--dry-run",
            )
    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    # Nothing goes to a server: no pace to keep, no quota to spend.
    campaign = dataclasses.replace(campaign, rate=None, daily_quota=0)
    transport = EmlTransport(args.dry_run)
    await transport.open()
    observer = ConsoleObserver(per_recipient=campaign.recipients_file is None, quiet=args.quiet)
    options = RunOptions(limit=args.limit)
    with tempfile.TemporaryDirectory(prefix="asyncmailer-dry-run-") as scratch:
        async with await Journal.open(
            Path(scratch) / "dry-run.journal.sqlite", msgid_domain=campaign.sender.domain
        ) as ledger:
            with _SignalStop(options.stop):
                report = await run_campaign(
                    campaign,
                    template=template,
                    personalizer=personalizer,
                    observer=observer,
                    options=options,
                    ledger=ledger,
                    transport=transport,
                )
    observer.finish()
    if report.problems:
        print(format_table(report.problems[:TABLE_ROWS]), file=out)
    written = report.counts[Status.ACCEPTED]
    print(
        f"dry run: {plural(transport.count, 'message')} to {plural(written, 'recipient')} "
        f"written to {args.dry_run}/ (envelopes: {args.dry_run / ENVELOPES}); nothing was sent "
        "and the campaign's journal was not touched",
        file=out,
    )
    if report.limit_reached:
        print(f"stopped after {plural(args.limit, 'message')} (--limit)", file=out)
    if transport.first is not None and not args.quiet:
        first = transport.first
        text = (await asyncio.to_thread(first.read_bytes)).decode("ascii", "replace")
        lines = text.splitlines()
        print(f"--- {first} ---", file=out)
        for line in lines[:PREVIEW_LINES]:
            print(printable(line), file=out)
        if len(lines) > PREVIEW_LINES:
            print(f"--- ({plural(len(lines) - PREVIEW_LINES, 'more line')}) ---", file=out)
    if options.stop.is_set() and not report.limit_reached:
        return EXIT_INTERRUPTED
    return EXIT_OK if not report.problems else EXIT_NOT_ALL_ACCEPTED


def _print_outcome(report: CampaignReport, args: argparse.Namespace, out: TextIO) -> None:
    if report.complete and report.total <= TABLE_ROWS:
        print(format_table(report.results), file=out)
    elif report.problems:
        shown = report.problems[:TABLE_ROWS]
        print(format_table(shown), file=out)
        hidden = report.total - report.counts[Status.ACCEPTED] - report.not_attempted - len(shown)
        if hidden > 0:
            print(f"... and {plural(hidden, 'more recipient')} not accepted", file=out)
    print(report.summary(), file=out)
    if report.counts[Status.UNKNOWN]:
        print(
            f"{plural(report.counts[Status.UNKNOWN], 'recipient')} unknown: the connection or "
            "the run stopped after the message was sent and before the server answered; they "
            "are not sent again unless you run with --resend-unknown",
            file=out,
        )
    if args.report:
        print(f"report written to {args.report}", file=out)
    elif not report.complete:
        print("every recipient's result: run again with --report FILE.csv", file=out)


def _relays(campaign: Campaign) -> str:
    """``127.0.0.1:465 (ssl as me@example.com)``; with several relays, each by its name."""

    def one(server: ServerSettings) -> str:
        login = f" as {server.username}" if server.username else " without AUTH"
        return f"({server.security.value}{login})"

    if len(campaign.relays) <= 1:
        return f"{campaign.server.address} {one(campaign.server)}"
    return ", ".join(
        f"{relay.name} ({relay.server.address}, {one(relay.server)[1:-1]})"
        for relay in campaign.relays
    )


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextlib.asynccontextmanager
async def _replacing(full: ReportWriter, path: Path) -> AsyncIterator[ReportWriter]:
    """The final report: every recipient of the campaign, this run's and earlier runs', as the
    run reads the journal at its end. It replaces the report written as the run went only
    when the run returns (a temporary file, then rename); otherwise it is removed."""
    try:
        async with full:
            yield full
    except BaseException:
        await asyncio.to_thread(full.path.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(os.replace, full.path, path)


class _SignalStop:
    """First SIGINT/SIGTERM: set every event it covers (take no new work; transactions in
    flight finish, at most STOP_TIMEOUT seconds). Second one, or the timeout: stop at once."""

    def __init__(self, *stops: asyncio.Event) -> None:
        self.stops = list(stops)
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> _SignalStop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(signum, self._signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.remove_signal_handler(signum)
        if self.timer is not None:  # stopped in time: the hard stop must not fire later
            self.timer.cancel()

    @contextlib.contextmanager
    def covering(self, stop: asyncio.Event) -> Iterator[None]:
        """Also set `stop` on a signal, while inside (set at once if one came already)."""
        self.stops.append(stop)
        if self.count:
            stop.set()
        try:
            yield
        finally:
            self.stops.remove(stop)

    def _signal(self) -> None:
        self.count += 1
        assert self.task is not None
        if self.count == 1:
            for stop in self.stops:
                stop.set()
            print(
                "\nasyncmailer: stopping: finishing the transactions in flight "
                f"(at most {STOP_TIMEOUT:.0f} s); press Ctrl-C again to stop at once",
                file=sys.stderr,
                flush=True,
            )
            self.timer = self.loop.call_later(STOP_TIMEOUT, self.task.cancel)
        else:
            self.task.cancel()


STATE_WORDS = {
    JournalState.ACCEPTED: "accepted",
    JournalState.REFUSED: "refused",
    JournalState.DEFERRED: "deferred (to retry)",
    JournalState.UNKNOWN: "unknown (not resent unless --resend-unknown)",
    JournalState.SKIPPED: "skipped",
    JournalState.PENDING: "pending (not attempted yet)",
    JournalState.INFLIGHT: "in flight (claimed by a run)",
    JournalState.DATA: "past DATA, awaiting the reply",
}


async def _identity(args: argparse.Namespace) -> tuple[Path, str]:
    state_dir, campaign_id = await campaign_identity(args.config)
    return (args.state_dir or state_dir), campaign_id


async def schedule_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer schedule`: the campaigns' recurring runs, until stopped (exit 75)."""
    campaigns = [await _campaign(args, path) for path in args.campaigns]
    run_args = argparse.Namespace(
        report=None,
        quiet=args.quiet,
        limit=None,
        resend_unknown=False,
        retry_refused=False,
        code=[],
    )
    stop = asyncio.Event()

    def tell(line: str) -> None:
        print(f"asyncmailer schedule: {line}", file=sys.stderr, flush=True)

    with _SignalStop(stop) as signals:

        async def run_once(campaign: Campaign, runs: Runs, record: RunRecord) -> int:
            with await prepare_message(campaign) as template:
                personalizer = await prepare_personalizer(campaign)
                return await _run_once(
                    run_args, campaign, template, personalizer, runs, record, out, signals
                )

        async def reload(campaign: Campaign) -> Campaign:
            return await _campaign(args, campaign.source)  # as it is now: edits count

        try:
            code = await Recurring(
                campaigns, run_once=run_once, stop=stop, tell=tell, reload=reload
            ).run()
        except asyncio.CancelledError:
            tell("stopped at once; the journal knows where every recipient stands")
            return EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        tell("stopped; the next start resumes the run in flight")
    return code


async def status_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer status`: a campaign's counts from its journal (the current run's)."""
    state_dir, campaign_id = await _identity(args)
    path = journal_path(state_dir, campaign_id)
    if not await asyncio.to_thread(path.exists):
        print(f"campaign {args.config} has not run yet (no journal at {path})", file=out)
        return EXIT_OK
    counts = await JournalReader(path).counts()
    print(f"campaign {args.config}: journal {path}", file=out)
    for state, word in STATE_WORDS.items():
        if counts[state]:
            print(f"  {counts[state]:>9,}  {word}", file=out)
    print(f"  {sum(counts.values()):>9,}  recipients in all", file=out)
    left = sum(
        counts[s] for s in (JournalState.PENDING, JournalState.DEFERRED, JournalState.INFLIGHT)
    )
    try:
        await asyncio.to_thread(probe_lock, path)
    except JournalError:
        print("a run of this campaign is in progress", file=out)
    else:
        if left:
            print(f"{plural(left, 'recipient')} still to send: run the campaign again", file=out)
    return EXIT_OK


_RUN_COLUMNS = (JournalState.ACCEPTED, JournalState.REFUSED, JournalState.DEFERRED)


async def runs_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer runs`: every run of a campaign, oldest first, with its counts."""
    state_dir, campaign_id = await _identity(args)
    catalog = RunCatalog(state_dir, campaign_id)
    _, records = await asyncio.to_thread(catalog.load)
    if not records:
        print(f"campaign {campaign_id} has no runs yet", file=out)
        return EXIT_OK
    rows = []
    for record in records:
        counts = record.counts
        if counts is None:  # still going, or stopped before it could say: read its journal
            path = catalog.journal_of(record)
            counts = {}
            if await asyncio.to_thread(path.exists):  # none yet: stopped before it began
                counts = {str(k): v for k, v in (await JournalReader(path).counts()).items()}
        left = sum(
            counts.get(str(state), 0)
            for state in (JournalState.PENDING, JournalState.INFLIGHT, JournalState.DATA)
        )
        rows.append(
            (
                record.id,
                record.scheduled or "-",
                record.started,
                record.ended or "unfinished",
                *(f"{counts.get(str(s), 0):,}" for s in _RUN_COLUMNS),
                f"{counts.get(str(JournalState.UNKNOWN), 0):,}",
                f"{left:,}",
            )
        )
    header: tuple[str, ...] = ("RUN", "SCHEDULED", "STARTED", "ENDED", "ACCEPTED", "REFUSED")
    header += ("DEFERRED", "UNKNOWN", "LEFT")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    return EXIT_OK


async def report_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer report`: a run's summary (text, or JSON with --format json), and every
    recipient's result from its journal in a report file (.csv or .jsonl)."""
    state_dir, campaign_id = await _identity(args)
    catalog = RunCatalog(state_dir, campaign_id)
    _, records = await asyncio.to_thread(catalog.load)
    if args.run is not None:
        found = [r for r in records if r.id == args.run]
        if not found:
            known = ", ".join(r.id for r in records[-5:]) or "none"
            raise InputError(f"no run {args.run!r} (the latest: {known})", field="--run")
        record: RunRecord | None = found[0]
    else:
        record = records[-1] if records else None
    journal = catalog.journal_of(record) if record is not None else catalog.journal
    run_id = record.id if record is not None else "current"
    suffix = "jsonl" if args.format == "jsonl" else "csv"
    target = args.output or Path(f"{campaign_id}.{run_id}.report.{suffix}")
    if not await asyncio.to_thread(journal.exists):
        raise JournalError("no journal: this campaign has not run yet", path=journal)
    summary = CampaignReport(keep=0)
    async with ReportWriter(target) as writer:
        async for page in JournalReader(journal).pages():
            summary.add(page)
            await writer.write(page)
    if args.format == "json":
        document = {
            "campaign": campaign_id,
            "run": run_id,
            "started": record.started if record else None,
            "ended": record.ended if record else None,
            "total": summary.total,
            "counts": {status.value: summary.counts[status] for status in Status},
            "report": str(target),
        }
        print(json.dumps(document, indent=1), file=out)
    else:
        print(f"campaign {campaign_id}, run {run_id}: {summary.summary()}", file=out)
        print(f"report written to {target}", file=out)
    return EXIT_OK


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a default dependency except on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run() -> None:
    """Console-script entry point."""
    # Everything imported so far lives as long as the process: out of the garbage collector's
    # sight, it is not walked by every full collection nor by the last one at exit
    # (docs/design.md: start-up and exit).
    gc.freeze()
    sys.exit(main())
