"""Text from lists, files and servers made safe to print: no control character reaches a
terminal as itself (an escape sequence could clear the screen or retitle the window)."""

from __future__ import annotations

import unicodedata

__all__ = ["printable", "shorten"]

_SHOWN_AS_IS = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def printable(text: str) -> str:
    """`text` with control, format and separator characters written as escapes (``\\x1b``,
    ``\\u202e``); a tab stays a tab. Plain text comes back unchanged (the same object)."""
    if text.isprintable():
        return text
    return "".join(
        char
        if char == "\t" or unicodedata.category(char) not in _SHOWN_AS_IS
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def shorten(text: str, limit: int = 200) -> str:
    """At most `limit` characters of `text`, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
