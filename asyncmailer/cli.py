"""The command line: `asyncmailer [send]` runs a campaign, `asyncmailer serve` the local server,
`asyncmailer suppress` keeps the shared suppression store.

Exit codes (EXIT_CODES below): 0 every recipient accepted (or suppressed); 1 some recipient not
accepted; 2 bad
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
import functools
import gc
import json
import os
import re
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from . import __version__
from .config import (
    DEFAULT_CONFIG,
    PASSWORD_ENV,
    Campaign,
    ServerSettings,
    campaign_identity,
    campaign_ledger,
    load_campaign,
)
from .display import printable, shorten
from .dryrun import ENVELOPES, EmlTransport
from .errors import (
    InputError,
    JournalError,
    LeaseLostError,
    MailerError,
    MissingExtraError,
    NothingToSendError,
    RefusedError,
)
from .journal import Journal, JournalReader, journal_path, probe_lock
from .journal.runs import RunCatalog, RunRecord
from .journal.suppressions import STORE_NAME, Entry, SuppressionStore, campaign_suppression
from .ledger import LEASE, JournalState
from .ledger_url import LEDGER_ENV, LedgerUrl
from .message import MessageTemplate
from .preview import preview
from .processes import can_fork, run_forked
from .progress import ConsoleObserver
from .report import ReportWriter, format_table
from .results import CampaignReport, Status, plural
from .run.campaign import (
    RunOptions,
    personal_headers,
    prepare_message,
    prepare_personalizer,
    run_campaign,
)
from .run.recurring import Recurring
from .run.runs import RunBook, Runs, fingerprint
from .schedule import parse_send_time, zone
from .summary import summary_document, summary_lines, summary_path, write_summary
from .suppression import Reason, SuppressionStorage, entry_key, parse_suppression
from .textfiles import read_text
from .unsubscribe import verify

if TYPE_CHECKING:
    from .personalize import Personalizer
    from .pg.runs import PgRuns

__all__ = ["EXIT_CODES", "main", "run"]

EXIT_OK, EXIT_NOT_ALL_ACCEPTED, EXIT_USAGE, EXIT_SERVER, EXIT_NOTHING_TO_SEND = 0, 1, 2, 3, 4
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 75
EXIT_CODES = {
    EXIT_OK: "every recipient was accepted (or is suppressed)",
    EXIT_NOT_ALL_ACCEPTED: "at least one recipient was refused, deferred, unknown, skipped or "
    "not attempted (suppress: an address to remove was not in the store)",
    EXIT_USAGE: "bad config, input file or command line, or the journal is locked or cannot "
    "be written; nothing was sent, or (the journal or a long list failing part-way) the run "
    "stopped: fix, then resume",
    EXIT_SERVER: "the server could not be reached, refused TLS or the login, or refused the "
    "sender or the session (a quota, a block): the recipients not sent are left pending",
    EXIT_NOTHING_TO_SEND: "the campaign's last run finished: nothing to send (it says when it was "
    "sent, and whether it changed since); --new-run sends it again",
    EXIT_INTERNAL: "internal error (a bug; run with --debug and report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM), the daily quota or --limit reached, or the "
    "server kept asking to try later; run the same command again (without --new-run) to resume",
}
_COMMANDS = (
    "send",
    "check",
    "serve",
    "status",
    "runs",
    "report",
    "schedule",
    "suppress",
    "worker",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _unknown_arguments(parser: argparse.ArgumentParser, extra: Sequence[str]) -> None:
    """Exit 2 for arguments `parser` (a command's) does not take, naming the closest option
    of that command for a mistyped one (`--limt`: did you mean `--limit`?)."""
    options = [o for action in parser._actions for o in action.option_strings]
    for argument in extra:
        if argument.startswith("-"):
            close = difflib.get_close_matches(argument.partition("=")[0], options, n=1)
            if close:
                parser.error(f"unknown option {argument!r}; did you mean {close[0]!r}?")
    parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds from 0.5 to 3600, got {text!r}")
    return value


def _campaign_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "campaign", nargs="?", type=Path, help=f"{help_text} (default: {DEFAULT_CONFIG})"
    )
    parser.add_argument("-c", "--config", type=Path, help="the campaign file, as an option")


def _lease_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lease",
        type=_seconds,
        default=LEASE,
        metavar="SECONDS",
        help="on a shared ledger: how long a worker's hold on what it claimed lasts without a "
        "heartbeat; a worker that died is noticed after this (default 30)",
    )


def _suppress_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    """`asyncmailer suppress add|remove|list|import`."""
    suppress = commands.add_parser(
        "suppress",
        help="add, remove, list or import entries of the shared suppression store",
        description="Keep the suppression store shared by the campaigns of a state folder "
        f"(<state_dir>/{STORE_NAME}), or of a shared ledger (a campaign with ledger:): "
        "addresses and @domains that no campaign sends to, unless it says "
        "shared_suppression: false.",
    )
    where = _Parser(add_help=False)
    where.add_argument("--state-dir", type=Path, help="the folder of the store")
    where.add_argument(
        "-c",
        "--config",
        type=Path,
        help="a campaign file: the store of its state_dir, or of its shared ledger",
    )
    where.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    verbs = suppress.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    reasons = [r.value for r in Reason]
    add = verbs.add_parser(
        "add", parents=[where], help="add addresses or @domains", description="Add entries."
    )
    add.add_argument("entries", nargs="*", metavar="ADDRESS", help="user@example.org or @domain")
    add.add_argument(
        "--reason", choices=reasons, default=Reason.MANUAL.value, help="why (default manual)"
    )
    add.add_argument("--note", default="", help="a note kept with each entry")
    add.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a one-click unsubscribe token of the campaign (--config): its address is "
        "added as an unsubscribe, once the token is verified with the campaign's key",
    )
    remove = verbs.add_parser(
        "remove", parents=[where], help="remove entries", description="Remove entries."
    )
    remove.add_argument("entries", nargs="+", metavar="ADDRESS", help="user@example.org or @domain")
    listing = verbs.add_parser(
        "list", parents=[where], help="list the entries", description="List every entry."
    )
    listing.add_argument("--reason", choices=reasons, help="only the entries of this reason")
    imported = verbs.add_parser(
        "import",
        parents=[where],
        help="add every entry of a file",
        description="Add every address or @domain of FILE (UTF-8, one a line, # comments), "
        "all or none: a bad line names its file and line and nothing is added.",
    )
    imported.add_argument("file", type=Path, metavar="FILE")
    imported.add_argument(
        "--reason", choices=reasons, default=Reason.IMPORT.value, help="why (default import)"
    )
    imported.add_argument("--note", default="", help="a note kept with each entry")


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

    check = commands.add_parser(
        "check",
        help="check a campaign before sending it: every row, the headers, DNS, the server",
        description="Render every row without sending, and give a bulk sender's verdict: "
        "List-Unsubscribe with one-click, TLS, DKIM, the From domain's SPF, DKIM and DMARC "
        "records, the message size against the server's SIZE, the recipients. Exit 0: "
        "nothing blocks (warnings may remain); 1: an error blocks; 2: the campaign cannot "
        "be read.",
    )
    _campaign_arguments(check, "the campaign file, JSON or YAML")
    check.add_argument("--state-dir", type=Path, help="folder of the campaign's state")
    check.add_argument(
        "--no-connect", action="store_true", help="do not connect to the server (no SIZE check)"
    )
    check.add_argument("--no-dns", action="store_true", help="do not look up DNS records")
    check.add_argument(
        "--dns-server",
        metavar="ADDRESS[:PORT]",
        help="ask this nameserver instead of the system's (127.0.0.1:5353, [::1]:5353); for "
        "tests, or to check what one resolver sees",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="leave out the ok findings")
    check.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    worker = commands.add_parser(
        "worker",
        help="send a campaign as one of any number of workers sharing a PostgreSQL ledger",
        description="Send a campaign whose ledger is a shared PostgreSQL database (the "
        "ledger: key or ASYNCMAILER_LEDGER): start the same command on as many hosts as you "
        "like; they share the run's recipients, each sent once. SIGTERM or Ctrl-C lets the "
        "transactions in flight finish, then exits 75; a worker started again joins the run.",
    )
    _campaign_arguments(worker, "the campaign file, JSON or YAML")
    worker.add_argument(
        "--processes",
        type=_positive,
        default=1,
        metavar="N",
        help="start N workers on this host, one process each (default 1)",
    )
    _lease_argument(worker)
    worker.add_argument(
        "--report", type=Path, help="also write every result to this .csv or .jsonl file"
    )
    worker.add_argument(
        "--resend-unknown",
        action="store_true",
        help="also send again to recipients whose outcome is unknown (may duplicate)",
    )
    worker.add_argument("-q", "--quiet", action="store_true", help="only the final table")
    worker.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(
        state_dir=None,
        new_run=False,
        restart=False,
        keep_changes=False,
        retry_refused=False,
        code=[],
        limit=None,
        dry_run=None,
        at=None,
        tz=None,
    )
    send.set_defaults(lease=LEASE)

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

    _suppress_parser(commands)

    schedule = commands.add_parser(
        "schedule",
        help="send campaigns on their schedules, in the foreground, until stopped",
        description="Run each campaign's schedule (its schedule: key): every occurrence is a "
        "run of its own. SIGTERM or Ctrl-C lets the run in flight finish, then exits 75; the "
        "next start resumes it.",
    )
    schedule.add_argument("campaigns", nargs="+", type=Path, metavar="CAMPAIGN")
    schedule.add_argument("--state-dir", type=Path, help="folder for the campaigns' journals")
    _lease_argument(schedule)
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
    parsed, extra = parser.parse_known_args(args)
    if extra:
        _unknown_arguments(commands.choices[parsed.command], extra)
    if parsed.command in ("send", "check", "status", "runs", "report", "worker"):
        if parsed.campaign is not None and parsed.config is not None:
            parser.error("name the campaign once: as an argument or with --config, not both")
        parsed.config = parsed.campaign or parsed.config or DEFAULT_CONFIG
    return parsed


class _Output:
    """Standard output whose reader may go away (`asyncmailer send ... | head -1`): from then
    on the rest of the output is dropped and the command goes on, so a send is not cut
    short, nor ended as an internal error, by whoever reads what it prints."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.gone = True
        # What is still buffered would fail again when the interpreter flushes at exit.
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code. Never raises for bad input."""
    args = parseargs(argv)
    if args.command == "worker" and args.processes > 1:
        return _processes(args)
    stdout = sys.stdout
    sys.stdout = cast("TextIO", _Output(stdout))
    try:
        return _run(args, _command)
    finally:
        sys.stdout = stdout


def _command(args: argparse.Namespace) -> Coroutine[None, None, int]:
    """The coroutine that runs the parsed command (its output to stdout as it is now)."""
    if args.command == "serve":
        from .server import serve_command

        return serve_command(args)
    commands = {
        "status": status_command,
        "runs": runs_command,
        "schedule": schedule_command,
        "report": report_command,
        "suppress": suppress_command,
        "check": check_command,
        "worker": worker_command,
    }
    return commands.get(args.command, send_command)(args, out=sys.stdout)


def _run(
    args: argparse.Namespace, command: Callable[[argparse.Namespace], Coroutine[None, None, int]]
) -> int:
    """Run `command(args)` on an event loop of its own: its exit code, or the one its error
    means (printed as one line; a traceback only with --debug)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(command(args))
    except KeyboardInterrupt:
        print("asyncmailer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LeaseLostError as err:
        print(f"asyncmailer: {err}", file=sys.stderr)
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


async def check_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer check`: the verdict, errors apart from warnings; exit 0 when nothing
    blocks, 1 when an error does."""
    from .check import CheckOptions, Severity, check_campaign
    from .dns_records import DnsRecords, Nameserver

    nameserver = None
    if args.dns_server is not None:
        if args.no_dns:
            raise InputError("--dns-server has no meaning with --no-dns", field="--dns-server")
        try:
            nameserver = Nameserver.parse(args.dns_server)
        except ValueError as err:
            raise InputError(str(err), field="--dns-server") from None
    campaign = await _campaign(args)
    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    options = CheckOptions(
        dns=None if args.no_dns else DnsRecords(nameserver),
        connect=not args.no_connect,
        suppressed=(await campaign_suppression(campaign)).matches,
    )
    verdict = await check_campaign(campaign, options)
    print(f"check of {args.config}: {plural(verdict.recipients, 'recipient')}", file=out)
    shown = (Severity.ERROR, Severity.WARNING) + (() if args.quiet else (Severity.OK,))
    titles = {Severity.ERROR: "errors", Severity.WARNING: "warnings", Severity.OK: "ok"}
    for severity in shown:
        found = verdict.of(severity)
        if found:
            print(f"{titles[severity]} ({len(found):,}):", file=out)
            for finding in found:
                print(f"  {finding}", file=out)
    errors, warnings = verdict.count(Severity.ERROR), verdict.count(Severity.WARNING)
    counts = f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"
    if verdict.ready:
        print(f"ready to send: {counts}", file=out)
        return EXIT_OK
    print(f"not ready to send: {counts}", file=out)
    return EXIT_NOT_ALL_ACCEPTED


async def send_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    at = _send_time(args)
    campaign = await _campaign(args)
    # What the message is built from, as it is built (the run records it).
    built = await asyncio.to_thread(
        functools.partial(fingerprint, campaign, content=campaign.ledger is not None)
    )
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
    # A bad suppression file line, or an unusable store, is an error before a run is recorded
    # (the run reads both again as it starts: after --at, the store may have grown).
    await campaign_suppression(campaign)
    if args.dry_run is not None:
        return await _dry_run(args, campaign, template, personalizer, out)
    if campaign.ledger is not None:
        return await _shared_send(args, campaign, template, personalizer, out, built, at)
    # A second run of the same campaign is refused before it prints or truncates anything
    # (the run lock and the journal's own lock still guard the run itself).
    await asyncio.to_thread(probe_lock, journal_path(campaign.state_dir, campaign.id))
    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    async with Runs(campaign) as runs:
        await asyncio.to_thread(_check_run_flags, args)
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


def _own_headers(campaign: Campaign) -> str:
    """What each recipient's message carries of its own, that makes it one recipient per
    message ("" when there is none)."""
    own = []
    if campaign.list_unsubscribe is not None and campaign.list_unsubscribe.personal:
        own.append("unsubscribe link")
    names = [name for name, _ in personal_headers(campaign)]
    if names:
        own.append(f"{', '.join(names)} {'header' if len(names) == 1 else 'headers'}")
    return " and ".join(own)


def _check_run_flags(args: argparse.Namespace) -> None:
    """What a run's flags ask for is possible, checked before a run is begun or a journal set
    aside (a report that cannot be written would otherwise fail once the run is recorded).

    :raises InputError: --code without --retry-refused, or not a reply code; a --report
        whose folder is missing or not writable, or that is a folder.
    """
    report = getattr(args, "report", None)
    if report is not None:
        folder = report.parent
        if report.is_dir():
            raise InputError("cannot write the report: it is a folder", path=report)
        if not folder.is_dir():
            raise InputError(f"cannot write the report: no folder {folder}", path=report)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"cannot write the report: {folder} is not writable", path=report)
    if args.code and not args.retry_refused:
        raise InputError("--code goes with --retry-refused", field="--code")
    for code in args.code:
        if not re.fullmatch(r"[245]\d\d|[245]\.\d{1,3}\.\d{1,3}", code):
            raise InputError(
                f"expected a reply code like 550 or 5.7.1, got {code[:20]!r}", field="--code"
            )


async def worker_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer worker`: one worker of a campaign whose ledger is shared."""
    campaign = await _worker_campaign(args)
    built = await asyncio.to_thread(functools.partial(fingerprint, campaign, content=True))
    with await prepare_message(campaign) as template:
        personalizer = await prepare_personalizer(campaign)
        return await _shared_send(args, campaign, template, personalizer, out, built)


async def _worker_campaign(args: argparse.Namespace) -> Campaign:
    """:raises InputError: the campaign cannot be read, or has no shared ledger."""
    campaign = await _campaign(args)
    if campaign.ledger is None:
        raise InputError(
            f"a worker needs a shared ledger: set ledger: postgresql://... in the campaign, or "
            f"{LEDGER_ENV}",
            path=campaign.source,
            field="ledger",
        )
    return campaign


async def _workers_ready(args: argparse.Namespace) -> int:
    """Before `--processes N` forks: the campaign checked once (an error is one line, not N),
    and what a worker imports imported here, once for all of them."""
    await _worker_campaign(args)
    from .run import shared_runs  # noqa: F401  (the ledger's driver with it)

    return EXIT_OK


def _processes(args: argparse.Namespace) -> int:
    """`worker --processes N`: N worker processes of the same campaign on this host (each
    with its own GIL), forked from this one; the exit code is the worst of theirs."""
    if not can_fork():
        print(
            "asyncmailer: --processes needs a platform that can fork (Linux, macOS, BSD); "
            "start that many `asyncmailer worker` instead",
            file=sys.stderr,
        )
        return EXIT_USAGE
    code = _run(args, _workers_ready)
    if code != EXIT_OK:
        return code

    def one(number: int) -> int:
        worker = argparse.Namespace(**vars(args))
        worker.processes = 1
        if args.report is not None:  # one report file each
            worker.report = args.report.with_stem(f"{args.report.stem}.{number}")
        return _run(worker, worker_command)

    return _worst(run_forked(args.processes, one))


def _worst(codes: Sequence[int]) -> int:
    """The exit code of several workers: a failure over an interruption over "not every
    recipient accepted" over "nothing to send" (a worker that came after the end) over 0."""
    codes = [EXIT_INTERRUPTED if code < 0 else code for code in codes]  # killed by a signal
    order = [EXIT_INTERNAL, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED, EXIT_NOT_ALL_ACCEPTED]
    for code in order:
        if code in codes:
            return code
    unknown = [c for c in codes if c not in (EXIT_OK, EXIT_NOTHING_TO_SEND)]
    if unknown:
        return unknown[0]
    return EXIT_OK if EXIT_OK in codes else EXIT_NOTHING_TO_SEND


async def _shared_send(
    args: argparse.Namespace,
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    out: TextIO,
    built: dict[str, str],
    at: datetime | None = None,
) -> int:
    """A send (or one worker) on the shared PostgreSQL ledger: the run is found or made in
    the database, then sent like any other, its claims leased to this worker."""
    from .run.shared_runs import SharedRuns

    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    await asyncio.to_thread(_check_run_flags, args)
    async with SharedRuns(campaign) as runs:
        record = await runs.begin(
            current=built,
            new_run=args.new_run or args.restart,
            keep_changes=args.keep_changes,
            reopen=args.resend_unknown or args.retry_refused,
        )
        if at is not None and not await _wait_until(at, quiet=args.quiet):
            print("asyncmailer: stopped before the send time; nothing was sent", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not args.quiet:
            assert campaign.ledger is not None
            print(
                f"asyncmailer: run {record.id} in the ledger {campaign.ledger.masked}",
                file=sys.stderr,
            )
        return await _run_once(args, campaign, template, personalizer, runs, record, out)


def _again(args: argparse.Namespace) -> str:
    """How to go on with the run: the same command, but for the options that would begin
    another run (sending to everyone again) or be refused (an --at time that has passed)."""
    drop = [
        flag
        for flag, given in (
            ("--new-run", getattr(args, "new_run", False)),
            ("--restart", getattr(args, "restart", False)),
            ("--at", getattr(args, "at", None) is not None),
            ("--tz", getattr(args, "tz", None) is not None),
        )
        if given
    ]
    return "run the same command again" + (f" without {' and '.join(drop)}" if drop else "")


async def _run_once(
    args: argparse.Namespace,
    campaign: Campaign,
    template: MessageTemplate,
    personalizer: Personalizer | None,
    runs: RunBook,
    record: RunRecord,
    out: TextIO,
    signals: _SignalStop | None = None,
) -> int:
    """One run of the campaign with its progress, report file and final table, recorded in
    the campaign's runs as it ends (SIGINT and SIGTERM stop it: `signals`, when a scheduler
    already watches them). On a shared ledger (`runs` are the database's) this worker's
    claims are leased; else the campaign's journal is used. Returns the exit code."""
    writer = ReportWriter(args.report) if args.report else None
    target = plural(len(campaign.recipients), "recipient")
    if campaign.recipients_file is not None:
        target = f"the list {campaign.recipients_file}" + (
            f" and {target}" if campaign.recipients else ""
        )
    if not args.quiet:
        print(f"asyncmailer: sending to {target} via {_relays(campaign)}", file=sys.stderr)
        if own := _own_headers(campaign):
            print(
                f"asyncmailer: one recipient per message: each carries its own {own}",
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
        began=datetime.fromisoformat(record.started.replace("Z", "+00:00")).timestamp(),
        run_id=record.id,
    )
    try:
        with signals.covering(options.stop) if signals else _SignalStop(options.stop):
            async with contextlib.AsyncExitStack() as files:
                if writer is not None:
                    await files.enter_async_context(writer)
                if full is not None:
                    await files.enter_async_context(_replacing(full, args.report))
                opened = runs.ledger(record, lease=args.lease)
                shared = await files.enter_async_context(opened) if opened else None
                report = await run_campaign(
                    campaign,
                    template=template,
                    personalizer=personalizer,
                    observer=observer,
                    options=options,
                    ledger=shared,
                )
    except asyncio.CancelledError:
        observer.finish()
        print(
            "asyncmailer: stopped at once; the journal knows where every recipient stands: "
            f"{_again(args)} to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    observer.finish()
    done = await runs.end(record, stopped=options.stop.is_set() or report.fatal is not None)

    _print_outcome(report, args, out)
    await _summarise(report, campaign, done, out)
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
                f"cause is gone ({cause}), {_again(args)} to send them",
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
            f"asyncmailer: {quota} reached; {_again(args)} tomorrow to go on",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if report.limit_reached:
        print(
            f"asyncmailer: stopped after {plural(args.limit, 'message')} (--limit); "
            f"{_again(args)} to send the rest",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if options.stop.is_set():
        print(f"asyncmailer: interrupted; {_again(args)} to resume", file=sys.stderr)
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


PREVIEW_LINES = 20  # of the text of the first message a dry run wrote


def _preview(path: Path, envelope: dict[str, object] | None) -> list[str]:
    """The message at `path` as `preview` shows it (blocking: in a thread)."""
    return preview(path.read_bytes(), envelope, text_lines=PREVIEW_LINES)


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
    observer = ConsoleObserver(
        per_recipient=campaign.recipients_file is None,
        quiet=args.quiet,
        names={Status.ACCEPTED: "written"},  # a file took the message, not a server
    )
    options = RunOptions(limit=args.limit, store_bounces=False)
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
    if report.counts[Status.SUPPRESSED]:
        print(f"{plural(report.counts[Status.SUPPRESSED], 'recipient')} suppressed", file=out)
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
        shown = await asyncio.to_thread(_preview, first, transport.first_envelope)
        print(f"--- {first} ---", file=out)
        for line in shown:
            print(line, file=out)
        print(f"--- (the whole message: {first}) ---", file=out)
    if options.stop.is_set() and not report.limit_reached:
        return EXIT_INTERRUPTED
    return EXIT_OK if not report.problems else EXIT_NOT_ALL_ACCEPTED


def _print_outcome(report: CampaignReport, args: argparse.Namespace, out: TextIO) -> None:
    if report.complete and report.total <= TABLE_ROWS:
        print(format_table(report.results), file=out)
    elif report.problems:
        shown = report.problems[:TABLE_ROWS]
        print(format_table(shown), file=out)
        quiet = report.counts[Status.ACCEPTED] + report.counts[Status.SUPPRESSED]
        hidden = report.total - quiet - report.not_attempted - len(shown)
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


async def _summarise(
    report: CampaignReport, campaign: Campaign, record: RunRecord, out: TextIO
) -> None:
    """Print the run's summary and write it beside the journal (a summary that cannot be
    written is a warning: the run itself is recorded)."""
    document = summary_document(
        report, campaign=campaign.id, run=record.id, finished=record.finished
    )
    for line in summary_lines(document):
        print(line, file=out)
    path = summary_path(campaign.state_dir, campaign.id, record.id)
    try:
        await asyncio.to_thread(write_summary, path, document)
    except OSError as err:
        print(
            f"asyncmailer: warning: cannot write the run's summary {path}: {err.strerror or err}",
            file=sys.stderr,
        )
    else:
        print(f"summary written to {path}", file=out)


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
            # On a terminal, first end the line that the ^C (or the progress bar) is on.
            first = "\n" if sys.stderr.isatty() else ""
            print(
                f"{first}asyncmailer: stopping: finishing the transactions in flight "
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
    JournalState.SUPPRESSED: "suppressed (never sent)",
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
        lease=args.lease,
    )
    stop = asyncio.Event()

    def tell(line: str) -> None:
        print(f"asyncmailer schedule: {line}", file=sys.stderr, flush=True)

    with _SignalStop(stop) as signals:

        async def run_once(campaign: Campaign, runs: RunBook, record: RunRecord) -> int:
            with await prepare_message(campaign) as template:
                personalizer = await prepare_personalizer(campaign)
                return await _run_once(
                    run_args, campaign, template, personalizer, runs, record, out, signals
                )

        async def reload(campaign: Campaign) -> Campaign:
            return await _campaign(args, campaign.source)  # as it is now: edits count

        try:
            code = await Recurring(
                campaigns, run_once=run_once, stop=stop, tell=tell, reload=reload, open_runs=_runs
            ).run()
        except asyncio.CancelledError:
            tell("stopped at once; the journal knows where every recipient stands")
            return EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        tell("stopped; the next start resumes the run in flight")
    return code


def _runs(campaign: Campaign) -> contextlib.AbstractAsyncContextManager[RunBook]:
    """The campaign's runs: in the shared ledger when it has one, else in its state folder."""
    if campaign.ledger is None:
        return Runs(campaign)
    from .run.shared_runs import SharedRuns

    return SharedRuns(campaign)


async def status_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer status`: a campaign's counts from its journal (the current run's)."""
    state_dir, campaign_id = await _identity(args)
    shared = await campaign_ledger(args.config)
    if shared is not None:
        return await _shared_status(args, shared, campaign_id, out)
    path = journal_path(state_dir, campaign_id)
    if not await asyncio.to_thread(path.exists):
        print(f"campaign {args.config} has not run yet (no journal at {path})", file=out)
        return EXIT_OK
    reader = JournalReader(path)
    counts, bad_rows = await reader.counts(), await reader.bad_rows()
    print(f"campaign {args.config}: journal {path}", file=out)
    try:
        await asyncio.to_thread(probe_lock, path)
    except JournalError:
        busy = True
    else:
        busy = False
    _print_counts(counts, busy, out, bad_rows)
    return EXIT_OK


async def _shared_status(
    args: argparse.Namespace, url: LedgerUrl, campaign_id: str, out: TextIO
) -> int:
    """`status` of a campaign on the shared ledger: its latest run's counts, and how many
    workers hold a lease on it now."""
    from .pg.runs import PgRuns

    async with PgRuns(url, campaign_id) as runs:
        records = await runs.runs()
        if not records:
            print(f"campaign {args.config} has not run yet (in the ledger {url})", file=out)
            return EXIT_OK
        latest = records[-1]
        counts = Counter({JournalState(k): v for k, v in (await runs.counts(latest)).items()})
        workers = await runs.live_workers(latest)
        bad_rows = await runs.bad_rows(latest)
    print(f"campaign {args.config}: run {latest.id} in the ledger {url}", file=out)
    if workers:
        print(f"  {plural(workers, 'worker')} at work on it", file=out)
    _print_counts(counts, bool(workers), out, bad_rows)
    return EXIT_OK


def _print_counts(
    counts: Counter[JournalState], busy: bool, out: TextIO, bad_rows: int = 0
) -> None:
    """The states' counts; `bad_rows`: list rows the journal has no row for (an address that
    does not parse, or a personal subject or header that cannot be made; `send` reports
    them `skipped`)."""
    for state, word in STATE_WORDS.items():
        if counts[state]:
            print(f"  {counts[state]:>9,}  {word}", file=out)
    print(f"  {sum(counts.values()):>9,}  recipients in all", file=out)
    if bad_rows:
        print(
            f"{plural(bad_rows, 'bad list row')} skipped, not recipients "
            "(asyncmailer check names each)",
            file=out,
        )
    left = sum(
        counts[s] for s in (JournalState.PENDING, JournalState.DEFERRED, JournalState.INFLIGHT)
    )
    if busy:
        print("a run of this campaign is in progress", file=out)
    elif left:
        print(f"{plural(left, 'recipient')} still to send: run the campaign again", file=out)


_RUN_COLUMNS = (JournalState.ACCEPTED, JournalState.REFUSED, JournalState.DEFERRED)
_RUN_AFTER = (JournalState.UNKNOWN, JournalState.SUPPRESSED)


async def runs_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer runs`: every run of a campaign, oldest first, with its counts."""
    state_dir, campaign_id = await _identity(args)
    shared = await campaign_ledger(args.config)
    if shared is not None:
        from .pg.runs import PgRuns

        async with PgRuns(shared, campaign_id) as book:
            records = await book.runs()
            counted = [r.counts or await book.counts(r) for r in records]
    else:
        catalog = RunCatalog(state_dir, campaign_id)
        records = (await asyncio.to_thread(catalog.load)).runs
        counted = []
        for record in records:
            counts = record.counts
            if counts is None:  # still going, or stopped before it could say: read its journal
                path = catalog.journal_of(record)
                counts = {}
                if await asyncio.to_thread(path.exists):  # none yet: stopped before it began
                    counts = {str(k): v for k, v in (await JournalReader(path).counts()).items()}
            counted.append(counts)
    if not records:
        print(f"campaign {campaign_id} has no runs yet", file=out)
        return EXIT_OK
    rows = []
    for record, counts in zip(records, counted, strict=True):
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
                *(f"{counts.get(str(s), 0):,}" for s in _RUN_AFTER),
                f"{left:,}",
            )
        )
    header: tuple[str, ...] = ("RUN", "SCHEDULED", "STARTED", "ENDED", "ACCEPTED", "REFUSED")
    header += ("DEFERRED", "UNKNOWN", "SUPPRESSED", "LEFT")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    return EXIT_OK


async def report_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`asyncmailer report`: a run's summary (text, or JSON with --format json), and every
    recipient's result from its journal in a report file (.csv or .jsonl)."""
    state_dir, campaign_id = await _identity(args)
    shared = await campaign_ledger(args.config)
    if shared is not None:
        from .pg.runs import PgRuns

        async with PgRuns(shared, campaign_id) as book:
            return await _report(args, campaign_id, await book.runs(), out, book)
    catalog = RunCatalog(state_dir, campaign_id)
    records = (await asyncio.to_thread(catalog.load)).runs
    return await _report(args, campaign_id, records, out, catalog)


async def _report(
    args: argparse.Namespace,
    campaign_id: str,
    records: list[RunRecord],
    out: TextIO,
    source: RunCatalog | PgRuns,
) -> int:
    """The report of one run (--run, or the latest), from its journal or the shared ledger."""
    if args.run is not None:
        found = [r for r in records if r.id == args.run]
        if not found:
            known = ", ".join(r.id for r in records[-5:]) or "none"
            raise InputError(f"no run {args.run!r} (the latest: {known})", field="--run")
        record: RunRecord | None = found[0]
    else:
        record = records[-1] if records else None
    run_id = record.id if record is not None else "current"
    suffix = "jsonl" if args.format == "jsonl" else "csv"
    target = args.output or Path(f"{campaign_id}.{run_id}.report.{suffix}")
    if isinstance(source, RunCatalog):
        journal = source.journal_of(record) if record is not None else source.journal
        if not await asyncio.to_thread(journal.exists):
            raise JournalError("no journal: this campaign has not run yet", path=journal)
        pages = JournalReader(journal).pages()
    elif record is None:
        raise JournalError(f"campaign {campaign_id} has not run yet (in the ledger {source.url})")
    else:
        pages = source.pages(record)
    summary = CampaignReport(keep=0)
    async with ReportWriter(target) as writer:
        async for page in pages:
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


async def _store(args: argparse.Namespace) -> SuppressionStorage:
    """The store `suppress` works on: --state-dir's, else the campaign's (--config, else
    the default campaign file when there is one): its shared ledger's when it has one, else
    its state folder's.

    :raises InputError: neither is given and there is no default campaign file.
    """
    if args.state_dir is not None:
        return SuppressionStore.of(args.state_dir)
    config = args.config
    if config is None and await asyncio.to_thread(DEFAULT_CONFIG.exists):
        config = DEFAULT_CONFIG
    if config is None:
        raise InputError(
            "which store? name its folder with --state-dir DIR, or a campaign with --config "
            "CAMPAIGN (its state_dir)",
            field="--state-dir",
        )
    shared = await campaign_ledger(config)
    if shared is not None:
        from .pg.suppressions import PgSuppressionStore

        return PgSuppressionStore(shared)
    state_dir, _ = await campaign_identity(config)
    return SuppressionStore.of(state_dir)


def _keys(texts: Sequence[str]) -> list[str]:
    """The store keys of entries given on the command line.

    :raises InputError: one is not an address or @domain.
    """
    keys = []
    for text in texts:
        try:
            keys.append(entry_key(text))
        except ValueError as err:
            raise InputError(f"not an address or @domain: {err}", field="ADDRESS") from None
    return keys


async def _unsubscribed(args: argparse.Namespace) -> list[str]:
    """The addresses of --token, each verified with the campaign's unsubscribe key.

    :raises InputError: no campaign, no key, or a token that does not verify.
    """
    if not args.token:
        return []
    if args.config is None:
        raise InputError(
            "--token needs the campaign whose key signed it: --config", field="--token"
        )
    campaign = await load_campaign(args.config)
    unsubscribe = campaign.list_unsubscribe
    if unsubscribe is None or not unsubscribe.key:
        raise InputError(
            "the campaign has no list_unsubscribe key to verify tokens with", field="--token"
        )
    found = []
    for candidate in args.token:
        address = verify(candidate.strip(), unsubscribe.key)
        if address is None:
            raise InputError(
                f"the token {printable(candidate[:40])!r} was not made with this campaign's key "
                "(forged, altered or another campaign's): nothing added",
                field="--token",
            )
        found.append(address)
    return found


def _entries(count: int) -> str:
    return f"{count:,} {'entry' if count == 1 else 'entries'}"


async def suppress_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`asyncmailer suppress add|remove|list|import`: the shared suppression store."""
    out = out or sys.stdout  # looked up now: where stdout is at the time
    store = await _store(args)
    if args.verb == "list":
        entries = await store.entries()
        if args.reason is not None:
            entries = [e for e in entries if e.reason.value == args.reason]
        header = ("ENTRY", "REASON", "CODE", "CAMPAIGN", "ADDED", "NOTE")
        rows = [
            (
                printable(e.key),
                e.reason.value,
                e.code or "",
                printable(e.campaign or ""),
                e.when,
                shorten(printable(e.note), 200),
            )
            for e in entries
        ]
        if rows:
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
            for row in [header, *rows]:
                cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                print("  ".join([*cells, row[5]]).rstrip(), file=out)
        print(f"{_entries(len(rows))} in {store.where}", file=out)
        return EXIT_OK
    if args.verb == "remove":
        keys = _keys(args.entries)
        removed = set(await store.remove(keys))
        for key in keys:
            word = "removed" if key in removed else "not in the store:"
            print(f"{word} {printable(key)}", file=out)
        return EXIT_OK if len(removed) == len(set(keys)) else EXIT_NOT_ALL_ACCEPTED
    reason = Reason(args.reason)
    tokens: list[str] = []
    if args.verb == "import":
        text = await read_text(args.file, "the file to import")
        keys = list(parse_suppression(text, args.file))
    else:
        keys = _keys(args.entries)
        tokens = [entry_key(a) for a in await _unsubscribed(args)]
        if not keys and not tokens:
            raise InputError("name an address or @domain to add, or give --token", field="ADDRESS")
    entries = [Entry(key, reason, note=args.note) for key in keys]
    if args.verb == "add" and tokens:
        campaign_id = (await campaign_identity(args.config))[1]
        entries += [
            Entry(key, Reason.UNSUBSCRIBE, note=args.note, campaign=campaign_id) for key in tokens
        ]
    added = await store.add(entries)
    unique = len({e.key for e in entries})
    text = f"added {_entries(added)} to {store.where}"
    if unique > added:
        text += f"; {unique - added:,} already there (kept as they were)"
    print(text, file=out)
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
