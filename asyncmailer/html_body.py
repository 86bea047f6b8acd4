"""An HTML message body: Markdown rendered to HTML, and the images it shows found beside it
and carried as related parts (``cid:`` links), so they show without fetching anything."""

from __future__ import annotations

import asyncio
import html as html_escape
import mimetypes
import re
from pathlib import Path

from .attachments import Attachment
from .errors import InputError

__all__ = ["MARKDOWN", "inline_images", "render_markdown"]

MARKDOWN = (".md", ".markdown")
HTML = (".html", ".htm")
_SRC = re.compile(r"""(?P<attr>\bsrc\s*=\s*)(?P<quote>["'])(?P<value>[^"']*)(?P=quote)""", re.I)
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*:|^//", re.IGNORECASE)  # https:, data:, //host


# A Jinja tag with the default syntax: {{ expression }}, {% statement %} or {# comment #}, its
# quoted strings skipped whole (so "}}" in one does not end it).
_STRING = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_JINJA = re.compile(
    rf"""\{{\{{(?:{_STRING}|[^"'}}]|\}}(?!\}}))*\}}\}}"""
    rf"""|\{{%(?:{_STRING}|[^"'%]|%(?!\}}))*%\}}"""
    r"|\{#.*?#\}",
    re.DOTALL,
)


class _Protected:
    """Jinja tags taken out of a Markdown template while it is rendered, and put back.

    Markdown would read a tag as text: quotes become ``&quot;``, ``_`` and ``*`` emphasis,
    a backslash an escape, so ``{{ name | default("friend") }}`` no longer parses. Each tag is
    replaced by a word of letters and digits, which no Markdown rule changes, and restored as
    written in the HTML made; the template is then rendered as HTML per recipient, its Markdown
    only once. A paragraph of nothing but statements and comments (``{% if vip %}`` on a line
    of its own) is unwrapped, so that no empty ``<p></p>`` is left where it stood.
    """

    def __init__(self, *sources: str) -> None:
        stem = "jinjatag"
        while any(stem in source for source in sources):
            stem += "x"  # a word the sources do not hold, so only the stand-ins are put back
        self._stem = stem
        self._tags: list[str] = []
        self._word = re.compile(rf"{stem}(\d+)z")
        self._alone = re.compile(rf"<p>((?:{stem}\d+z\s*)+)</p>\n?")

    def take(self, source: str) -> str:
        """`source` with its tags replaced by stand-ins."""
        return _JINJA.sub(self._stand_in, source)

    def _stand_in(self, match: re.Match[str]) -> str:
        self._tags.append(match[0])
        return f"{self._stem}{len(self._tags) - 1}z"

    def restore(self, html: str) -> str:
        """`html` with the tags back in place of their stand-ins."""
        html = self._alone.sub(self._unwrap, html)
        return self._word.sub(lambda match: self._tags[int(match[1])], html)

    def _unwrap(self, match: re.Match[str]) -> str:
        words = self._word.findall(match[1])
        if all(self._tags[int(n)].startswith(("{%", "{#")) for n in words):
            return "".join(self._tags[int(n)] for n in words) + "\n"
        return match[0]


def render_markdown(source: str, title: str, *, templates: bool = False) -> str:
    """A whole HTML document from Markdown (CommonMark, with tables), titled `title`. With
    `templates`, `source` and `title` are Jinja templates: their tags are kept out of the
    Markdown and come back as written (`_Protected`)."""
    from markdown_it import MarkdownIt

    protected = _Protected(source, title) if templates else None
    if protected is not None:
        source, title = protected.take(source), protected.take(title)
    body = MarkdownIt("commonmark").enable("table").render(source)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html_escape.escape(title)}</title></head>\n<body>\n{body}</body></html>\n"
    )
    return protected.restore(page) if protected is not None else page


async def inline_images(html: str, folder: Path) -> tuple[str, list[Attachment]]:
    """The images of `html` as related parts: ``cid:NAME`` names a file in `folder`; a
    relative path (``images/logo.png``) is read from `folder` and its link becomes
    ``cid:``. Remote and ``data:`` images stay as they are. Returns the HTML as sent and the
    images, each named by its Content-ID.

    :raises InputError: an image the HTML names is missing, outside `folder`, or not a file.
    """
    found: dict[str, tuple[str, Path]] = {}  # link as written -> (content id, file)
    root = folder.resolve()
    for match in _SRC.finditer(html):
        value = html_escape.unescape(match["value"]).strip()
        if value in found or not value:
            continue
        if value.lower().startswith("cid:"):
            name = value[4:]
            path = folder / name
        elif _REMOTE.match(value):
            continue
        else:
            path = folder / value
            name = _content_id(Path(value).name, {cid for cid, _ in found.values()})
        target = path.resolve()
        if not target.is_relative_to(root) or not await asyncio.to_thread(target.is_file):
            raise InputError(
                f"the HTML shows the image {value[:80]!r}: no such file in {folder}",
                path=path,
                field="file_with_message",
            )
        found[value] = (name, target)
    images = []
    for name, path in found.values():
        content_type = mimetypes.guess_type(path.name, strict=False)[0] or "image/png"
        data = await asyncio.to_thread(path.read_bytes)
        images.append(Attachment(name, content_type, data))

    def relink(match: re.Match[str]) -> str:
        value = html_escape.unescape(match["value"]).strip()
        if value in found and not value.lower().startswith("cid:"):
            return f"{match['attr']}{match['quote']}cid:{found[value][0]}{match['quote']}"
        return match[0]

    return _SRC.sub(relink, html), images


def _content_id(name: str, taken: set[str]) -> str:
    """A Content-ID for an image file: its name made safe, unique among the message's."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "image"
    candidate, number = safe, 1
    while candidate in taken:
        number += 1
        candidate = f"{number}-{safe}"
    return candidate
