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


def render_markdown(source: str, title: str) -> str:
    """A whole HTML document from Markdown (CommonMark, with tables), titled `title`."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(source)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html_escape.escape(title)}</title></head>\n<body>\n{body}</body></html>\n"
    )


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
