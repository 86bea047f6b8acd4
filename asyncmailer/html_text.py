"""The plain-text alternative of an HTML message, when the campaign gives none: the text a
reader sees, with paragraphs, line breaks, list items and link targets kept.

Hand-written on the standard library's HTML parser: html2text is GPL-licensed and inscriptis
brings lxml and requests along (docs/design.md: HTML messages).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_BLOCKS = {
    "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
}  # fmt: skip
_HIDDEN = {"head", "script", "style", "template", "title"}
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.hidden = 0
        self.pre = 0
        self.links: list[str | None] = []
        self.link_text: list[str] = []

    def _break(self, blank: bool = False) -> None:
        if self.lines[-1].strip():
            self.lines.append("")
        if blank and len(self.lines) > 1 and self.lines[-2].strip():
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.lines.append("")
        elif tag == "pre":
            self.pre += 1
            self._break(blank=True)
        elif tag == "li":
            self._break()
            self.lines[-1] = "- "
        elif tag in _BLOCKS:
            self._break(blank=tag in {"p", "h1", "h2", "h3", "blockquote", "table"})
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))
            self.link_text.append("")
        elif tag == "img" and (alt := dict(attrs).get("alt")):
            self._write(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self._break(blank=True)
        elif tag == "a" and self.links:
            href, text = self.links.pop(), self.link_text.pop()
            if href and not href.startswith(("#", "cid:")) and href != text.strip():
                self._write(f" ({href})")
        elif tag in _BLOCKS:
            self._break(blank=tag in {"p", "h1", "h2", "h3", "blockquote", "table"})

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if self.pre:
            first, *rest = data.split("\n")
            self.lines[-1] += first
            self.lines.extend(rest)
            return
        self._write(_SPACES.sub(" ", data))

    def _write(self, text: str) -> None:
        if not self.lines[-1] or self.lines[-1].endswith((" ", "- ")):
            text = text.lstrip()
        self.lines[-1] += text
        for index in range(len(self.link_text)):
            self.link_text[index] += text


def html_to_text(html: str) -> str:
    """The text of `html`, one line per line break, paragraphs apart, ending in a newline."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = [line.rstrip() for line in parser.lines]
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"
