"""Keeping the password out of everything a server says: a server that echoes it (in clear or
in the base64 AUTH sent) must not get it into output, reports or the journal."""

from __future__ import annotations

import base64

__all__ = ["MASK", "Scrubber"]

MASK = "********"


class Scrubber:
    """Replaces the password, in clear and in the base64 forms AUTH LOGIN and PLAIN send it,
    in any server text; a callable that returns the text unchanged when there is none."""

    __slots__ = ("_secrets",)

    def __init__(self, username: str | None, password: str | None) -> None:
        if not password:
            self._secrets: tuple[str, ...] = ()
            return
        user = (username or "").encode()
        secrets = {
            password,
            base64.b64encode(password.encode()).decode(),
            base64.b64encode(b"\0" + user + b"\0" + password.encode()).decode(),
        }
        # Longest first, so that no shorter secret leaves part of a longer one behind.
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def __repr__(self) -> str:
        return f"<Scrubber secrets={len(self._secrets)}>"

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
