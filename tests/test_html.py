"""HTML messages: Markdown or HTML with a text alternative, images carried as related parts,
personalised text and HTML (values escaped in the HTML), received and parsed."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from asyncmailer.config import load_campaign
from asyncmailer.errors import InputError
from asyncmailer.html_body import render_markdown
from asyncmailer.html_text import html_to_text
from asyncmailer.run.campaign import prepare_message, run_campaign

from .conftest import CampaignFactory, ServerFactory

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


async def test_a_markdown_newsletter_with_an_image_arrives_as_text_and_html(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "reliances" / "images").mkdir(parents=True)
    (tmp_path / "reliances" / "images" / "logo.png").write_bytes(PNG)
    news = tmp_path / "reliances" / "news.md"
    news.write_text("# November\n\nHello, *readers*.\n\n![logo](images/logo.png)\n")
    path = make_campaign(
        port=running.server.ssl_port,
        file_with_message="reliances/news.md",
        files={"report.pdf": b"%PDF-1.4"},
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    [received] = running.messages
    message = parsed(received.data)
    assert message.get_content_type() == "multipart/mixed"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "November" in text.get_content() and "Hello, readers." in text.get_content()
    assert "<em>readers</em>" in html.get_content()
    assert 'src="cid:logo.png"' in html.get_content()
    related = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert [p["Content-ID"] for p in related] == ["<logo.png>"]
    assert related[0].get_content() == PNG
    assert [a.get_filename() for a in message.iter_attachments()] == ["report.pdf"]


async def test_personalised_html_escapes_the_rows_values(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "reliances" / "hello.html").parent.mkdir(exist_ok=True)
    (tmp_path / "reliances" / "hello.html").write_text(
        "<html><body><p>Hello, {{ name }}!</p></body></html>\n"
    )
    (tmp_path / "list.csv").write_text(
        'email,name\nann@example.com,Ann\nbob@example.com,"<b>Bob</b>"\n'
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.csv",
        personalize=True,
        subject="For {{ name }}",
        file_with_message="reliances/hello.html",
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted
    by_rcpt = {m.rcpt_tos[0]: parsed(m.data) for m in running.messages}
    ann, bob = by_rcpt["ann@example.com"], by_rcpt["bob@example.com"]
    assert ann.get_body(("plain",)).get_content().strip() == "Hello, Ann!"  # type: ignore[union-attr]
    assert "Hello, Ann!" in ann.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hello, &lt;b&gt;Bob&lt;/b&gt;!" in bob.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert bob["Subject"] == "For <b>Bob</b>"


async def test_an_image_the_html_shows_must_be_there(
    make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    (tmp_path / "reliances").mkdir()
    (tmp_path / "reliances" / "news.html").write_text('<p><img src="missing.png"></p>')
    path = make_campaign(file_with_message="reliances/news.html")
    with pytest.raises(InputError, match=r"shows the image 'missing\.png': no such file"):
        await prepare_message(await load_campaign(path, env={}))


def test_the_text_alternative_keeps_paragraphs_items_and_links() -> None:
    html = (
        "<html><head><style>p{}</style></head><body><h1>News</h1><p>Read <a href="
        '"https://example.com/n">this</a>.<br>Then</p><ul><li>one</li><li>two</li></ul></body>'
    )
    assert (
        html_to_text(html) == "News\n\nRead this (https://example.com/n).\nThen\n\n- one\n- two\n"
    )


# Markdown templates: Jinja tags kept out of Markdown (issue 13, item 1).

TRICKY = """\
# Hello, {{ first_name | default("friend") }}

{% if city %}
You live in *{{ city }}*, {{ row["home city"] | upper }}.
{% endif %}

{# a comment with **stars**, "quotes" and_underscores_ #}

- {{ first_name | replace("_", " ") }} & {{ "<b>" ~ first_name }}
- [your page](https://example.com/u?e={{ email | urlencode }} "{{ 'title' }}")
- {{ "}}" }} {{ '%}' }} {{ 3 * 2 }}\\_{{ 1 < 2 }}

{% for tag in ("a_b", "c*d") %}{{ tag }}; {% endfor %}
"""


def test_jinja_tags_survive_markdown_as_written() -> None:
    page = render_markdown(TRICKY, 'Hi {{ first_name | default("you") }} & co', templates=True)
    assert '<title>Hi {{ first_name | default("you") }} &amp; co</title>' in page
    assert '<h1>Hello, {{ first_name | default("friend") }}</h1>' in page
    assert '<em>{{ city }}</em>, {{ row["home city"] | upper }}.' in page
    assert '{# a comment with **stars**, "quotes" and_underscores_ #}\n<ul>' in page
    assert '<li>{{ first_name | replace("_", " ") }} &amp; {{ "<b>" ~ first_name }}</li>' in page
    assert 'href="https://example.com/u?e={{ email | urlencode }}" title="{{ \'title\' }}"' in page
    assert '{% for tag in ("a_b", "c*d") %}{{ tag }}; {% endfor %}' in page
    assert "&quot;" not in page and "<strong>" not in page
    # Without templates, the same text is Markdown throughout (and the old problem is there).
    assert "&quot;friend&quot;" in render_markdown(TRICKY, "t")


def test_a_tag_on_a_line_of_its_own_leaves_no_empty_paragraph() -> None:
    page = render_markdown("{% if vip %}\n\nHello\n\n{% endif %}\n", "t", templates=True)
    assert "<body>\n{% if vip %}\n<p>Hello</p>\n{% endif %}\n</body>" in page
    # An expression alone is text, and stays a paragraph.
    assert "<p>{{ greeting }}</p>" in render_markdown("{{ greeting }}\n", "t", templates=True)


def test_a_document_holding_the_stand_in_word_keeps_it() -> None:
    page = render_markdown("jinjatag0z and {{ x }}\n", "t", templates=True)
    assert "<p>jinjatag0z and {{ x }}</p>" in page


async def test_a_personalised_markdown_newsletter_with_tricky_tags(
    smtp_server: ServerFactory, make_campaign: CampaignFactory, tmp_path: Path
) -> None:
    running = await smtp_server()
    (tmp_path / "reliances").mkdir(exist_ok=True)
    (tmp_path / "reliances" / "news.md").write_text(TRICKY)
    (tmp_path / "list.csv").write_text(
        "email,first_name,city,home city\nann@example.com,Ann_Lee,Oslo,Bergen\nbob@example.com,,,\n"
    )
    path = make_campaign(
        port=running.server.ssl_port,
        to=None,
        cc=None,
        recipients_file="list.csv",
        personalize=True,
        subject='News for {{ first_name or "you" }}',
        file_with_message="reliances/news.md",
        suffix=".yaml",
    )
    report = await run_campaign(await load_campaign(path, env={}))
    assert report.all_accepted, report.problems
    by_rcpt = {m.rcpt_tos[0]: parsed(m.data) for m in running.messages}
    ann, bob = by_rcpt["ann@example.com"], by_rcpt["bob@example.com"]
    assert (ann["Subject"], bob["Subject"]) == ("News for Ann_Lee", "News for you")
    html = ann.get_body(("html",))
    assert html is not None
    page = html.get_content()
    assert "<title>News for Ann_Lee</title>" in page and "<h1>Hello, Ann_Lee</h1>" in page
    assert "You live in <em>Oslo</em>, BERGEN." in page
    assert "<li>Ann Lee &amp; &lt;b&gt;Ann_Lee</li>" in page  # the value escaped, not obeyed
    assert 'href="https://example.com/u?e=ann%40example.com" title="title"' in page
    assert "}} %} 6_True" in page and "a_b; c*d; " in page and "{#" not in page
    bob_page = bob.get_body(("html",))
    assert bob_page is not None
    assert "You live in" not in bob_page.get_content()  # the {% if %} held
    text = ann.get_body(("plain",))
    assert text is not None and "You live in Oslo, BERGEN." in text.get_content()
