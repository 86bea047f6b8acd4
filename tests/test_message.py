"""Message building: headers, subject encoding, attachments, DATA preparation. No network."""

from __future__ import annotations

import email
import email.header
import quopri
import random
import re
import string
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from asyncmailer.addresses import Mailbox, parse_mailbox
from asyncmailer.attachments import Attachment
from asyncmailer.dkim import DkimSigner, load_key
from asyncmailer.errors import InputError
from asyncmailer.message import (
    END_OF_DATA,
    POLICY,
    MessageTemplate,
    _address_header,
    _encode_text,
    _subject,
    envelope_id,
    load_body,
    message_ids,
    message_size,
    prepare_data,
)

from .conftest import SUBJECT, in_memory
from .dkimkeys import DOMAIN, SELECTOR, Kind, pem, verifies


def parse_payload(payload: bytes) -> EmailMessage:
    """What a receiving server stores: undo dot-stuffing and drop the final '.'."""
    assert payload.endswith(b"\r\n.\r\n")
    lines = payload[: -len(b".\r\n")].split(b"\r\n")
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    message = BytesParser(policy=policy.default).parsebytes(unstuffed)
    assert isinstance(message, EmailMessage)
    return message


def render(t: MessageTemplate, **kw: Any) -> bytes:
    """The whole DATA payload of one transaction, final "." included, in one piece."""
    return b"".join(in_memory(t.render_parts(**kw))) + END_OF_DATA


def template(subject: str = SUBJECT, body: str = "Hi\n", **kw: object) -> MessageTemplate:
    return MessageTemplate(
        sender=parse_mailbox("Отправитель <sender@example.com>"),
        subject=subject,
        body=body,
        **kw,  # type: ignore[arg-type]
    )


def test_sample_subject_round_trips_exactly() -> None:
    payload = render(template(), to=[parse_mailbox("alice@example.com")])
    message = parse_payload(payload)
    assert str(message["Subject"]) == SUBJECT
    assert all(len(line) <= 78 for line in payload.split(b"\r\n"))
    assert payload.isascii()


def test_subjects_that_python_folding_breaks_round_trip() -> None:
    # CPython gh-92081: the stock folder drops the space between these words.
    subject = (
        "very Тут There will long тема long 日本語 will a длинная here topic "
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx be очень будет очень тема There"
    )
    assert str(parse_payload(render(template(subject), to=[]))["Subject"]) == subject

    words = ["Тут", "будет", "тема", "There", "will", "a", "日本語", "ü", "x" * 30, "=?utf-8?q?x?="]
    rng = random.Random(7)
    for _ in range(300):
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        subject += rng.choice(["", " ", "  "])
        assert str(parse_payload(render(template(subject), to=[]))["Subject"]) == subject


def test_headers_to_cc_no_bcc_date_and_unique_message_ids() -> None:
    t = template()
    to = [parse_mailbox("alice@example.com"), parse_mailbox('"Bob, B." <bob@example.org>')]
    cc = [parse_mailbox("Кэрол <carol@example.net>")]
    first = parse_payload(render(t, to=to, cc=cc))
    second = parse_payload(render(t, to=to, cc=cc))

    assert [a.addr_spec for a in first["To"].addresses] == ["alice@example.com", "bob@example.org"]
    assert first["To"].addresses[1].display_name == "Bob, B."
    assert first["Cc"].addresses[0].display_name == "Кэрол"
    assert first["From"].addresses[0].display_name == "Отправитель"
    assert first["Bcc"] is None
    assert first["Date"].datetime is not None
    assert first["Message-ID"] != second["Message-ID"]
    assert str(first["Message-ID"]).endswith("@example.com>")


def test_only_bcc_gives_undisclosed_recipients() -> None:
    message = parse_payload(render(template(), to=[]))
    assert str(message["To"]) == "undisclosed-recipients:;"


def test_body_is_utf8_text_with_line_endings_normalised() -> None:
    body = "Привет\r\nline two\rline three\n.starts with a dot\n"
    message = parse_payload(render(template(body=body), to=[]))
    text = message.get_body(("plain",))
    assert text is not None
    assert text.get_content_charset() == "utf-8"
    # Canonical form: every line break is CRLF, whatever the file used.
    assert text.get_content() == "Привет\r\nline two\r\nline three\r\n.starts with a dot\r\n"


def test_attachments_are_byte_identical_with_names_and_types() -> None:
    attachments = [
        Attachment("отчёт за ноябрь.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(range(256))),
        Attachment("notes.txt", "text/plain", b"line\r\n.dot line\n\x00binary?"),
        Attachment("photo.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\xff" * 5000),
    ]
    message = parse_payload(render(template(attachments=attachments), to=[]))
    received = list(message.iter_attachments())
    assert [a.get_filename() for a in received] == [a.filename for a in attachments]
    assert [a.get_content_type() for a in received] == [a.content_type for a in attachments]
    for sent, got in zip(attachments, received, strict=True):
        assert got.get_payload(decode=True) == sent.data


def test_shared_part_is_built_once() -> None:
    t = template(attachments=[Attachment("a.bin", "application/octet-stream", b"x" * 100_000)])
    one = render(t, to=[parse_mailbox("a@example.com")], message_id="<1@example.com>")
    # The encoded attachment is the same object's bytes, written as is after each head.
    head_one, shared_one = t.render_parts(
        to=[parse_mailbox("a@example.com")], message_id="<1@example.com>"
    )
    head_two, shared_two = t.render_parts(to=[parse_mailbox("b@example.com")])
    assert isinstance(head_one, bytes) and isinstance(head_two, bytes)
    assert isinstance(shared_one, bytes)
    assert shared_one is shared_two
    assert one == head_one + shared_one + b".\r\n"
    assert b"a@example.com" in head_one and b"b@example.com" in head_two
    assert len(shared_one) > 100_000


@pytest.mark.parametrize(
    "payload",
    [
        b"Hi\n.\nMAIL FROM:<evil@example.com>\n",
        b"Hi\r.\rMAIL FROM:<evil@example.com>\r",
        b"Hi\n.\r\nMAIL FROM:<evil@example.com>\r\n",
        b"Hi\r\n.\nMAIL FROM:<evil@example.com>\n",
        b"Hi\r\n.\r\nMAIL FROM:<evil@example.com>\r\n",
    ],
)
def test_prepare_data_defeats_smuggling(payload: bytes) -> None:
    data = prepare_data(payload)
    assert data.endswith(b"\r\n.\r\n")
    body = data[: -len(b".\r\n")]
    # The only end-of-data sequence is the one we append.
    assert b"\r\n.\r\n" not in body
    assert b"\r\n..\r\n" in body
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")


def test_prepare_data_stuffs_a_leading_dot_on_the_first_line() -> None:
    assert prepare_data(b".hidden\r\nok") == b"..hidden\r\nok\r\n.\r\n"
    assert prepare_data(b"x", terminate=False) == b"x\r\n"


def test_no_attachments_is_a_plain_text_message() -> None:
    message = parse_payload(render(template(), to=[]))
    assert message.get_content_type() == "text/plain"


async def test_load_body_rejects_non_utf8_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "msg.txt"
    path.write_bytes(b"line one\nline two\n" + "третья".encode("cp1251") + b"\n")
    with pytest.raises(InputError) as caught:
        await load_body(path)
    assert str(caught.value) == f"{path}:3: not valid UTF-8 text (save the file as UTF-8)"


async def test_load_body_rejects_nul_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "msg.txt"
    path.write_bytes(b"ok\nok\x00\n")
    with pytest.raises(InputError, match=r"msg\.txt:2: contains a NUL byte"):
        await load_body(path)


async def test_load_body_strips_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "msg.txt"
    path.write_bytes(b"\xef\xbb\xbfHello")
    assert await load_body(path) == "Hello"


def _package_fold(name: str, value: str) -> bytes:
    """What the email package writes for a header (the slow path the fast ones must match)."""
    folded: str = POLICY.header_factory(name, value).fold(policy=POLICY)
    return folded.encode("ascii")


def _package_text(text: str) -> bytes:
    part = EmailMessage(policy=POLICY)
    part.set_content(text, charset="utf-8", cte="quoted-printable")
    return prepare_data(part.as_bytes(policy=POLICY).partition(b"\r\n\r\n")[2], terminate=False)


def test_personal_parts_match_the_email_package() -> None:
    # Subjects, names in To and texts are written without the email package when it would
    # change nothing; random ones from a fixed seed, checked against the package.
    chance = random.Random(20261126)
    printable = string.ascii_letters + string.digits + " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t"
    for _ in range(3000):
        subject = "".join(chance.choice(printable) for _ in range(chance.randint(0, 90)))
        if subject.isascii() and "=?" not in subject:  # the others go through email.header
            assert _subject(subject) == _package_fold("Subject", subject), subject
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-. "
    for _ in range(3000):
        name = "".join(chance.choice(atext) for _ in range(chance.randint(1, 60))).strip()
        mailbox = Mailbox("user@example.com", name)
        if "=?" not in name:  # those are encoded so that clients show them as written
            assert _address_header("To", [mailbox]) == _package_fold("To", str(mailbox)), name
    # Texts are encoded by binascii, not the email package: the same text once decoded, in
    # lines of at most 76 characters, dot-stuffed, with CRLF only.
    pieces = ["a", "Z", " ", "\t", "\n", "\r\n", "\r", ".", "=", "é", "日", "x" * 80, "\u2028"]
    for _ in range(3000):
        text = "".join(chance.choice(pieces) for _ in range(chance.randint(0, 40)))
        encoded = _encode_text(text)
        assert encoded.isascii() and encoded.endswith(b"\r\n"), repr(text)
        lines = encoded.split(b"\r\n")[:-1]
        assert b"\r" not in encoded.replace(b"\r\n", b"") and b"\n" not in b"".join(lines)
        assert all(len(line) <= 76 + line.startswith(b".") for line in lines), repr(text)
        unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
        decoded = quopri.decodestring(unstuffed + b"\r\n")
        assert decoded == b"\r\n".join(text.encode().splitlines()) + b"\r\n", repr(text)
        package = _package_text(text)  # what the email package writes, decoded alike
        assert decoded == quopri.decodestring(
            b"\r\n".join(
                line[1:] if line.startswith(b".") else line for line in package.split(b"\r\n")
            )
        ), repr(text)


def test_a_name_that_looks_like_an_encoded_word_shows_as_written() -> None:
    mailbox = Mailbox("a@example.com", "=?utf-8?b?QWRtaW4=?=")  # "Admin", once decoded
    header = _address_header("To", [mailbox])
    parsed = email.message_from_bytes(header + b"\r\n", policy=policy.default)
    assert parsed["To"].addresses[0].display_name == "=?utf-8?b?QWRtaW4=?="


@pytest.mark.parametrize(
    "name",
    [
        "=?x?= " + "word " * 250,  # took the encoded-word path: one LF-folded line of 1,311
        "Bartholomew" * 100,  # one word of 1,100 letters: the email package cannot fold it
        "Élodie " + "é" * 600,
    ],
)
def test_a_long_display_name_keeps_every_line_within_998_and_ends_it_with_crlf(
    name: str,
) -> None:
    # A list row's name, or the sender's: what is written must stay a valid RFC 5322 head
    # (a bare LF is refused since the SMTP smuggling fixes; over 998 octets, 500 Line too long).
    for field in ("To", "From"):
        header = _address_header(field, [Mailbox("a@example.com", name), Mailbox("b@example.com")])
        lines = header.split(b"\r\n")
        assert lines[-1] == b"" and b"\n" not in header.replace(b"\r\n", b"")
        assert max(len(line) for line in lines) <= 998
        # RFC 2047 says 75; the email package's folder (a name with no "=?") writes up to 76.
        assert all(len(word) <= 76 for word in re.findall(rb"=\?[^?]+\?[qQbB]\?[^?]*\?=", header))
        # The classic decoder (what mail clients do) gives the name back as written.
        parsed = email.message_from_bytes(header + b"\r\n", policy=policy.compat32)
        decoded = str(email.header.make_header(email.header.decode_header(parsed[field])))
        assert decoded.startswith(name.strip()[:200]) and "<a@example.com>" in decoded


def test_a_sender_name_that_looks_like_an_encoded_word_shows_as_written() -> None:
    # "=?utf-8?b?UGF5UGFs?=" would be shown as "PayPal" if written as it is.
    data = render(
        MessageTemplate(
            sender=Mailbox("news@example.com", "=?utf-8?b?UGF5UGFs?="), subject="S", body="b\n"
        ),
        to=[Mailbox("a@example.com")],
    )
    assert parse_payload(data)["From"].addresses[0].display_name == "=?utf-8?b?UGF5UGFs?="


def test_personal_headers_are_encoded_and_round_trip() -> None:
    template = MessageTemplate(
        sender=Mailbox("me@example.com"),
        subject="unused",
        body="unused",
        personal=True,
        headers=[("X-Shared", "same")],
    )
    values = [
        "plain",
        "x" * 120,  # ASCII, folded
        "Тут будет очень длинная тема There will be a very long topic here " * 2,
        "=?utf-8?q?not-an-encoded-word?=",
        "日本語  two  spaces",
    ]
    for value in values:
        parts = template.render_parts(
            to=[Mailbox("a@example.com")], subject="S", text="t\n", headers=[("X-Mine", value)]
        )
        data = b"".join(in_memory(parts))
        head = data.partition(b"\r\n\r\n")[0]
        assert head.isascii() and all(len(line) <= 78 for line in head.split(b"\r\n"))
        message = BytesParser(policy=policy.default).parsebytes(data)
        assert message["X-Mine"] == value and message["X-Shared"] == "same"


# --- DKIM: the signature goes on top of each message's head ------------------------------


def _signed_template(kind: Kind = "ed25519", **keys: Any) -> MessageTemplate:
    signer = DkimSigner(DOMAIN, SELECTOR, load_key(pem(kind)))
    settings: dict[str, Any] = {
        "sender": Mailbox("sender@example.com", "Sender"),
        "subject": SUBJECT,
        "body": ".a line with a dot\nand trailing white space \t\n\n",
        **keys,
    }
    return MessageTemplate(dkim=signer, **settings)


def _unstuffed(parts: Sequence[bytes]) -> bytes:
    return b"".join(_STUFFED.sub(b".", part) for part in parts)


_STUFFED = re.compile(rb"^\.\.", re.MULTILINE)


def test_a_signed_message_verifies_as_received_and_its_size_counts_the_signature() -> None:
    template = _signed_template(attachments=[Attachment("a.txt", "text/plain", b"x\r\n.y\r\n")])
    parts = in_memory(template.render_parts(to=[Mailbox("a@example.com")], message_id="<1@x>"))
    head = parts[0]
    assert head.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n")
    assert b"\r\n.." in parts[-1]  # stuffed for DATA: signed as it arrives, unstuffed
    assert verifies(_unstuffed(parts), "ed25519")
    signature = head[: head.index(b"Date: ")]
    assert message_size(parts) == len(b"".join(parts)) + len(END_OF_DATA)
    unsigned = MessageTemplate(
        sender=Mailbox("sender@example.com", "Sender"),
        subject=SUBJECT,
        body=".a line with a dot\nand trailing white space \t\n\n",
        attachments=[Attachment("a.txt", "text/plain", b"x\r\n.y\r\n")],
    )
    plain = unsigned.render_parts(to=[Mailbox("a@example.com")], message_id="<1@x>")
    assert message_size(parts) - message_size(plain) == len(signature)


def test_one_body_hash_for_shared_bodies_and_one_per_personal_body() -> None:
    shared = _signed_template()
    one = in_memory(shared.render_parts(to=[Mailbox("a@example.com")]))
    two = in_memory(shared.render_parts(to=[Mailbox("b@example.com")]))
    assert one[1] is two[1]  # the shared bytes, not copied

    def tags(parts: Sequence[bytes]) -> dict[str, str]:
        header = parse_payload(b"".join(parts) + END_OF_DATA)["DKIM-Signature"]
        return dict(t.strip().split("=", 1) for t in str(header).split(";") if t.strip())

    assert tags(one)["bh"] == tags(two)["bh"] and tags(one)["b"] != tags(two)["b"]
    personal = _signed_template("rsa-2048", personal=True)
    made = [
        in_memory(personal.render_parts(to=[Mailbox(a)], subject="Hi", text=f"For {a}\n"))
        for a in ("a@example.com", "b@example.com")
    ]
    assert tags(made[0])["bh"] != tags(made[1])["bh"]
    assert all(verifies(_unstuffed(parts), "rsa-2048") for parts in made)
    assert personal.renders_slowly  # an RSA signature: made in a thread
    assert not shared.renders_slowly  # Ed25519, nothing spooled: on the event loop


def test_a_personal_html_message_with_an_image_verifies() -> None:
    image = Attachment("logo.png", "image/png", b"\x89PNG\r\n" + bytes(range(256)))
    template = _signed_template(personal=True, html="<p>stand-in</p>", images=[image])
    parts = template.render_parts(
        to=[Mailbox("a@example.com")], subject="Hi Ann", text="Hi Ann\n", html="<p>Hi Ann</p>\n"
    )
    data = _unstuffed(in_memory(parts))
    assert b"Hi Ann" in data and verifies(data, "ed25519")
    assert not verifies(data.replace(b"<p>Hi Ann", b"<p>Hi Eve"), "ed25519")


def test_the_envelope_id_is_the_run_and_the_message_ids_left_part() -> None:
    [message_id] = message_ids("example.com", 1)
    envid = envelope_id("20261202T031423Z-2", message_id)
    run, _, left = envid.partition(".")  # run ids hold no dot
    assert run == "20261202T031423Z-2" and f"<{left}@example.com>" == message_id
    assert len(envid) <= 100  # RFC 3461's limit
