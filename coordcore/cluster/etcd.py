"""The one module that talks to etcd: a small asyncio adapter over aetcd's gRPC stubs.

No other part of coordcore imports aetcd or grpc. Callers get plain frozen dataclasses
(:class:`KV`, :class:`Range`, :class:`TxnResult`, :class:`WatchBatch`) and the errors
of :mod:`coordcore.cluster.errors`.

Why the raw stubs and not aetcd's helpers: aetcd's ``transaction()`` drops the response
header (the revision a Txn committed at is the term of a leader key), and its watcher
cannot send the require-leader metadata. Its ``Client`` still builds the channels.

Endpoints: one channel per etcd member, one of them current. A call that fails in a way
that may be the member's fault (unreachable, timed out, no leader) moves the current
endpoint to the next member. Reads are repeated on the next member (a read has no
effect, so repeating it is safe); writes never are: :class:`EtcdUnavailable` from a
write means its outcome is unknown and the caller resolves it (see ``log.py``).

Every call carries ``hasleader``: a member cut off from its Raft leader fails the call
or the watch at once, instead of leaving a watch open and silent.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aetcd
import grpc
from aetcd import rpc

from coordcore.cluster.errors import EtcdCompacted, EtcdRequestFailed, EtcdUnavailable

__all__ = [
    "Etcd", "KV", "Range", "TxnResult", "WatchEvent", "WatchBatch", "Status", "Compare", "Op",
    "created_at", "nested", "put", "get", "delete", "prefix_end",
]

T = TypeVar("T")

_REQUIRE_LEADER = (("hasleader", "true"),)

# Codes after which the member (or the path to it) is in doubt: try another member. For
# a write these mean "outcome unknown".
_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED,
})

DEFAULT_RECEIVE_BYTES = 64 * 1024 * 1024


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # etcd: range_end "\0" with key "\0" means every key


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Range:
    """One Range response: ``revision`` is the store's revision it was read at."""

    kvs: tuple[KV, ...]
    more: bool
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``revision`` is the top-level header's (for a Txn that wrote, the revision it
    committed at); ``ranges`` has one entry per ``get`` op of the branch that ran."""

    succeeded: bool
    revision: int
    ranges: tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one watch response (empty for a progress notification)."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class Status:
    member_id: int
    leader: int
    raft_term: int
    revision: int
    db_size: int  # the backend file (what the quota limits; shrinks only on defragment)
    db_size_in_use: int  # what is live in it (falls after truncation and compaction)
    version: str


@dataclass(frozen=True, slots=True)
class Compare:
    message: Any


@dataclass(frozen=True, slots=True)
class Op:
    message: Any


def created_at(key: bytes, revision: int) -> Compare:
    """Holds while ``key``'s create revision is ``revision`` (0: the key does not exist)."""
    return Compare(rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key,
                               create_revision=revision))


def nested(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> Op:
    """A Txn inside a Txn's branch (etcd >= 3.3): its compares are checked when the outer
    branch runs, in the same revision."""
    return Op(rpc.RequestOp(request_txn=rpc.TxnRequest(compare=[c.message for c in compare],
                                                       success=[o.message for o in success],
                                                       failure=[o.message for o in failure])))


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    return Op(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease)))


def get(key: bytes, range_end: bytes = b"") -> Op:
    return Op(rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=range_end)))


def delete(key: bytes, range_end: bytes = b"") -> Op:
    return Op(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end)))


def _kv(kv: Any) -> KV:
    return KV(bytes(kv.key), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision),
              int(kv.version), int(kv.lease))


def _range(resp: Any, revision: int) -> Range:
    return Range(tuple(_kv(kv) for kv in resp.kvs), bool(resp.more), int(resp.count), revision)


def _translate(err: grpc.aio.AioRpcError, endpoint: str) -> Exception:
    code, details = err.code(), err.details() or ""
    where = f"etcd {endpoint}: {details or code.name}"
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return EtcdCompacted(where)
    if code in _UNAVAILABLE_CODES:
        return EtcdUnavailable(where)
    return EtcdRequestFailed(where)


_Order = Literal["", "key-desc", "create-asc", "create-desc"]
_ORDERS: dict[str, tuple[int, int]] = {
    "": (rpc.RangeRequest.NONE, rpc.RangeRequest.KEY),
    "key-desc": (rpc.RangeRequest.DESCEND, rpc.RangeRequest.KEY),
    "create-asc": (rpc.RangeRequest.ASCEND, rpc.RangeRequest.CREATE),
    "create-desc": (rpc.RangeRequest.DESCEND, rpc.RangeRequest.CREATE),
}


class Etcd:
    """A connection to an etcd cluster (see the module docs).

    ``endpoints`` are ``host:port`` of the members' client URLs; ``timeout`` bounds each
    call (a watch's stream is bounded by gRPC keepalive instead); ``max_receive_bytes``
    must exceed the largest response (a Range page, a watch message). Python gRPC's
    default of 4 MiB is too small for a page of 64 KiB records.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0,
                 max_receive_bytes: int = DEFAULT_RECEIVE_BYTES) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        options = {
            "grpc.max_receive_message_length": max_receive_bytes,
            "grpc.max_send_message_length": max_receive_bytes,
            # A member that is paused keeps its TCP connection open: pings find it. etcd
            # refuses pings more often than every 5 s (--grpc-keepalive-min-time).
            "grpc.keepalive_time_ms": 6000,
            "grpc.keepalive_timeout_ms": 3000,
            "grpc.http2.max_pings_without_data": 0,
            # A restarted member is tried again within seconds, not gRPC's 2 minutes.
            "grpc.initial_reconnect_backoff_ms": 200,
            "grpc.max_reconnect_backoff_ms": 2000,
            "grpc.min_reconnect_backoff_ms": 1000,
            # gRPC shares connections between channels to one address by default: a new
            # Etcd would inherit a dead member's reconnect backoff. Each keeps its own.
            "grpc.use_local_subchannel_pool": 1,
        }
        self._clients: list[Any] = []
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            self._clients.append(aetcd.Client(host=host, port=int(port), options=options))
        self._current = 0
        self._closed = False

    async def connect(self) -> Etcd:
        """Open the channels (lazily: nothing is sent until the first call)."""
        for client in self._clients:
            await client.connect()
        return self

    async def close(self) -> None:
        self._closed = True
        for client in self._clients:
            await client.close()

    async def __aenter__(self) -> Etcd:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    def _next_endpoint(self, failed: int) -> None:
        # Several calls may fail on the same member at once: move on only once.
        if self._current == failed:
            self._current = (failed + 1) % len(self._clients)

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """One attempt on the current member; on a member-level failure, move on."""
        index = self._current
        client = self._clients[index]
        await client.connect()
        try:
            return await fn(client)
        except grpc.aio.AioRpcError as e:
            err = _translate(e, self.endpoints[index])
            if isinstance(err, EtcdUnavailable):
                self._next_endpoint(index)
            raise err from None

    async def _read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """A read: tried on each member in turn, for up to ``timeout`` (at least once on
        each), so a read rides out one member's death or an etcd election."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = 0
        while True:
            try:
                return await self._call(fn)
            except EtcdUnavailable:
                attempt += 1
                if attempt >= len(self._clients) and loop.time() > deadline:
                    raise
                if attempt % len(self._clients) == 0:
                    await sleep_backoff(attempt // len(self._clients) - 1)

    # --- KV ------------------------------------------------------------------------

    async def range(self, key: bytes, range_end: bytes = b"", *, limit: int = 0, revision: int = 0,
                    keys_only: bool = False, order: _Order = "", max_create_revision: int = 0,
                    timeout: float | None = None) -> Range:
        sort_order, sort_target = _ORDERS[order]
        request = rpc.RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision,
                                   keys_only=keys_only, sort_order=sort_order, sort_target=sort_target,
                                   max_create_revision=max_create_revision)
        t = self.timeout if timeout is None else timeout

        async def call(client: Any) -> Range:
            resp = await client.kvstub.Range(request, timeout=t, metadata=_REQUIRE_LEADER)
            return _range(resp, int(resp.header.revision))

        return await self._read(call)

    async def get(self, key: bytes, *, timeout: float | None = None) -> KV | None:
        r = await self.range(key, timeout=timeout)
        return r.kvs[0] if r.kvs else None

    async def pages(self, key: bytes, range_end: bytes, *, page_size: int,
                    keys_only: bool = False) -> AsyncIterator[Range]:
        """Every key in [key, range_end) in key order, ``page_size`` keys per Range (never
        one giant response). Pages are read at successive revisions: right for keys that
        are never overwritten, such as log records."""
        start = key
        while True:
            page = await self.range(start, range_end, limit=page_size, keys_only=keys_only)
            yield page
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + b"\x00"

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = (),
                  *, timeout: float | None = None) -> TxnResult:
        """One transaction. :class:`EtcdUnavailable` means its outcome is unknown."""
        request = rpc.TxnRequest(compare=[c.message for c in compare], success=[o.message for o in success],
                                 failure=[o.message for o in failure])
        t = self.timeout if timeout is None else timeout

        async def call(client: Any) -> TxnResult:
            resp = await client.kvstub.Txn(request, timeout=t, metadata=_REQUIRE_LEADER)
            revision = int(resp.header.revision)
            ranges = tuple(_range(op.response_range, revision) for op in resp.responses
                           if op.WhichOneof("response") == "response_range")
            return TxnResult(bool(resp.succeeded), revision, ranges)

        return await self._call(call)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Drop the history at and below ``revision`` (keys that exist stay)."""
        request = rpc.CompactionRequest(revision=revision, physical=physical)

        async def call(client: Any) -> None:
            await client.kvstub.Compact(request, timeout=self.timeout, metadata=_REQUIRE_LEADER)

        try:
            await self._call(call)
        except EtcdCompacted:
            pass  # someone compacted at or past it already

    # --- leases --------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its id, the TTL etcd granted, which may be more than asked)."""
        request = rpc.LeaseGrantRequest(TTL=ttl)

        async def call(client: Any) -> tuple[int, int]:
            resp = await client.leasestub.LeaseGrant(request, timeout=self.timeout, metadata=_REQUIRE_LEADER)
            if resp.error:
                raise EtcdRequestFailed(f"lease grant: {resp.error}")
            return int(resp.ID), int(resp.TTL)

        return await self._call(call)

    async def lease_keepalive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Refresh a lease; returns its TTL, 0 if etcd no longer has it."""
        t = self.timeout if timeout is None else timeout

        async def call(client: Any) -> int:
            stream = client.leasestub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                                     timeout=t, metadata=_REQUIRE_LEADER)
            async for resp in stream:
                return int(resp.TTL)
            raise EtcdUnavailable("lease keep-alive stream closed without an answer")

        return await self._call(call)

    async def lease_revoke(self, lease_id: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease_id)

        async def call(client: Any) -> None:
            await client.leasestub.LeaseRevoke(request, timeout=self.timeout, metadata=_REQUIRE_LEADER)

        await self._call(call)

    # --- watch ---------------------------------------------------------------------

    async def watch(self, key: bytes, range_end: bytes, start_revision: int, *,
                    progress_notify: bool = True) -> AsyncIterator[WatchBatch]:
        """Events on [key, range_end) from ``start_revision`` on, one batch per response.

        Ends only by raising: :class:`EtcdCompacted` if ``start_revision`` was compacted
        (the watch cannot resume there: re-read with a Range), :class:`EtcdUnavailable`
        if the stream broke or the member lost its leader."""
        index = self._current
        client = self._clients[index]
        await client.connect()
        # Fragments keep each message under etcd's request limit however many events a
        # catching-up watch has queued; they are put back together here.
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision,
                                        progress_notify=progress_notify, fragment=True)
        call = rpc.WatchStub(client.channel).Watch(metadata=_REQUIRE_LEADER)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            events: list[WatchEvent] = []
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    self._next_endpoint(index)
                    raise EtcdUnavailable(f"etcd {self.endpoints[index]}: watch stream ended")
                if resp.canceled:
                    if resp.compact_revision:
                        raise EtcdCompacted(f"watch from revision {start_revision}: compacted",
                                            int(resp.compact_revision))
                    self._next_endpoint(index)
                    raise EtcdUnavailable(f"etcd {self.endpoints[index]}: watch cancelled: {resp.cancel_reason}")
                for ev in resp.events:
                    kind: Literal["put", "delete"] = "delete" if ev.type == rpc.Event.DELETE else "put"
                    events.append(WatchEvent(kind, _kv(ev.kv)))
                if resp.fragment:
                    continue
                if resp.created and not events:
                    continue
                batch = WatchBatch(int(resp.header.revision), tuple(events))
                events = []
                yield batch
        except grpc.aio.AioRpcError as e:
            err = _translate(e, self.endpoints[index])
            if isinstance(err, EtcdUnavailable):
                self._next_endpoint(index)
            raise err from None
        finally:
            call.cancel()

    # --- maintenance ---------------------------------------------------------------

    async def status(self) -> Status:
        """The current member's status (its database size is what the quota limits)."""

        async def call(client: Any) -> Status:
            r = await client.maintenancestub.Status(rpc.StatusRequest(), timeout=self.timeout,
                                                    metadata=_REQUIRE_LEADER)
            return Status(int(r.header.member_id), int(r.leader), int(r.raftTerm), int(r.header.revision),
                          int(r.dbSize), int(r.dbSizeInUse), str(r.version))

        return await self._read(call)


async def sleep_backoff(attempt: int, base: float = 0.05, cap: float = 1.0) -> None:
    """Sleep before retry ``attempt`` (0, 1, ...): doubling from ``base`` up to ``cap``."""
    await asyncio.sleep(min(cap, base * (2 ** attempt)))
