"""Offline replay of encrypted histories: payload data keys sealed for an auditor's own key.

With payload encryption on, a history's payloads are AES-GCM ciphertexts under data keys only Vault
can unwrap. An auditor replays with every server stopped, so the person exporting the evidence (who
may read the run: their token may decrypt) unwraps each data key the histories use and seals it for
the auditor's X25519 public key. The bundle stays encrypted at rest; only the auditor's private key
opens it, and what it opens is authenticated: a payload decrypts only under the key it was sealed
with, and the ciphertexts are the ones whose digest the ledger recorded. A forged sealed key fails
to open, never yields another history.

    lockgate auditor-key FILE                       # FILE (private, 0600) and FILE.pub
    lockgate audit RUN --export B.json --auditor-key FILE.pub
    lockgate replay --history B.json --key FILE     # servers stopped

Sealing: ephemeral X25519 with the recipient key, HKDF-SHA256 over the shared secret (info binds the
format and both public keys), AES-256-GCM with the wrapped data key as associated data, so a sealed
key cannot be moved to another payload's slot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lockgate.errors import UserError

__all__ = [
    "FORMAT",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "open_payload_keys",
    "seal_payload_keys",
]

FORMAT = "lockgate.auditor-key/v1"
_INFO = b"lockgate.payload-key.v1"


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public: X25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(_raw(public)).hexdigest()[:16]


def generate_key(path: str) -> tuple[Path, Path, str]:
    """Writes a new auditor key: `path` (private, PEM, 0600, never overwritten) and `path.pub`."""
    private = X25519PrivateKey.generate()
    target = Path(path)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} exists: an auditor key is never overwritten") from None
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    pub = target.with_name(target.name + ".pub")
    public = private.public_key()
    pub.write_text(
        json.dumps({"format": FORMAT, "public_key": base64.b64encode(_raw(public)).decode()}, indent=1) + "\n"
    )
    return target, pub, key_fingerprint(public)


def load_public_key(path: str) -> X25519PublicKey:
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} public key")
        return X25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))
    except OSError as err:
        raise UserError(f"cannot read auditor key {path}: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not an auditor public key (lockgate auditor-key writes one): {err}") from None


def load_private_key(path: str) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise UserError(f"cannot read auditor key {path}: {err.strerror or err}") from None
    except (ValueError, TypeError) as err:
        raise UserError(f"{path} is not an auditor private key: {err}") from None
    if not isinstance(key, X25519PrivateKey):
        raise UserError(f"{path} is not an auditor private key (X25519)")
    return key


def _kek(shared: bytes, recipient: bytes, ephemeral: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO + recipient + ephemeral).derive(shared)


def seal_payload_keys(plain: Iterable[tuple[str, str, bytes]], recipient: X25519PublicKey) -> dict[str, Any]:
    """`plain`: (Transit key name, wrapped data key, plaintext data key). Returns the bundle's
    `payload_keys`: each data key sealed for `recipient`, by its wrapped form."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = _raw(ephemeral.public_key())
    aead = AESGCM(_kek(ephemeral.exchange(recipient), _raw(recipient), eph_raw))
    sealed = {}
    for name, wrapped, key in plain:
        nonce = os.urandom(12)
        sealed[wrapped] = {
            "key": name,
            "sealed": base64.b64encode(nonce + aead.encrypt(nonce, key, wrapped.encode())).decode(),
        }
    return {
        "format": FORMAT,
        "recipient": key_fingerprint(recipient),
        "ephemeral": base64.b64encode(eph_raw).decode(),
        "keys": sealed,
    }


def open_payload_keys(payload_keys: Any, private: X25519PrivateKey) -> dict[str, bytes]:
    """The data keys sealed in a bundle's `payload_keys`, by wrapped form (UserError if this key
    was not the recipient or a sealed key was altered)."""
    if not isinstance(payload_keys, dict) or payload_keys.get("format") != FORMAT:
        raise UserError("the bundle's payload keys are not in a format this lockgate reads")
    public = private.public_key()
    if payload_keys.get("recipient") != key_fingerprint(public):
        raise UserError(
            f"the bundle's payload keys are sealed for auditor key {payload_keys.get('recipient')}, "
            f"not for this key ({key_fingerprint(public)})"
        )
    try:
        eph_raw = base64.b64decode(payload_keys["ephemeral"])
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
        aead = AESGCM(_kek(shared, _raw(public), eph_raw))
        out = {}
        for wrapped, item in payload_keys["keys"].items():
            raw = base64.b64decode(item["sealed"])
            out[wrapped] = aead.decrypt(raw[:12], raw[12:], wrapped.encode())
    except Exception as err:  # noqa: BLE001 - altered or foreign: one line, never a stack trace
        raise UserError(f"the bundle's payload keys do not open with this auditor key ({type(err).__name__})") from None
    return out
