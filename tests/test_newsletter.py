"""Issue 13's whole case, end to end through the CLI and a real server: a newsletter in YAML
(Markdown with an inline image, its text alternative, a personal greeting, Reply-To, one-click
unsubscribe with each recipient's token, DKIM, a suppression file), a `;`-separated cp1251
list of 5,000 rows with a few bad ones, sent over STARTTLS with AUTH LOGIN. Every delivered
message must parse, verify and carry its own recipient's headers; suppressed ones get nothing."""

from __future__ import annotations

import base64
import csv
import io
import json
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from asyncmailer.unsubscribe import verify

from .conftest import PASSWORD, USER, Certs, ServerFactory, run_cli
from .dkimkeys import DOMAIN, SELECTOR, record, verifies, write_key
from .dns_server import serve_zone

ROWS = 5000
KEY = b"a newsletter's unsubscribe key, 32+"
NAMES = ["Алёна", "Борис", "Вера", "Глеб", "Дарья"]
SUPPRESSED = {"row17@example.com", "row4242@example.com"}
SUPPRESSED_DOMAIN = "blocked.example"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def write_newsletter(root: Path, port: int, ca_file: Path) -> tuple[Path, set[str]]:
    """The campaign's files under `root`; returns the campaign and who should get mail."""
    reliances = root / "reliances"
    reliances.mkdir()
    (reliances / "logo.png").write_bytes(PNG)
    (reliances / "newsletter.md").write_text(
        '# November news\n\nHello {{ first_name | default("friend") }},\n\n'
        "![our logo](logo.png)\n\nThis month in *{{ city }}*: everything new.\n",
        encoding="utf-8",
    )
    secret = reliances / "your_pswd.txt"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    key_file = reliances / "unsubscribe.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    write_key(reliances, "rsa-2048")
    (reliances / "suppressed.txt").write_text(
        "# people who asked not to get mail\n"
        + "".join(f"{a}\n" for a in sorted(SUPPRESSED))
        + f"@{SUPPRESSED_DOMAIN}\n"
    )

    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(["email", "first_name", "city"])
    expected = set()
    for i in range(ROWS):
        address = f"row{i}@example.com"
        if i % 1000 == 999:
            address = f"row{i}@{SUPPRESSED_DOMAIN}"
        writer.writerow([address, NAMES[i % len(NAMES)], "Москва"])
        if address not in SUPPRESSED and not address.endswith(SUPPRESSED_DOMAIN):
            expected.add(address)
    writer.writerow(["not an address", "Зоя", "Тверь"])  # bad rows, each named by its line
    writer.writerow(["row-extra@example.com", "Яна", "Омск", "one cell too many"])
    (root / "list.csv").write_bytes(out.getvalue().encode("cp1251"))

    campaign = {
        "campaign": "november",
        "subject": "News for {{ first_name }}",
        "from": f"News <{USER}>",
        "reply_to": "Support <support@example.com>",
        "file_with_message": "reliances/newsletter.md",
        "attachments": None,
        "personalize": True,
        "recipients_file": "list.csv",
        "recipients_encoding": "cp1251",
        "recipients_delimiter": ";",
        "headers": {"X-Campaign": "november-{{ city }}"},
        "list_unsubscribe": {
            "url": "https://example.com/unsubscribe?t={{ unsubscribe_token }}",
            "mailto": "unsubscribe@example.com",
            "key_file": "reliances/unsubscribe.key",
        },
        "dkim": {"domain": DOMAIN, "selector": SELECTOR, "key_file": "reliances/dkim.pem"},
        "suppression_file": "reliances/suppressed.txt",
        "host": "127.0.0.1",
        "port": port,
        "security": "starttls",
        "tls_ca_file": str(ca_file),
        "concurrency": 8,
        "state_dir": "state",
    }
    campaign = {k: v for k, v in campaign.items() if v is not None}
    path = reliances / "newsletter.yaml"
    path.write_text(yaml.safe_dump(campaign, allow_unicode=True), encoding="utf-8")
    return path, expected


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)


async def test_a_newsletter_campaign_end_to_end(
    smtp_server: ServerFactory, certs: Certs, tmp_path: Path
) -> None:
    running = await smtp_server()
    path, expected = write_newsletter(tmp_path, running.server.starttls_port, certs.ca_file)

    # First the check: every row rendered, the verdict against a real DNS server on loopback
    # and the server's SIZE over STARTTLS; the bad rows are warnings, nothing blocks.
    zone = {
        DOMAIN: ["v=spf1 ip4:127.0.0.1 -all"],
        f"{SELECTOR}._domainkey.{DOMAIN}": [record("rsa-2048").decode("ascii")],
        f"_dmarc.{DOMAIN}": ["v=DMARC1; p=reject"],
    }
    with serve_zone(zone) as dns:
        server = f"127.0.0.1:{dns.nameserver.port}"
        code, out, err = await run_cli("check", str(path), "--dns-server", server, cwd=tmp_path)
    assert code == 0, out + err
    assert "errors" not in out.split("warnings")[0]
    assert f"list.csv:{ROWS + 2}" in out and f"list.csv:{ROWS + 3}" in out
    assert f"{len(expected):,} recipients" in out, out
    assert running.messages == []  # the check sent nothing

    code, out, err = await run_cli("send", str(path), "--report", "report.csv", cwd=tmp_path)
    assert code == 1, err  # the two bad rows were not sent
    assert f"list.csv:{ROWS + 2}" in out + err and f"list.csv:{ROWS + 3}" in out + err

    # AUTH LOGIN, only after STARTTLS.
    assert "AUTH LOGIN" in " ".join(running.recorder.commands())
    assert b"AUTH" not in running.recorder.plaintext()

    received: dict[str, bytes] = {}
    for message in running.messages:
        [rcpt] = message.rcpt_tos  # a personal message each
        assert rcpt not in received, f"{rcpt} got two messages"
        received[rcpt] = message.data
    assert set(received) == expected

    for number, (rcpt, data) in enumerate(sorted(received.items())):
        parsed = parse(data)
        index = int(rcpt.removeprefix("row").partition("@")[0])
        name = NAMES[index % len(NAMES)]
        assert parsed["To"] == rcpt and parsed["Subject"] == f"News for {name}"
        assert parsed["Reply-To"] == "Support <support@example.com>"
        assert parsed["X-Campaign"] == "november-Москва"
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        links = [link.strip(" <>") for link in str(parsed["List-Unsubscribe"]).split(",")]
        [url] = [link for link in links if link.startswith("https://")]
        [token] = parse_qs(urlsplit(url).query)["t"]
        assert verify(token, KEY) == rcpt
        assert any(link.startswith("mailto:unsubscribe@example.com") for link in links)
        html = parsed.get_body(("html",))
        text = parsed.get_body(("plain",))
        assert html is not None and text is not None
        assert f"Hello {name}," in html.get_content() and f"Hello {name}," in text.get_content()
        assert 'src="cid:' in html.get_content()
        if number < 200 or number % 97 == 0:  # dkimpy is pure Python: a sample of 250 or so
            assert verifies(data, "rsa-2048"), rcpt
            [image] = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
            assert image.get_content() == PNG

    report = (tmp_path / "report.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(report)))
    status = {row["recipient"]: row["status"] for row in rows}
    for address in SUPPRESSED | {f"row{i}@{SUPPRESSED_DOMAIN}" for i in range(999, ROWS, 1000)}:
        assert status[address] == "suppressed"
    assert sum(s == "accepted" for s in status.values()) == len(expected)

    [summary_file] = (tmp_path / "state").glob("november.*.summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["statuses"]["accepted"] == len(expected)
    assert summary["statuses"]["suppressed"] == len(SUPPRESSED) + ROWS // 1000
    assert summary["bad_rows"] == 2
