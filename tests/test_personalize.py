"""Personalised messages: templates checked before sending, each row's subject and text merged
into its own message, attachments encoded once, bad rows skipped with file:line."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from asyncmailer.addresses import Mailbox
from asyncmailer.config import load_campaign
from asyncmailer.errors import ConfigError, InputError
from asyncmailer.message import MessageTemplate
from asyncmailer.personalize import Personalizer
from asyncmailer.results import Status
from asyncmailer.run.campaign import run_campaign

from .conftest import CampaignFactory, RunningServer, ServerFactory, in_memory

BODY = "Dear {{ first_name }},\n.a line starting with a dot\nSee you in {{ row['home city'] }}.\n"
ATTACHMENT = bytes(range(256)) * 40


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def personal_campaign(
    make_campaign: CampaignFactory, running: RunningServer, listing: Path, **keys: Any
) -> Path:
    """A personalised campaign of the list alone, sent to the test server's TLS port."""
    settings: dict[str, Any] = {"body": BODY, **keys}
    return make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file=str(listing),
        personalize=True,
        **settings,
    )


def personalizer(subject: str = "Hi {{ first_name }}", body: str = BODY) -> Personalizer:
    return Personalizer(
        subject=subject, body=body, config=Path("c.yaml"), body_file=Path("msg.txt")
    )


def test_fields_rows_and_built_ins_fill_the_templates() -> None:
    p = personalizer()
    context = p.context(
        Mailbox("zoe@example.com", "Zoë"), {"first_name": "Zoë", "home city": "Zürich"}
    )
    assert p.subject(context) == "Hi Zoë"
    assert p.body(context).splitlines()[2] == "See you in Zürich."
    assert personalizer("{{ email }} / {{ name }}").subject(context) == "zoe@example.com / Zoë"


def test_a_name_the_list_lacks_is_refused_before_sending() -> None:
    with pytest.raises(InputError) as caught:
        personalizer("Hi {{ frist_name }}").check_fields(("email", "first_name"), Path("l.csv"))
    assert str(caught.value) == (
        "c.yaml: subject: uses 'frist_name', which l.csv does not have "
        "(it has email, first_name; also email, name and row)"
    )
    personalizer().check_fields(("email", "first_name"), Path("l.csv"))  # row[...] is dynamic


def test_a_syntax_error_names_the_body_file_and_line() -> None:
    with pytest.raises(InputError) as caught:
        personalizer(body="Hello\n{{ first_name }\n")
    assert str(caught.value).startswith("msg.txt:2: file_with_message: template error:")


def test_a_field_with_a_line_break_cannot_reach_the_subject() -> None:
    p = personalizer()
    row = {"first_name": "x\r\nBcc: evil@example.com", "home city": "Oslo"}
    context = p.context(Mailbox("a@example.com"), row)
    with pytest.raises(ValueError, match="subject contains a line break"):
        p.subject(context)
    assert "Bcc: evil@example.com" in p.body(context)  # the body may carry any text


def test_the_sandbox_refuses_reaching_into_python() -> None:
    p = personalizer("{{ name.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="template error"):
        p.subject(p.context(Mailbox("a@example.com"), {}))


def test_personal_template_shares_the_encoded_attachment() -> None:
    template = MessageTemplate(
        sender=Mailbox("me@example.com"),
        subject="unused",
        body="unused",
        attachments=[],
        personal=True,
    )
    one = template.render_parts(to=[Mailbox("a@example.com")], subject="A", text="text a\n")
    two = template.render_parts(to=[Mailbox("b@example.com")], subject="B", text="text b\n")
    assert one[1] is two[1] and one[3] is two[3]  # the shared bytes are the same object
    message = parse(b"".join(in_memory(one)))
    assert message["Subject"] == "A"
    assert message.get_content().replace("\r\n", "\n") == "text a\n"


async def test_each_row_gets_its_own_subject_and_text(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    rows = [
        ("ann@example.com", "Ann", "Oslo"),
        ("bob@example.com", "Bob =?utf-8?q?x?= ==", "São Paulo"),
        ("cid@example.com", "Cid\r\nBcc: evil@example.com", "Rome"),  # refused: subject
        ("dee@example.com", "Dee", "Łódź"),
    ]
    lines = ["email,first_name,home city"]
    lines += [f'{email},"{first}",{city}' for email, first, city in rows]
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = personal_campaign(
        make_campaign,
        running,
        listing,
        subject="Hello {{ first_name }}",
        files={"data.bin": ATTACHMENT},
        concurrency=2,
    )
    report = await run_campaign(await load_campaign(path, env={}))

    assert report.counts[Status.ACCEPTED] == 3
    [bad] = report.problems
    assert bad.recipient == "cid@example.com"
    assert bad.message == (
        f"{listing}:4: subject contains a line break (CR/LF), which could inject headers"
    )
    got = {m.rcpt_tos[0]: parse(m.data) for m in running.messages}
    assert sorted(got) == ["ann@example.com", "bob@example.com", "dee@example.com"]
    for email, first, city in (rows[0], rows[1], rows[3]):
        message = got[email]
        assert message["Subject"] == f"Hello {first}"
        assert [a.addr_spec for a in message["To"].addresses] == [email]
        text, attachment = (part for part in message.iter_parts())
        assert text.get_content().replace("\r\n", "\n") == (
            f"Dear {first},\n.a line starting with a dot\nSee you in {city}.\n"
        )
        assert attachment.get_content() == ATTACHMENT
    # One recipient per transaction, every message with a Message-ID of its own.
    assert all(len(m.rcpt_tos) == 1 for m in running.messages)
    assert len({m["Message-ID"] for m in got.values()}) == 3


async def test_unknown_field_stops_the_run_before_anything_is_sent(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "list.csv"
    listing.write_text("email,first_name\nann@example.com,Ann\n", encoding="utf-8")
    path = personal_campaign(make_campaign, running, listing, body="Dear {{ firstname }}\n")
    with pytest.raises(InputError, match=r"uses 'firstname', which .*list\.csv does not have"):
        await run_campaign(await load_campaign(path, env={}))
    assert running.messages == []


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"recipients_file": None}, "personalize", "needs recipients_file"),
        ({"to": "a@example.com"}, "to", "cannot be used with personalize"),
        ({"group_size": 50}, "group_size", "must be 1 with personalize"),
    ],
)
async def test_personalize_config_rules(
    make_campaign: CampaignFactory, tmp_path: Path, keys: dict[str, object], key: str, reason: str
) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.com\n")
    settings: dict[str, object] = {"to": None, "cc": None, "recipients_file": "list.csv"}
    settings.update(keys)
    if settings["recipients_file"] is None:
        settings["to"] = "a@example.com"
    path = make_campaign(personalize=True, **settings)
    with pytest.raises(ConfigError, match=f"{key}: {reason}"):
        await load_campaign(path, env={})
    ok = await load_campaign(
        make_campaign(personalize=True, to=None, cc=None, recipients_file="list.csv"), env={}
    )
    assert ok.personalize and ok.group_size == 1


async def test_a_body_that_fails_on_one_row_skips_only_that_recipient(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "list.csv"
    listing.write_text("email,n\nann@example.com,4\nbob@example.com,0\n", encoding="utf-8")
    body = "Each of you gets {{ 100 // (n | int) }}.\n"
    path = personal_campaign(make_campaign, running, listing, body=body)
    report = await run_campaign(await load_campaign(path, env={}))
    assert [list(m.rcpt_tos) for m in running.messages] == [["ann@example.com"]]
    assert "Each of you gets 25." in parse(running.messages[0].data).get_content()
    [bad] = report.problems
    assert (bad.recipient, bad.status) == ("bob@example.com", Status.SKIPPED)
    assert bad.message == "not sent: template error: integer division or modulo by zero"


# Header values as templates (issue 13, item 2).


def test_header_templates_render_per_row_and_refuse_line_breaks() -> None:
    p = Personalizer(
        subject="Hi",
        body="Hello\n",
        config=Path("c.yaml"),
        body_file=Path("msg.txt"),
        headers=[("X-Campaign", "november-{{ segment }}"), ("X-To", "{{ name }} <{{ email }}>")],
    )
    context = p.context(Mailbox("zoe@example.com", "Zoë"), {"segment": "vip"})
    assert p.headers(context) == [
        ("X-Campaign", "november-vip"),
        ("X-To", "Zoë <zoe@example.com>"),  # not autoescaped: a header is no HTML
    ]
    bad = p.context(Mailbox("a@example.com"), {"segment": "x\r\nBcc: evil@example.com"})
    with pytest.raises(ValueError) as caught:
        p.headers(bad)
    assert str(caught.value) == (
        "X-Campaign header contains a line break (CR/LF), which could inject headers"
    )
    nul = p.context(Mailbox("a@example.com"), {"segment": "x\x00"})
    with pytest.raises(ValueError, match="X-Campaign header contains a control character"):
        p.headers(nul)
    with pytest.raises(ValueError, match="X-Campaign header: template error: 'segment'"):
        p.headers(p.context(Mailbox("a@example.com"), {}))


def test_a_header_template_is_checked_against_the_lists_columns() -> None:
    p = Personalizer(
        subject="Hi",
        body="Hello\n",
        config=Path("c.yaml"),
        body_file=Path("msg.txt"),
        headers=[("X-Segment", "{{ segmnet }}")],
    )
    with pytest.raises(InputError) as caught:
        p.check_fields(("email", "segment"), Path("l.csv"))
    assert str(caught.value) == (
        "c.yaml: headers: X-Segment: uses 'segmnet', which l.csv does not have "
        "(it has email, segment; also email, name and row)"
    )
    with pytest.raises(InputError) as caught:
        Personalizer(
            subject="Hi",
            body="Hello\n",
            config=Path("c.yaml"),
            body_file=Path("msg.txt"),
            headers=[("X-Segment", "{{ segment }")],
        )
    assert str(caught.value).startswith("c.yaml: headers: X-Segment: template error:")


async def test_header_templates_reach_the_server_per_recipient(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    listing = tmp_path / "list.csv"
    listing.write_text(
        "email,first_name,segment\n"
        "ann@example.com,Ann,vip\n"
        'bob@example.com,Bob,"x\r\nBcc: evil@example.com"\n'  # refused: this row only
        'zoe@example.com,Zoë,"Школа и дом очень длинная строка, которая будет свёрнута"\n',
        encoding="utf-8",
    )
    path = personal_campaign(
        make_campaign,
        running,
        listing,
        subject="Hello {{ first_name }}",
        body="Hi {{ first_name }}\n",
        headers={
            "X-Campaign": "november-{{ segment }}",
            "X-Greeting": '{{ first_name | default("friend") }} & co',
            "Precedence": "bulk",  # no tag: the same in every message, built once
        },
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.counts[Status.ACCEPTED] == 2, report.problems
    [bad] = report.problems
    assert (bad.recipient, bad.message) == (
        "bob@example.com",
        f"{listing}:3: X-Campaign header contains a line break (CR/LF), which could inject headers",
    )
    assert all(b"evil" not in m.data for m in running.messages)
    got = {m.rcpt_tos[0]: m for m in running.messages}
    assert sorted(got) == ["ann@example.com", "zoe@example.com"]
    ann, zoe = parse(got["ann@example.com"].data), parse(got["zoe@example.com"].data)
    assert (ann["X-Campaign"], ann["X-Greeting"], ann["Precedence"]) == (
        "november-vip",
        "Ann & co",
        "bulk",
    )
    segment = "Школа и дом очень длинная строка, которая будет свёрнута"
    assert (zoe["X-Campaign"], zoe["X-Greeting"]) == (f"november-{segment}", "Zoë & co")
    head = got["zoe@example.com"].data.partition(b"\r\n\r\n")[0]
    assert head.isascii() and b"X-Campaign: =?utf-8?" in head  # RFC 2047, folded
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
