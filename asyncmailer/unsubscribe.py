"""One-click unsubscribe (RFC 8058, RFC 2369): the List-Unsubscribe headers of a recipient's
message, with a token the unsubscribe endpoint can check without a database.

The token is ``<address>.<signature>``, both base64url without padding: the signature is an
HMAC-SHA256 of the lower-cased address under the campaign's key. An endpoint holding the key
calls `verify(token, key)` to get the address back, or None for a forged or altered token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["EMAIL", "ONE_CLICK", "TOKEN", "ListUnsubscribe", "token", "verify"]

TOKEN = "{{ unsubscribe_token }}"  # where a URL (or the mailto subject) takes the token
EMAIL = "{{ email }}"  # where a URL takes the address itself (URL-encoded)
ONE_CLICK = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(address: str, key: bytes) -> bytes:
    return hmac.new(key, address.lower().encode("utf-8"), hashlib.sha256).digest()


def token(address: str, key: bytes) -> str:
    """The unsubscribe token of `address` under `key`."""
    return f"{_b64(address.lower().encode('utf-8'))}.{_b64(_signature(address, key))}"


def verify(candidate: str, key: bytes) -> str | None:
    """The address a token was made for, when it was made with `key`; else None."""
    encoded, _, signature = candidate.partition(".")
    try:
        address = _unb64(encoded).decode("utf-8")
        given = _unb64(signature)
    except (ValueError, UnicodeDecodeError):
        return None
    return address if hmac.compare_digest(given, _signature(address, key)) else None


@dataclass(frozen=True, slots=True)
class ListUnsubscribe:
    """An https URL and/or a mailto address for unsubscribing; the URL may carry the
    recipient's token (`TOKEN`) and address (`EMAIL`); a mailto gets the token as its
    subject. `key` signs the tokens (required when a token is used)."""

    url: str | None = None
    mailto: str | None = None
    key: bytes = field(default=b"", repr=False)

    @property
    def personal(self) -> bool:
        """Each recipient's header differs: one recipient per message."""
        return self.mailto is not None or (
            self.url is not None and (TOKEN in self.url or EMAIL in self.url)
        )

    def header(self, address: str) -> bytes:
        """The List-Unsubscribe header (and the one-click one, with an https URL) for
        `address`, CRLF-terminated, ASCII."""
        links = []
        signed = token(address, self.key) if self.key else ""
        if self.url is not None:
            url = self.url.replace(TOKEN, signed).replace(
                EMAIL, urllib.parse.quote(address, safe="@")
            )
            links.append(f"<{url}>")
        if self.mailto is not None:
            subject = urllib.parse.quote(f"unsubscribe {signed}".strip())
            links.append(f"<mailto:{self.mailto}?subject={subject}>")
        header = ("List-Unsubscribe: " + ",\r\n ".join(links) + "\r\n").encode("ascii")
        return header + ONE_CLICK if self.url is not None else header
