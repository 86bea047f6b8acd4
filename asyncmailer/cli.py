"""The command line: `asyncmailer [send]` runs a campaign, `asyncmailer serve` the local server.

Exit codes: 0 every recipient accepted; 1 some recipient not accepted; 2 bad config, input or
usage (nothing sent); 3 the server could not be reached, refused TLS, or refused the login;
70 an internal error (a bug: please report it); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from . import __version__
from .config import DEFAULT_CONFIG, PASSWORD_ENV, load_campaign
from .errors import InputError, MailerError
from .orchestrator import prepare_message, run_campaign
from .progress import ConsoleObserver
from .report import ReportWriter, format_table
from .results import Status, plural

__all__ = ["EXIT_CODES", "main", "run"]

EXIT_OK, EXIT_NOT_ALL_ACCEPTED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERNAL, EXIT_INTERRUPTED = (
    0,
    1,
    2,
    3,
    70,
    130,
)
EXIT_CODES = {
    EXIT_OK: "every recipient was accepted",
    EXIT_NOT_ALL_ACCEPTED: "at least one recipient was refused, deferred, unknown or skipped",
    EXIT_USAGE: "bad config, input file or command line; nothing was sent",
    EXIT_SERVER: "the server could not be reached, refused TLS, or refused the login",
    EXIT_INTERNAL: "internal error (a bug; run with --debug and report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
_COMMANDS = ("send", "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parseargs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*_COMMANDS, "-h", "--help", "--version"):
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
    send.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"campaign file, JSON or YAML (default: {DEFAULT_CONFIG})",
    )
    send.add_argument(
        "--report", type=Path, help="also write every result to this .csv or .jsonl file"
    )
    send.add_argument(
        "-q", "--quiet", action="store_true", help="print only the final table and summary"
    )
    send.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

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
    return parser.parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code. Never raises for bad input."""
    args = parseargs(argv)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.command == "serve":
                from .server import serve_command

                return runner.run(serve_command(args))
            return runner.run(send_command(args))
    except KeyboardInterrupt:
        print("asyncmailer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as err:
        print(f"asyncmailer: {err}", file=sys.stderr)
        return EXIT_USAGE
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


async def send_command(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    campaign = await load_campaign(args.config)
    for notice in campaign.notices:
        print(f"asyncmailer: {notice}", file=sys.stderr)
    writer = ReportWriter(args.report) if args.report else None
    # Read and check the body and attachments before anything is sent or written.
    template = await prepare_message(campaign)

    server = campaign.server
    login = f" as {server.username}" if server.username else " without AUTH"
    target = plural(len(campaign.recipients), "recipient")
    if campaign.recipients_file is not None:
        target = f"the list {campaign.recipients_file}" + (
            f" and {target}" if campaign.recipients else ""
        )
    if not args.quiet:
        print(
            f"asyncmailer: sending to {target} via {server.address} "
            f"({server.security.value}{login})",
            file=sys.stderr,
        )
    observer = ConsoleObserver(
        writer=writer, per_recipient=campaign.recipients_file is None, quiet=args.quiet
    )
    try:
        if writer is not None:
            async with writer:
                report = await run_campaign(campaign, template=template, observer=observer)
        else:
            report = await run_campaign(campaign, template=template, observer=observer)
    finally:
        observer.finish()

    if report.complete and report.total <= TABLE_ROWS:
        print(format_table(report.results), file=out)
    elif report.problems:
        shown = report.problems[:TABLE_ROWS]
        print(format_table(shown), file=out)
        hidden = report.total - report.counts[Status.ACCEPTED] - len(shown)
        if hidden > 0:
            print(f"... and {plural(hidden, 'more recipient')} not accepted", file=out)
    print(report.summary(), file=out)
    if args.report:
        print(f"report written to {args.report}", file=out)
    elif not report.complete:
        print("every recipient's result: run again with --report FILE.csv", file=out)
    if report.fatal is not None:
        print(f"asyncmailer: {report.fatal}", file=sys.stderr)
        return EXIT_SERVER
    return EXIT_OK if report.all_accepted else EXIT_NOT_ALL_ACCEPTED


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install asyncmailer[fast]``)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
