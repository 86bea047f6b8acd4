"""The "original way": stdlib smtplib, a new connection for every message, one after another.

Each message is connect, EHLO, MAIL, RCPT, DATA, QUIT over plain SMTP. Loopback targets only.

    python bench/original_way.py --port PORT --count N --message FILE

Prints ``sent=N failed=N`` and exits 0 only if every message was accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import smtplib
import sys
from pathlib import Path

SENDER = "bench@example.com"
RECIPIENT = "rcpt@example.com"


def send_all(host: str, port: int, count: int, data: bytes, timeout: float) -> tuple[int, int]:
    sent = failed = 0
    for _ in range(count):
        try:
            with smtplib.SMTP(host, port, timeout=timeout) as smtp:
                smtp.ehlo()
                smtp.sendmail(SENDER, [RECIPIENT], data)
            sent += 1
        except (OSError, smtplib.SMTPException) as err:
            failed += 1
            print(f"original_way: {type(err).__name__}: {err}", file=sys.stderr)
    return sent, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address only")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="number of messages")
    parser.add_argument("--message", type=Path, required=True, help="CRLF message file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per step")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"{args.host} is not a loopback address")
    sent, failed = send_all(
        args.host, args.port, args.count, args.message.read_bytes(), args.timeout
    )
    print(f"sent={sent} failed={failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
