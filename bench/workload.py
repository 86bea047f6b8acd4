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
    personal_text: Path  # the body as a template (about 2.4 KB)
    personal_html: Path  # the same as an HTML template (about 2.4 KB), its text made from it
    dkim_keys: dict[str, Path]  # a private key file per kind of cases.DKIM_KINDS signed


PERSONAL_SUBJECT = "Hello {{ first_name }}, your asyncmailer benchmark"


def _personal_text(body: str) -> str:
    """The body as a text template: a greeting and a closing line filled per recipient."""
    return body.replace("Hello,", "Hello {{ first_name }},", 1).replace(
        "Regards,", "Regards to {{ city }},", 1
    )


def _personal_html(body: str) -> str:
    """The same text as an HTML template of about the same size: a paragraph a line."""
    _greeting, *lines, _closing = body.split("\n\n")
    paragraphs = "".join(f"<p>{line}</p>\n" for line in "\n".join(lines).splitlines())
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{{ first_name }}</title>'
        "</head>\n<body>\n<h1>Hello {{ first_name }},</h1>\n"
        f"{paragraphs}"
        '<p>Regards to <a href="https://example.com/{{ city }}">{{ city }}</a>,<br>'
        "the benchmark</p>\n</body></html>\n"
    )


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
    personal_text, personal_html = folder / "personal.txt", folder / "personal.html"
    personal_text.write_text(_personal_text(body), encoding="utf-8")
    personal_html.write_text(_personal_html(body), encoding="utf-8")
    return Workload(body_file, sizes, personal_text, personal_html, _write_dkim_keys(folder))


def _write_dkim_keys(folder: Path) -> dict[str, Path]:
    """An RSA-2048 and an Ed25519 key (PEM, mode 600), made with cryptography (a dependency
    of asyncmailer)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    keys: dict[str, PrivateKeyTypes] = {
        "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    paths = {}
    for kind, key in keys.items():
        path = folder / f"dkim-{kind}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        paths[kind] = path
    return paths


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


def personal_recipients_file(folder: Path, count: int) -> Path:
    """A .csv list of `count` distinct addresses with a first name and a city each."""
    path = folder / f"recipients-{count}.csv"
    if not path.exists():
        names = ("Ann", "Bob", "Zoë", "Ярослав", "Ines", "Mateo")
        cities = ("Oslo", "São Paulo", "Москва", "Rome")
        with path.open("w", encoding="utf-8") as handle:
            handle.write("email,first_name,city\n")
            handle.writelines(
                f"user{i}@example.com,{names[i % len(names)]},{cities[i % len(cities)]}\n"
                for i in range(count)
            )
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
    personal: Path | None = None  # given: personalize, with this template as the message
    dkim_key: Path | None = None  # given: every message signed with this key (dkim:)
    rate: float | None = None  # the campaign's `rate`, messages/s
    ledger: str | None = None  # given: this PostgreSQL ledger URL, the campaign's id its name


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
    if spec.personal:
        campaign.update(
            subject=PERSONAL_SUBJECT, file_with_message=str(spec.personal), personalize=True
        )
        del campaign["group_size"]  # one recipient per message
    if spec.dkim_key:
        campaign["dkim"] = {
            "domain": "example.com",
            "selector": "bench",
            "key_file": str(spec.dkim_key),
        }
    if spec.rate:
        campaign["rate"] = spec.rate
    if spec.ledger:
        campaign.update(campaign=name, ledger=spec.ledger)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False), encoding="utf-8")
    return path
