"""The benchmark's inputs: the message text, the attachment, ready-made messages, recipient lists.

Two message sizes: ~2.4 KB (text only) and ~143 KB (the same text plus one 100 KiB binary
attachment, base64-encoded). asyncmailer builds its own message from the body file and the
attachment folder; the other senders send a message built here with the stdlib from the same
inputs, so all of them put about the same number of bytes on the wire.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import yaml

SENDER = "bench@example.com"
RECIPIENT = "rcpt@example.com"
SUBJECT = "asyncmailer benchmark"
ATTACHMENT_BYTES = 100 * 1024
BIG_ATTACHMENT_BYTES = 100 * 1000 * 1000  # the memory row with one 100 MB attachment
_BODY_LINES = 32
_SEED = 20241126
_DATE = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class MessageSize:
    """One message size: the inputs for asyncmailer and the finished message for the others."""

    label: str
    attachments_dir: Path
    eml_crlf: Path  # for smtplib (sent as is)
    eml_lf: Path  # for smtp-source -F (it appends CRLF to each line)
    nbytes: int


@dataclass(frozen=True, slots=True)
class Workload:
    body_file: Path
    sizes: dict[str, MessageSize]


def _body_text() -> str:
    words = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
    rng = random.Random(_SEED)
    lines = []
    for number in range(_BODY_LINES):
        line = f"{number:02d}"
        while len(line) < 60:
            line += " " + rng.choice(words)
        lines.append(line)
    return "Hello,\n\n" + "\n".join(lines) + "\n\nRegards,\nthe benchmark\n"


def _stdlib_message(body: str, attachment: bytes | None) -> bytes:
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = SUBJECT
    message["Date"] = format_datetime(_DATE)
    message["Message-ID"] = make_msgid(domain="example.com")
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="data.bin"
        )
    return message.as_bytes()


def _write_size(folder: Path, label: str, body: str, attachment: bytes | None) -> MessageSize:
    attachments = folder / f"attachments-{label}"
    attachments.mkdir(parents=True, exist_ok=True)
    if attachment is not None:
        (attachments / "data.bin").write_bytes(attachment)
    data = _stdlib_message(body, attachment)
    crlf, lf = folder / f"message-{label}.eml", folder / f"message-{label}.lf.eml"
    crlf.write_bytes(data)
    lf.write_bytes(data.replace(b"\r\n", b"\n"))
    return MessageSize(label, attachments, crlf, lf, len(data))


def prepare(folder: Path) -> Workload:
    """Write the body, attachment folders and finished messages into `folder`."""
    body = _body_text()
    body_file = folder / "body.txt"
    body_file.write_text(body, encoding="utf-8")
    attachment = random.Random(_SEED).randbytes(ATTACHMENT_BYTES)
    sizes = {
        "2.4KB": _write_size(folder, "2.4KB", body, None),
        "143KB": _write_size(folder, "143KB", body, attachment),
        "100MB": _write_big(folder, "100MB"),
    }
    return Workload(body_file, sizes)


def _write_big(folder: Path, label: str) -> MessageSize:
    """An attachment folder with one 100 MB file, for asyncmailer only: no finished message
    is written (the stdlib would need about ten times its size in memory to build it)."""
    attachments = folder / f"attachments-{label}"
    attachments.mkdir(parents=True, exist_ok=True)
    rng = random.Random(_SEED)
    with (attachments / "big.bin").open("wb") as handle:
        for _ in range(BIG_ATTACHMENT_BYTES // 1_000_000):
            handle.write(rng.randbytes(1_000_000))
    none = folder / "no-message.eml"
    return MessageSize(label, attachments, none, none, BIG_ATTACHMENT_BYTES)


def recipients_file(folder: Path, count: int) -> Path:
    """A .txt list of `count` distinct addresses, one per line (written once, then reused)."""
    path = folder / f"recipients-{count}.txt"
    if not path.exists():
        chunk = 100_000
        with path.open("w", encoding="ascii") as handle:
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                handle.write("".join(f"user{i}@example.com\n" for i in range(start, stop)))
    return path


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """The asyncmailer settings one row varies."""

    port: int
    recipients: Path
    size: MessageSize
    concurrency: int
    pipelining: bool
    group_size: int
    tls_ca_file: Path | None = None  # given: implicit TLS (security: ssl), verified against it
    rate: float | None = None  # the campaign's `rate`, messages/s


def write_campaign(folder: Path, name: str, body_file: Path, spec: CampaignSpec) -> Path:
    """Write a YAML campaign to 127.0.0.1, no AUTH, and return its path: plain SMTP, or
    implicit TLS with the certificate verified against `spec.tls_ca_file` when given."""
    campaign = {
        "subject": SUBJECT,
        "from": SENDER,
        "file_with_message": str(body_file),
        "attachments": str(spec.size.attachments_dir),
        "host": "127.0.0.1",
        "port": spec.port,
        "security": "ssl" if spec.tls_ca_file else "none",
        "recipients_file": str(spec.recipients),
        "group_size": spec.group_size,
        "pipelining": spec.pipelining,
        "concurrency": spec.concurrency,
        "max_messages_per_connection": 0,
    }
    if spec.tls_ca_file:
        campaign["tls_ca_file"] = str(spec.tls_ca_file)  # tls_verify stays at its default, true
    if spec.rate:
        campaign["rate"] = spec.rate
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False), encoding="utf-8")
    return path
