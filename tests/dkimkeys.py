"""DKIM keys for tests, and verification of what a server received with dkimpy (an
implementation apart from ours) against the public key, as a receiving server would."""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Literal

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Kind = Literal["rsa-2048", "rsa-1024", "ed25519"]
DOMAIN = "example.com"
SELECTOR = "s2026"


@functools.cache
def _private(kind: Kind) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(kind.split("-")[1]))


def pem(kind: Kind) -> bytes:
    return _private(kind).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(kind: Kind) -> bytes:
    return (
        _private(kind)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def key_text(kind: Kind) -> str:
    """The base64 body of the PEM, as it would show if the key leaked."""
    lines = pem(kind).decode("ascii").splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))


def write_key(folder: Path, kind: Kind = "ed25519", name: str = "dkim.pem") -> Path:
    path = folder / name
    path.write_bytes(pem(kind))
    path.chmod(0o600)
    return path


def record(kind: Kind) -> bytes:
    """The TXT record of the public key, made here from cryptography's public key."""
    public = _private(kind).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def verifies(message: bytes, kind: Kind, *, domain: str = DOMAIN, selector: str = SELECTOR) -> bool:
    """dkimpy's verdict on the message's first DKIM-Signature, the key looked up at
    `selector`._domainkey.`domain` (nothing anywhere else)."""
    expected = f"{selector}._domainkey.{domain}.".encode("ascii")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record(kind) if name == expected else None

    return bool(dkim.verify(message, dnsfunc=dnsfunc))
