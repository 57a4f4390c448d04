"""Signed checkpoints: a tree size and root, the state they lead to, an Ed25519 signature.

A checkpoint is one JSON line in ``checkpoints.jsonl``; what is signed is its plain
text body (in the spirit of C2SP's signed notes), one field per line::

    coordcore-audit/v2
    <key id: 8 hex digits>
    <first record index>
    <tree size>
    <root, base64>
    <revision after the last record>
    <sha-256 of the machine state after it, hex, or "-">
    <sha-256 of the base state the journal starts from, hex, or "-">
    <time, ms since the epoch>

The *key id* names the signer as C2SP's signed notes do (the first 4 bytes of
SHA-256(``coordcore-audit`` || 0x0A || 0x01 || public key)), so a verifier given
several trusted keys (an operator rotated ``--audit-key``) finds the one to check
the signature with: a :class:`Keyring`. Checkpoints written before key ids (body
``coordcore-audit/v1``, without the key id line) are still read and verified; their
key id is computed from the public key they carry.

The writer never signs a checkpoint that does not extend the last one it signed (the
trail refuses to start when its tree does not), so two checkpoints of one log are
always consistent; a consistency proof between them shows it to anyone.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coordcore.errors import BadArgument, LogCorrupted

__all__ = ["Checkpoint", "CHECKPOINTS", "Keyring", "key_id", "load_private_key", "load_public_key", "public_hex",
           "read_checkpoints", "write_keypair"]

CHECKPOINTS: Final = "checkpoints.jsonl"
_ORIGIN_V1: Final = "coordcore-audit/v1"
_ORIGIN: Final = "coordcore-audit/v2"
#: The key name a key id hashes (C2SP signed notes: name, newline, 0x01 for Ed25519, key).
_KEY_NAME: Final = b"coordcore-audit"
#: A checkpoint line longer than this is not one (bounds what a hostile file costs).
MAX_LINE: Final = 4096


@dataclass(frozen=True)
class Checkpoint:
    first_index: int
    size: int
    root: bytes
    revision: int
    state: str  # hex sha-256 of the machine state, or "-"
    base: str   # hex sha-256 of the base state, or "-"
    time_ms: int
    key: bytes  # the raw 32-byte public key that signed it
    sig: bytes
    #: The signer's key id (signed); "" for a checkpoint of the v1 format, which had none.
    key_id: str = ""

    @property
    def last_index(self) -> int:
        return self.first_index + self.size - 1

    @property
    def signer_id(self) -> str:
        """The key id of the key this checkpoint says signed it."""
        return self.key_id or key_id(self.key)

    def body(self) -> bytes:
        head = [_ORIGIN, self.key_id] if self.key_id else [_ORIGIN_V1]
        return "\n".join([*head, str(self.first_index), str(self.size),
                          base64.b64encode(self.root).decode(), str(self.revision), self.state,
                          self.base, str(self.time_ms), ""]).encode()

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, *, first_index: int, size: int, root: bytes, revision: int,
             state: str, base: str, time_ms: int) -> Checkpoint:
        raw = _raw_public(key.public_key())
        unsigned = cls(first_index, size, root, revision, state, base, time_ms, raw, b"", key_id(raw))
        return cls(**{**unsigned.__dict__, "sig": key.sign(unsigned.body())})

    def signed_by(self, public: Ed25519PublicKey) -> bool:
        """True only if ``public`` made this signature (the key field is not trusted)."""
        try:
            public.verify(self.sig, self.body())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        out = {"first_index": self.first_index, "size": self.size, "root": self.root.hex(),
               "revision": self.revision, "state": self.state, "base": self.base,
               "time_ms": self.time_ms, "key": self.key.hex(), "sig": self.sig.hex()}
        if self.key_id:
            out["key_id"] = self.key_id
        return out

    @classmethod
    def from_json(cls, obj: object) -> Checkpoint:
        """A checkpoint from its JSON object, or :class:`BadArgument` saying what is wrong."""
        if not isinstance(obj, dict):
            raise BadArgument("a checkpoint is a JSON object")
        try:
            c = cls(_int(obj, "first_index", 1), _int(obj, "size", 0), _hex(obj, "root", 32),
                    _int(obj, "revision", 0), _digest(obj, "state"), _digest(obj, "base"),
                    _int(obj, "time_ms", 0), _hex(obj, "key", 32), _hex(obj, "sig", 64))
        except KeyError as exc:
            raise BadArgument(f"a checkpoint has no {exc.args[0]!r}") from None
        if "key_id" not in obj:
            return c  # the v1 format
        named = obj["key_id"]
        if named != key_id(c.key):  # (also refuses a key id that is not 8 lower-case hex digits)
            raise BadArgument(f"a checkpoint's key_id {str(named)[:40]!r} is not the id of the key it carries")
        return cls(**{**c.__dict__, "key_id": named})


def key_id(public: bytes | Ed25519PublicKey) -> str:
    """The C2SP-style id of a public key (raw 32 bytes or a key): 8 hex digits."""
    raw = public if isinstance(public, bytes) else _raw_public(public)
    return hashlib.sha256(_KEY_NAME + b"\n\x01" + raw).digest()[:4].hex()


class Keyring:
    """The public keys whose checkpoints are trusted: the current signer's and the older
    ones an operator rotated away from. A checkpoint is checked with the trusted key its
    key id names, never with the key it carries."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._by_id: dict[str, list[Ed25519PublicKey]] = {}
        for k in keys:
            same = self._by_id.setdefault(key_id(k), [])
            if all(_raw_public(o) != _raw_public(k) for o in same):
                same.append(k)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_id.values())

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def problem(self, cp: Checkpoint) -> str | None:
        """Why ``cp`` is not signed by a trusted key, or None."""
        kid = cp.signer_id
        candidates = self._by_id.get(kid)
        if not candidates:
            return f"is signed by key {kid}, which is not a trusted key (trusted: {', '.join(self.ids()) or 'none'})"
        if not any(cp.signed_by(k) for k in candidates):
            return f"does not carry a valid signature of key {kid} (forged or edited)"
        return None


def _int(obj: dict[str, Any], name: str, lo: int) -> int:
    v = obj[name]
    if type(v) is not int or not lo <= v < 2**63:
        raise BadArgument(f"a checkpoint's {name} must be an integer >= {lo}, not {str(v)[:40]!r}")
    return v


def _hex(obj: dict[str, Any], name: str, size: int) -> bytes:
    v = obj[name]
    raw = canonical_hex(v)
    if raw is None or len(raw) != size:
        raise BadArgument(f"a checkpoint's {name} must be {size} bytes of lower-case hex")
    return raw


def canonical_hex(text: object) -> bytes | None:
    """The bytes of lower-case hex ``text``, else None (one spelling per value, so no
    edit of an export's text leaves what it says unchanged)."""
    if not isinstance(text, str) or text != text.lower():
        return None
    try:
        return bytes.fromhex(text) if " " not in text else None
    except ValueError:
        return None


def _digest(obj: dict[str, Any], name: str) -> str:
    v = obj[name]
    if v == "-":
        return "-"
    _hex(obj, name, 32)
    return str(v)


def read_checkpoints(directory: Path) -> list[Checkpoint]:
    """The checkpoints of an audit directory, oldest first ([] if there are none). A line
    cut short by a crash (the last, without its newline) is ignored; any other bad line
    raises :class:`LogCorrupted`."""
    path = directory / CHECKPOINTS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # a torn last line: it was never fsynced, so never relied on
    out: list[Checkpoint] = []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            if len(line) > MAX_LINE:
                raise BadArgument("line too long")
            out.append(Checkpoint.from_json(json.loads(line)))
        except (ValueError, BadArgument) as exc:
            raise LogCorrupted(f"audit checkpoints {path}: line {n}: {exc}") from None
    return out


def append_checkpoint(directory: Path, cp: Checkpoint, fsync: bool) -> None:
    fd = os.open(directory / CHECKPOINTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, json.dumps(cp.to_json(), separators=(",", ":")).encode() + b"\n")
        if fsync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


# --- keys ----------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_hex(key: Ed25519PublicKey) -> str:
    return _raw_public(key).hex()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (``coordcore audit keygen``), or
    :class:`BadArgument` saying why not."""
    data = _read_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BadArgument(f"audit key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadArgument(f"audit key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (or the private key's file), or
    :class:`BadArgument`."""
    data = _read_key(path)
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BadArgument(f"public key {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadArgument(f"public key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def _read_key(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(65537)
    if len(data) > 65536:
        raise BadArgument(f"key file {path} is too large to be a key")
    return data


def write_keypair(private_path: Path) -> Path:
    """Write a new private key (mode 0600, refusing to overwrite) and its public key
    beside it (``NAME.pub``); returns the public key's path."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub_path = private_path.with_name(private_path.name + ".pub")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub_path


def decode_b64(text: object, what: str) -> bytes:
    """Canonical base64 only (padding and unused bits as the encoder writes them)."""
    if not isinstance(text, str):
        raise BadArgument(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadArgument(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise BadArgument(f"{what} is not canonical base64")
    return raw
