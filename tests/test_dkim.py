"""DKIM signing: the keys it takes and refuses, the relaxed body hash against dkimpy's own
canonicalisation, and signatures dkimpy verifies (and rejects once anything signed changes)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dkim.canonicalization import Relaxed

from asyncmailer.attachments import spool
from asyncmailer.dkim import (
    Algorithm,
    BodyHash,
    DkimKeyError,
    DkimSigner,
    header_fields,
    load_key,
)
from asyncmailer.message import prepare_data

from .dkimkeys import DOMAIN, SELECTOR, Kind, key_text, pem, public_pem, record, verifies

HEAD = (
    b"From: Ann Sender <sender@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Hello   there,\r\n\tfolded  subject \r\n"
    b"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\n"
    b"Message-ID: <1.2@example.com>\r\n"
    b"X-Not-Signed: anything\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
)
BODIES = [
    b"",
    b"\r\n",
    b"one line\r\n",
    b"no final line end",
    b"trailing space \t \r\n\r\n\r\n",
    b"  leading\t\tand   inner  \r\n.dot line\r\n..two dots\r\n\r\nafter a blank\r\n\r\n",
    b".\r\n\r\n.\r\n",
    b"\r\n\r\n\r\nblank lines first\r\n",
]


def signed(kind: Kind, body: bytes, head: bytes = HEAD) -> bytes:
    """A message signed by our code, as it arrives (dot-stuffing undone)."""
    signer = DkimSigner(DOMAIN, SELECTOR, load_key(pem(kind)))
    stuffed = prepare_data(body, terminate=False) if body else b""
    digest = BodyHash()
    digest.update(stuffed)
    header = signer.signature(header_fields(head), digest.value(), timestamp=1_796_000_000)
    return header + head + b"\r\n" + body


def dkimpy_body_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest()).decode()


@pytest.mark.parametrize("body", BODIES)
def test_the_body_hash_is_dkimpys_however_the_body_is_split(body: bytes) -> None:
    stuffed = prepare_data(body, terminate=False) if body else b""
    # prepare_data ends the body with CRLF: that is what goes out, and what dkimpy hashes.
    sent = stuffed.replace(b"\r\n..", b"\r\n.")
    sent = sent[1:] if sent.startswith(b"..") else sent
    expected = dkimpy_body_hash(sent)
    for cut in range(len(stuffed) + 1):
        for second in (cut, min(cut + 1, len(stuffed)), len(stuffed)):
            digest = BodyHash()
            digest.update(stuffed[:cut])
            digest.update(stuffed[cut:second])
            digest.update(stuffed[second:])
            assert digest.value() == expected, (body, cut, second)


def test_a_copied_body_hash_goes_on_apart_and_value_does_not_end_it() -> None:
    shared = BodyHash()
    shared.update(b"shared part\r\nhalf a li")
    assert shared.value() == dkimpy_body_hash(b"shared part\r\nhalf a li")
    one, two = shared.copy(), shared.copy()
    one.update(b"ne for one\r\n\r\n")
    two.update(b"ne for two\r\n")
    assert one.value() == dkimpy_body_hash(b"shared part\r\nhalf a line for one\r\n")
    assert two.value() == dkimpy_body_hash(b"shared part\r\nhalf a line for two\r\n")
    assert shared.value() == dkimpy_body_hash(b"shared part\r\nhalf a li")


def test_a_spooled_part_is_hashed_a_chunk_at_a_time(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: five chunks
    spooled = spool(source)
    try:
        digest = BodyHash()
        digest.update(b"before\r\n")
        digest.update_part(spooled)
        digest.update(b"after\r\n")
        whole = b"before\r\n" + spooled.read(0, len(spooled)) + b"after\r\n"
    finally:
        spooled.close()
    assert digest.value() == dkimpy_body_hash(whole)


@pytest.mark.parametrize("kind", ["rsa-2048", "ed25519"])
def test_dkimpy_verifies_our_signature_and_rejects_any_change(kind: Kind) -> None:
    body = BODIES[5]
    message = signed(kind, body)
    assert verifies(message, kind)
    algorithm = "rsa-sha256" if kind.startswith("rsa") else "ed25519-sha256"
    assert f"a={algorithm}; c=relaxed/relaxed;".encode() in message
    # The tampered copies: the body, a signed header, an over-signed one added (present
    # or not), a List-Unsubscribe of someone else's.
    assert not verifies(message.replace(b"after a blank", b"after a blank!"), kind)
    assert not verifies(message.replace(b"Subject: Hello", b"Subject: Hullo"), kind)
    assert not verifies(b"From: ceo@example.com\r\n" + message, kind)
    assert not verifies(message.replace(b"To: bob", b"Reply-To: x@evil.example\r\nTo: bob"), kind)
    assert not verifies(message.replace(b"To: bob", b"List-Unsubscribe: <x>\r\nTo: bob"), kind)
    # Headers not signed may change, and white space is relaxed.
    assert verifies(message.replace(b"X-Not-Signed: anything", b"X-Not-Signed: else"), kind)
    assert verifies(message.replace(b"Hello   there", b"Hello there"), kind)
    # The key is looked up where the signature says, and only there.
    assert not verifies(message, kind, selector="other")


def test_the_signature_lists_present_headers_and_oversigns_those_shown() -> None:
    message = signed("ed25519", b"text\r\n")
    header = message.split(b"\r\nFrom:")[0].decode()
    h = "".join(header.split("h=")[1].split(";")[0].split())
    assert h.split(":") == [
        *("from", "from", "reply-to", "subject", "subject", "date", "to", "to", "cc"),
        *("message-id", "mime-version", "content-type"),
        *("list-unsubscribe", "list-unsubscribe-post"),
    ]
    assert "x-not-signed" not in h
    assert all(len(line) <= 78 for line in header.split("\r\n"))
    assert "t=1796000000;" in header


def test_the_public_record_is_the_one_to_publish() -> None:
    for kind in ("rsa-2048", "ed25519"):
        key = load_key(pem(kind))
        assert key.public_record().encode() == record(kind)
    assert load_key(pem("ed25519")).algorithm is Algorithm.ED25519_SHA256
    rsa_key = load_key(pem("rsa-2048"))
    assert (rsa_key.algorithm, rsa_key.bits, rsa_key.weak) == (Algorithm.RSA_SHA256, 2048, False)
    assert load_key(pem("rsa-1024")).weak


def _openssl(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


def _dsa_key() -> bytes:
    bits = "dsa_paramgen_bits:2048"
    params = _openssl("genpkey", "-genparam", "-algorithm", "DSA", "-pkeyopt", bits)
    return _openssl("genpkey", "-paramfile", "/dev/stdin", stdin=params)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: b"not a key at all\n", "not a PEM private key"),
        (lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "damaged"),
        (
            lambda: public_pem("rsa-2048"),
            "a public key or a certificate: key_file is the private key",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "an EC (ECDSA) key; DKIM signs with RSA or Ed25519",
        ),
        (
            lambda: _openssl(
                "pkey", "-aes256", "-passout", "pass:secret-words", stdin=pem("ed25519")
            ),
            "the key is encrypted",
        ),
        (
            _dsa_key,
            "a DSA key; DKIM signs with RSA or Ed25519",
        ),
        (
            lambda: _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"),
            "an RSA key of 512 bits; DKIM needs 1024 or more",
        ),
    ],
)
def test_keys_that_cannot_sign_are_refused_without_quoting_them(make: object, says: str) -> None:
    data = make()  # type: ignore[operator]
    assert isinstance(data, bytes)
    with pytest.raises(DkimKeyError) as caught:
        load_key(data)
    assert says in str(caught.value)
    error = caught.value  # nothing of cryptography's error (which may describe the data) chained
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    body = [line for line in data.decode().splitlines() if line and not line.startswith("-")]
    assert not any(line in str(caught.value) for line in body if len(line) > 8)


def test_a_key_never_shows_in_its_repr() -> None:
    for kind in ("rsa-2048", "ed25519"):
        key = load_key(pem(kind))
        shown = repr(key) + str(key) + repr(DkimSigner(DOMAIN, SELECTOR, key))
        assert key_text(kind)[:40] not in shown
        assert "DkimKey" in shown and "bits" in shown
