"""DKIM signatures (RFC 6376, relaxed/relaxed; rsa-sha256, and ed25519-sha256 of RFC 8463):
the private key, the body hash, and the DKIM-Signature header of one message."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, cast

from .attachments import Spooled

# cryptography is imported by what loads or uses a key, not with this module: a campaign
# without dkim: does not pay for its import at every start (docs/design.md, start-up).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

__all__ = [
    "MIN_RSA_BITS",
    "OVERSIGNED",
    "SIGNED",
    "Algorithm",
    "BodyHash",
    "DkimKey",
    "DkimKeyError",
    "DkimSigner",
    "header_fields",
    "load_key",
]

MIN_RSA_BITS = 1024  # RFC 8301: verifiers must refuse smaller RSA keys
_WEAK_RSA_BITS = 2048  # what Gmail, Yahoo and Microsoft expect (RFC 8301 recommends it)

# The header fields signed when the message has them (lower case, as h= lists them).
SIGNED = (
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
# Listed once more than the message has them, present or not: a copy added on the way (a
# second From shown above the signed one, a Reply-To, another unsubscribe link) breaks the
# signature (RFC 6376 8.15).
OVERSIGNED = frozenset(
    {"from", "reply-to", "subject", "to", "cc", "list-unsubscribe", "list-unsubscribe-post"}
)

_SIGNED_BYTES = tuple(name.encode("ascii") for name in SIGNED)
_CHUNK = 1 << 20  # a spooled attachment is hashed a MiB at a time, never read whole
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)  # SMTP's dot-stuffing, undone
_WSP = re.compile(rb"[ \t]+")
_FIELD = re.compile(rb"([^:\r\n]+):(.*?\r\n)(?![ \t])", re.DOTALL)
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_LINE = 76  # a folded line of the DKIM-Signature header, at most


class Algorithm(StrEnum):
    """The a= tag: how the message's hash is signed."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


class DkimKeyError(ValueError):
    """A key file that cannot sign: not a PEM private key, encrypted, of a kind DKIM does not
    use, or an RSA key under `MIN_RSA_BITS`. Its text never holds any of the key."""


class DkimKey:
    """A private key that signs DKIM: RSA or Ed25519. Its `repr` says only its kind and size,
    so it cannot leak into a log or a traceback."""

    __slots__ = ("_key", "_rsa", "algorithm", "bits")

    def __init__(self, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        self._key = key
        # RSA's padding and hash, made once (None: Ed25519, which takes neither).
        self._rsa: tuple[AsymmetricPadding, HashAlgorithm] | None = None
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = Algorithm.RSA_SHA256
            self.bits = key.key_size
            self._rsa = (padding.PKCS1v15(), hashes.SHA256())
        else:
            self.algorithm = Algorithm.ED25519_SHA256
            self.bits = 256

    def __repr__(self) -> str:
        return f"<DkimKey {self.algorithm} {self.bits} bits>"

    __str__ = __repr__

    @property
    def weak(self) -> bool:
        """An RSA key under 2048 bits: it signs, but large providers may not trust it."""
        return self.algorithm is Algorithm.RSA_SHA256 and self.bits < _WEAK_RSA_BITS

    def sign(self, data: bytes) -> bytes:
        """The signature of the canonical header data (RFC 6376 3.7; RFC 8463 3: Ed25519
        signs the data's SHA-256 hash)."""
        if self._rsa is not None:
            padding, algorithm = self._rsa
            return cast("rsa.RSAPrivateKey", self._key).sign(data, padding, algorithm)
        ed_key = cast("ed25519.Ed25519PrivateKey", self._key)
        return ed_key.sign(hashlib.sha256(data).digest())

    def public_forms(self) -> tuple[str, frozenset[bytes]]:
        """The ``k=`` of this key's DNS record, and the forms its public key takes in a
        record's ``p=``: for RSA the SubjectPublicKeyInfo (RFC 6376 3.6.1) or the bare
        RSAPublicKey some publish, for Ed25519 the 32 raw bytes (RFC 8463)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        public = self._key.public_key()
        der = serialization.Encoding.DER
        if isinstance(public, rsa.RSAPublicKey):
            forms = {
                public.public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo),
                public.public_bytes(der, serialization.PublicFormat.PKCS1),
            }
            return "rsa", frozenset(forms)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519", frozenset({raw})

    def public_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        public = self._key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def load_key(pem: bytes) -> DkimKey:
    """The private key of a PEM file (PKCS#8 ``BEGIN PRIVATE KEY`` or ``BEGIN RSA PRIVATE
    KEY``), unencrypted.

    :raises DkimKeyError: saying what is wrong, never quoting the file.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.utils import CryptographyDeprecationWarning

    if b"-----BEGIN" not in pem:
        raise DkimKeyError("not a PEM private key (expected -----BEGIN PRIVATE KEY-----)")
    if b"PRIVATE KEY-----" not in pem and (b"PUBLIC KEY-----" in pem or b"CERTIFICATE" in pem):
        raise DkimKeyError(
            "a public key or a certificate: key_file is the private key (the public key is "
            "what goes in DNS)"
        )
    try:
        with warnings.catch_warnings():
            # cryptography warns as it loads a DSA key (deprecated): named below instead.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography says so for a key with a passphrase
        raise DkimKeyError(
            "the key is encrypted; sign with an unencrypted copy kept with chmod 600 "
            "(openssl pkey -in KEY -out dkim.pem)"
        ) from None
    except UnsupportedAlgorithm:
        raise DkimKeyError("a kind of key DKIM does not use; use RSA or Ed25519") from None
    except ValueError:  # its text may describe the data: never passed on
        raise DkimKeyError(
            "not a PEM private key, or a damaged one (expected -----BEGIN PRIVATE KEY-----)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"an RSA key of {key.key_size} bits; DKIM needs {MIN_RSA_BITS} or more "
                f"(verifiers refuse smaller ones), and providers expect {_WEAK_RSA_BITS}"
            )
        return DkimKey(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        kind = "an EC (ECDSA) key"
    elif isinstance(key, ed448.Ed448PrivateKey):
        kind = "an Ed448 key"
    elif _is_dsa(key):
        kind = "a DSA key"
    else:
        kind = "another kind"
    raise DkimKeyError(f"{kind}; DKIM signs with RSA or Ed25519")


def _is_dsa(key: object) -> bool:
    # Even naming cryptography's DSA class warns (deprecated since cryptography 51); it may
    # go altogether, and then no DSA key loads and none reaches here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from cryptography.hazmat.primitives.asymmetric import dsa

            return isinstance(key, dsa.DSAPrivateKey)
        except (ImportError, AttributeError):
            return False


def header_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """Each header field of `block` (whole CRLF-terminated fields, folded or not) as its
    lower-case name and its relaxed canonical form (RFC 6376 3.4.2: the value unfolded, white
    space runs as one space, none around the colon or at the ends), which is what is signed:
    made once for the fields every message shares."""
    fields = []
    for match in _FIELD.finditer(block):
        name = match[1].strip().lower()
        value = _WSP.sub(b" ", _FOLD.sub(b"", match[2])).strip(b" \r\n")
        fields.append((name, name + b":" + value + b"\r\n"))
    return fields


class BodyHash:
    """The body hash (bh=) of a message's body as it goes after DATA: dot-stuffed, CRLF lines.

    The body is canonicalised as it is fed (RFC 6376 3.4.4, relaxed: the stuffing undone,
    white space runs as one space, none at the end of a line, no empty lines at the end) and
    hashed, so bytes fed once need not be kept. `copy()` lets a personal message go on from
    the bytes it shares with every other message.
    """

    __slots__ = ("_blank", "_hash", "_tail")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._tail = b""  # the start of a line not yet ended
        self._blank = 0  # empty lines held back: they only count if a line follows

    def copy(self) -> BodyHash:
        other = BodyHash.__new__(BodyHash)
        other._hash = self._hash.copy()
        other._tail = self._tail
        other._blank = self._blank
        return other

    def update(self, data: bytes) -> None:
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        lines, self._tail = data[:cut], data[cut:]
        if lines:
            self._lines(lines)

    def update_part(self, part: bytes | Spooled) -> None:
        """Feed one part of a message; a spooled one is read a chunk at a time (blocking:
        call it in a thread)."""
        if isinstance(part, bytes):
            self.update(part)
            return
        for offset, count in part.chunks(_CHUNK):
            self.update(part.read(offset, count))

    def _lines(self, lines: bytes) -> None:
        lines = _LEADING_DOT.sub(b"", lines)  # each line starts a line: the ^ is right
        lines = _WSP.sub(b" ", lines).replace(b" \r\n", b"\r\n")
        text = lines.rstrip(b"\r\n")
        if not text:
            self._blank += lines.count(b"\n")
            return
        if self._blank:
            self._hash.update(b"\r\n" * self._blank)
        self._hash.update(text)
        self._hash.update(b"\r\n")
        self._blank = lines.count(b"\n", len(text)) - 1

    def value(self) -> str:
        """The bh= value of everything fed so far; more may still be fed after."""
        done = self.copy()
        if done._tail:  # a body not ending in CRLF gets one (RFC 6376 3.4.4)
            done._lines(done._tail + b"\r\n")
        return base64.b64encode(done._hash.digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class DkimSigner:
    """Signs messages as `domain` with the key published at `selector`."""

    domain: str
    selector: str
    key: DkimKey

    def signature(
        self, fields: Sequence[tuple[bytes, bytes]], body_hash: str, *, timestamp: int
    ) -> bytes:
        """The DKIM-Signature header field (folded, CRLF-terminated) of a message with the
        header `fields` (`header_fields`, in the order written) and the body hash `body_hash`
        (`BodyHash.value`), signed at `timestamp` (t=)."""
        present: dict[bytes, list[bytes]] = {}
        for field_name, field in fields:
            present.setdefault(field_name, []).append(field)
        counts: list[int] = []
        data: list[bytes] = []
        for name in _SIGNED_BYTES:
            found = present.get(name, ())
            counts.append(len(found))
            # A verifier takes a name's fields from the bottom up (RFC 6376 5.4.2).
            data += reversed(found)
        head = (
            f"DKIM-Signature: v=1; a={self.key.algorithm}; c=relaxed/relaxed;\r\n"
            f"\td={self.domain}; s={self.selector}; t={timestamp};\r\n"
            f"\th={_h_tag(tuple(counts))};\r\n\tbh={body_hash};\r\n\tb="
        ).encode("ascii")
        [(_, canonical)] = header_fields(head + b"\r\n")
        data.append(canonical.removesuffix(b"\r\n"))
        signed = base64.b64encode(self.key.sign(b"".join(data)))
        first = _LINE - len(b"\tb=")
        pieces = [signed[:first]] + [
            signed[at : at + _LINE - 1] for at in range(first, len(signed), _LINE - 1)
        ]
        return head + b"\r\n\t".join(pieces) + b"\r\n"


@functools.lru_cache(maxsize=64)
def _h_tag(counts: tuple[int, ...]) -> str:
    """h= for a message with `counts` fields of each name of `SIGNED`: each name as often as
    the message has it, an over-signed one once more. An h= entry past the last field of its
    name stands for none, and so for "no more of these" (for a header the message lacks:
    "none of these"). Folded before a name where a line would grow too long; the same few
    shapes recur, so each is made once."""
    names = [
        name
        for name, count in zip(SIGNED, counts, strict=True)
        for _ in range(count + (name in OVERSIGNED))
    ]
    lines = [""]
    for name in names:
        piece = f":{name}" if lines[-1] else name
        if lines[-1] and len(lines[-1]) + len(piece) + len("\th=") > _LINE:
            lines.append(f":{name}")
        else:
            lines[-1] += piece
    return "\r\n\t".join(lines)
