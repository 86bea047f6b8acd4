"""Keeping the password and the XOAUTH2 access token out of everything a server says: a server
that echoes one (in clear or in the base64 AUTH sent) must not get it into output, reports or
the journal."""

from __future__ import annotations

import base64

__all__ = ["MASK", "Scrubber"]

MASK = "********"


class Scrubber:
    """Replaces the password, in clear and in the base64 forms AUTH LOGIN and PLAIN send it,
    and each access token, in clear and in the base64 form AUTH XOAUTH2 sends it, in any
    server text; a callable that returns the text unchanged when there is none."""

    __slots__ = ("_secrets",)

    def __init__(
        self, username: str | None, password: str | None, *, tokens: tuple[str, ...] = ()
    ) -> None:
        user = (username or "").encode()
        secrets: set[str] = set()
        if password:
            secrets |= {
                password,
                base64.b64encode(password.encode()).decode(),
                base64.b64encode(b"\0" + user + b"\0" + password.encode()).decode(),
            }
        for token in filter(None, tokens):
            xoauth2 = b"user=" + user + b"\x01auth=Bearer " + token.encode() + b"\x01\x01"
            secrets |= {token, base64.b64encode(xoauth2).decode()}
        # Longest first, so that no shorter secret leaves part of a longer one behind.
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def __repr__(self) -> str:
        return f"<Scrubber secrets={len(self._secrets)}>"

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
