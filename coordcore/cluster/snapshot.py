"""Snapshots of the lock machine in etcd: chunks under ``snap/<index>/<chunk>``, then a
manifest ``snap/<index>/manifest`` written last.

A snapshot without its manifest is a write that did not finish: readers ignore it. The
manifest is JSON (readable with ``etcdctl get``)::

    {"format": 1, "index": 814, "term": 57, "record_digest": "<hex>",
     "chunks": 3, "bytes": 2500000, "sha256": "<hex>"}

``term`` and ``record_digest`` are those of record ``index``: the log's hash chain goes
on from the manifest once the records below it are deleted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from coordcore.cluster.election import Leadership
from coordcore.cluster.errors import EtcdUnavailable, LogInvalid
from coordcore.cluster.etcd import Etcd, put
from coordcore.cluster.keys import Keys

__all__ = ["Manifest", "Snapshot", "write", "newest_index", "read_newest"]

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    index: int
    term: int
    record_digest: bytes
    chunks: int
    size: int
    sha256: bytes

    def encode(self) -> bytes:
        return json.dumps({"format": _FORMAT, "index": self.index, "term": self.term,
                           "record_digest": self.record_digest.hex(), "chunks": self.chunks,
                           "bytes": self.size, "sha256": self.sha256.hex()}, sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes, index: int) -> Manifest:
        try:
            d = json.loads(value)
            if d["format"] != _FORMAT:
                raise ValueError(f"format {d['format']!r}")
            m = cls(int(d["index"]), int(d["term"]), bytes.fromhex(d["record_digest"]), int(d["chunks"]),
                    int(d["bytes"]), bytes.fromhex(d["sha256"]))
        except (ValueError, KeyError, TypeError) as e:
            raise LogInvalid(f"snapshot {index}: unreadable manifest ({e})", index) from None
        if m.index != index:
            raise LogInvalid(f"snapshot {index}: its manifest says index {m.index}", index)
        return m


@dataclass(frozen=True, slots=True)
class Snapshot:
    manifest: Manifest
    payload: bytes


async def write(lead: Leadership, keys: Keys, manifest_fields: tuple[int, int, bytes], payload: bytes, *,
                chunk_bytes: int, timeout: float) -> Manifest:
    """Write ``payload`` as the snapshot ``(index, term, record_digest)``: chunks, then the
    manifest, each a Txn under the leader's guard (a put of the same bytes may land twice)."""
    index, term, record_digest = manifest_fields
    chunks = [payload[i:i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)] or [b""]
    for n, chunk in enumerate(chunks):
        await lead.write([put(keys.snap_chunk(index, n), chunk)], timeout=timeout)
    manifest = Manifest(index, term, record_digest, len(chunks), len(payload), hashlib.sha256(payload).digest())
    await lead.write([put(keys.snap_manifest(index), manifest.encode())], timeout=timeout)
    return manifest


async def _manifest_indexes(etcd: Etcd, keys: Keys) -> list[int]:
    found: list[int] = []
    async for page in etcd.pages(keys.snap_prefix, keys.end(keys.snap_prefix), page_size=1000, keys_only=True):
        found.extend(keys.snap_index(kv.key) for kv in page.kvs if kv.key.endswith(b"/manifest"))
    return sorted(found)


async def newest_index(etcd: Etcd, keys: Keys) -> int | None:
    """The index of the newest complete snapshot, or None."""
    indexes = await _manifest_indexes(etcd, keys)
    return indexes[-1] if indexes else None


async def read_newest(etcd: Etcd, keys: Keys, *, page_bytes: int) -> Snapshot | None:
    """The newest complete snapshot, checked (chunk count, size, SHA-256), or None.

    If the writer replaces it while we read (its chunks vanish), read the new one."""
    for _ in range(5):
        index = await newest_index(etcd, keys)
        if index is None:
            return None
        kv = await etcd.get(keys.snap_manifest(index))
        if kv is None:
            continue  # replaced between the two reads
        manifest = Manifest.decode(kv.value, index)
        per_page = max(1, page_bytes // max(1, manifest.size // manifest.chunks + 1))
        parts: list[bytes] = []
        async for page in etcd.pages(keys.snap_chunk(index, 0), keys.snap_manifest(index), page_size=per_page):
            parts.extend(kv.value for kv in page.kvs)
        if len(parts) != manifest.chunks:
            if await newest_index(etcd, keys) != index:
                continue  # a newer snapshot deleted this one while we read it
            raise LogInvalid(f"snapshot {index}: {len(parts)} chunks, its manifest says {manifest.chunks}", index)
        payload = b"".join(parts)
        if len(payload) != manifest.size or hashlib.sha256(payload).digest() != manifest.sha256:
            raise LogInvalid(f"snapshot {index}: payload does not match its manifest (damaged)", index)
        return Snapshot(manifest, payload)
    raise EtcdUnavailable("snapshots kept being replaced while reading the newest one")
