"""`preview`: a message as a person reads it (headers decoded, its text, its other parts),
checked on messages the email package builds as the campaign's would be."""

from __future__ import annotations

from email.message import EmailMessage

from asyncmailer.preview import describe_size, preview


def _message(*, html: bool = False, text: str | None = "Привет!\nSecond line\n") -> bytes:
    message = EmailMessage()
    message["From"] = "Отправитель <sender@example.com>"
    message["To"] = "undisclosed-recipients:;"
    message["Subject"] = "Ноябрь: the report"
    if text is not None:
        message.set_content(text)
    if html:
        message.add_alternative("<p>Привет!</p>", subtype="html")
        html_part = message.get_body(("html",))
        assert html_part is not None
        html_part.add_related(b"\x89PNG" + bytes(96), "image", "png", cid="<logo.png>")
    message.add_attachment(b"x" * 3000, "application", "pdf", filename="отчёт.pdf")
    return message.as_bytes().replace(b"\n", b"\r\n")  # as the run writes it


def test_headers_are_decoded_and_the_text_shown_with_the_other_parts_listed() -> None:
    envelope = {
        "mail_from": "sender@example.com",
        "rcpt_to": [f"u{i}@example.com" for i in range(12)],
    }
    lines = preview(_message(), envelope)
    assert lines[0] == (
        "Envelope: from sender@example.com to 12 recipients "
        "(u0@example.com, u1@example.com, u2@example.com and 9 more)"
    )
    few = {"mail_from": "sender@example.com", "rcpt_to": ["to@example.com", "bcc@example.org"]}
    assert preview(_message(), few)[0] == (
        "Envelope: from sender@example.com to 2 recipients (to@example.com, bcc@example.org)"
    )
    assert "Subject: Ноябрь: the report" in lines
    assert "From: Отправитель <sender@example.com>" in lines
    assert not any(line.lower().startswith(("content-type", "mime-version")) for line in lines)
    text = lines.index("Привет!")
    assert lines[text + 1] == "Second line"
    assert lines[-2:] == ["Other parts:", "  attachment отчёт.pdf (application/pdf, 2.9 KB)"]


def test_the_text_is_cut_after_so_many_lines() -> None:
    body = "".join(f"line {n}\n" for n in range(30))
    lines = preview(_message(text=body), text_lines=5)
    assert "line 4" in lines and "line 5" not in lines
    assert "--- (25 more lines of text) ---" in lines


def test_an_html_message_shows_its_text_and_lists_the_html_and_its_images() -> None:
    lines = preview(_message(html=True))
    assert "Привет!" in lines
    others = lines[lines.index("Other parts:") + 1 :]
    assert others == [
        "  text/html, 22 bytes",
        "  inline <logo.png> (image/png, 100 bytes)",
        "  attachment отчёт.pdf (application/pdf, 2.9 KB)",
    ]


def test_control_characters_are_escaped() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("a\x1b[2Jb\n")
    assert "a\\x1b[2Jb" in preview(message.as_bytes())


def test_sizes() -> None:
    assert [describe_size(n) for n in (1, 54, 2150, 9 * 1024 * 1024)] == [
        "1 byte",
        "54 bytes",
        "2.1 KB",
        "9.0 MB",
    ]


def test_a_message_without_text_lists_its_parts_and_long_lines_are_cut() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("<p>" + "word " * 2000 + "</p>", subtype="html")
    lines = preview(message.as_bytes())
    (long,) = [line for line in lines if line.startswith("<p>word")]
    assert len(long) < 400 and long.endswith("more characters)")
    assert "Parts:" not in lines  # the HTML is the text shown


def test_attachment_sizes_are_counted_without_decoding_right() -> None:
    message = EmailMessage()
    message.set_content("text\n")
    for size in (1, 2, 3, 3000):
        message.add_attachment(bytes(size), "application", "octet-stream", filename=f"{size}.bin")
    shown = [line for line in preview(message.as_bytes()) if ".bin" in line]
    assert shown == [
        "  attachment 1.bin (application/octet-stream, 1 byte)",
        "  attachment 2.bin (application/octet-stream, 2 bytes)",
        "  attachment 3.bin (application/octet-stream, 3 bytes)",
        "  attachment 3000.bin (application/octet-stream, 2.9 KB)",
    ]
