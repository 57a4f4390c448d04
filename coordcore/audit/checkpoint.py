"""Signed checkpoints: a tree size and root, the state they lead to, an Ed25519 signature.

A checkpoint is one JSON line in ``checkpoints.jsonl``; what is signed is its plain
text body (in the spirit of C2SP's signed notes), one field per line::

    coordcore-audit/v1
    <first record index>
    <tree size>
    <root, base64>
    <revision after the last record>
    <sha-256 of the machine state after it, hex, or "-">
    <sha-256 of the base state the journal starts from, hex, or "-">
    <time, ms since the epoch>

The writer never signs a checkpoint that does not extend the last one it signed (the
trail refuses to start when its tree does not), so two checkpoints of one log are
always consistent; a consistency proof between them shows it to anyone.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coordcore.errors import BadArgument, LogCorrupted

__all__ = ["Checkpoint", "CHECKPOINTS", "load_private_key", "load_public_key", "public_hex",
           "read_checkpoints", "write_keypair"]

CHECKPOINTS: Final = "checkpoints.jsonl"
_ORIGIN: Final = "coordcore-audit/v1"
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

    @property
    def last_index(self) -> int:
        return self.first_index + self.size - 1

    def body(self) -> bytes:
        return "\n".join([_ORIGIN, str(self.first_index), str(self.size),
                          base64.b64encode(self.root).decode(), str(self.revision), self.state,
                          self.base, str(self.time_ms), ""]).encode()

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, *, first_index: int, size: int, root: bytes, revision: int,
             state: str, base: str, time_ms: int) -> Checkpoint:
        unsigned = cls(first_index, size, root, revision, state, base, time_ms, _raw_public(key.public_key()), b"")
        return cls(**{**unsigned.__dict__, "sig": key.sign(unsigned.body())})

    def signed_by(self, public: Ed25519PublicKey) -> bool:
        """True only if ``public`` made this signature (the key field is not trusted)."""
        try:
            public.verify(self.sig, self.body())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"first_index": self.first_index, "size": self.size, "root": self.root.hex(),
                "revision": self.revision, "state": self.state, "base": self.base,
                "time_ms": self.time_ms, "key": self.key.hex(), "sig": self.sig.hex()}

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
        return c


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
