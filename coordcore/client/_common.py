"""The wire's shapes: command arguments, and replies decoded into values (the shared
value types are in :mod:`coordcore.types`; these are the ones only a client sees)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from coordcore.client._wire import Arg, error_from_reply, to_dict
from coordcore.errors import BadArgument, WrongType
from coordcore.types import Grant, Key, Leader

__all__ = ["CapacityLease", "Contender", "IdRuns", "LockInfo", "WatchEvent"]


def session_id_of(credential: bytes) -> int:
    """The public id in a session credential ``b"<id>.<secret>"`` (what SESSION.OPEN
    answers).

    >>> session_id_of(b"42.00112233445566778899aabbccddeeff")
    42
    """
    sid, dot, _ = credential.partition(b".")
    if not dot or not sid.isdigit():
        raise BadArgument(f"not a session credential: {credential[:24]!r}")
    return int(sid)


@dataclasses.dataclass(frozen=True)
class Contender:
    """A holder (``token != 0``) or waiter of a key, as ``LOCK.INFO`` reports it."""

    session: int
    ticket: int
    token: int
    mode: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """What ``LOCK.INFO`` / ``SEM.INFO`` say about a key: its kind (``lock``,
    ``semaphore``, ``election`` or ``none``), the mode it is held in (``free``,
    ``exclusive``, ``shared``...), holders in token order, waiters in FIFO order."""

    key: bytes
    kind: str
    permits: int
    mode: str
    holders: list[Contender]
    waiters: list[Contender]


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix, at ``revision`` (watch events arrive in
    strictly increasing revision order)."""

    revision: int
    kind: str
    key: bytes
    fields: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class CapacityLease:
    """Units of a quota pool held by ``session`` for ``tenant`` (``POOL.ACQUIRE``);
    ``token`` is the fencing token."""

    pool: bytes
    tenant: bytes
    units: int
    token: int
    session: int


class IdRuns:
    """IDs as runs of consecutive integers ``(first, count)``: what ``ID.RANGE`` returns.

    >>> runs = IdRuns([(10, 3), (100, 2)])
    >>> len(runs), list(runs)
    (5, [10, 11, 12, 100, 101])
    """

    __slots__ = ("runs",)

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs

    @classmethod
    def from_reply(cls, reply: Any) -> IdRuns:
        return cls([(int(first), int(count)) for first, count in reply])

    def __len__(self) -> int:
        return sum(count for _, count in self.runs)

    def __iter__(self) -> Iterator[int]:
        for first, count in self.runs:
            yield from range(first, first + count)

    def __repr__(self) -> str:
        return f"IdRuns({self.runs!r})"


RELEASE_COMMAND: dict[str, str] = {"lock": "LOCK.RELEASE", "semaphore": "SEM.RELEASE", "election": "ELECT.RESIGN"}
INFO_COMMAND: dict[str, str] = {"lock": "LOCK.INFO", "semaphore": "SEM.INFO", "election": "LOCK.INFO"}


def release_args(grant: Grant, credential: bytes, request_id: int) -> list[Arg]:
    return [RELEASE_COMMAND[grant.kind], grant.key, credential, "TOKEN", grant.token, "REQID", request_id]


# The types are checked here, before anything is sent: otherwise a wrong one fails deep
# inside (a comparison, hiredis's packer) or is sent converted (123 as b"123").

def check_key(name: str, key: object) -> Key:
    """A key or prefix as the types say (``str`` or ``bytes``), or WrongType naming it."""
    if not isinstance(key, (str, bytes)):
        raise WrongType(f"{name} must be str or bytes, not {type(key).__name__}")
    return key


def check_seconds(name: str, value: object) -> float:
    """A finite number of seconds (not a bool), or WrongType/BadArgument naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WrongType(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value):
        raise BadArgument(f"{name} must be finite, not {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongType(f"{name} must be a bool, not {type(value).__name__}")
    return value


def ttl_arg(ttl: float) -> str:
    if not check_seconds("ttl", ttl) > 0:
        raise BadArgument(f"ttl must be > 0 seconds, got {ttl}")
    return repr(float(ttl))


def _timeout_ms(timeout: float | None) -> list[Arg]:
    if timeout is None:
        return []
    if check_seconds("timeout", timeout) < 0:
        raise BadArgument(f"timeout must be >= 0 seconds, got {timeout}")
    # A retry after a reconnect sends what is left; never round a wait down to a try.
    return ["TIMEOUT", max(1, int(round(timeout * 1000))) if timeout > 0 else 0]


def acquire_args(cmd: str, key: str | bytes, credential: bytes, shared: bool, timeout: float | None) -> list[Arg]:
    args: list[Arg] = [cmd, key, credential]
    if shared:
        args.append("SHARED")
    return args + _timeout_ms(timeout)


def stray_holds(info: LockInfo, sid: int, known: set[int]) -> list[int]:
    """Tokens of holds of session ``sid`` on a key that the client does not know of
    (a grant whose reply was lost with its connection)."""
    return [c.token for c in info.holders if c.session == sid and c.token not in known]


def sem_args(name: str | bytes, credential: bytes, permits: int, timeout: float | None) -> list[Arg]:
    return ["SEM.ACQUIRE", name, credential, permits, *_timeout_ms(timeout)]


def campaign_args(name: str | bytes, credential: bytes, value: str | bytes, timeout: float | None) -> list[Arg]:
    return ["ELECT.CAMPAIGN", name, credential, value, *_timeout_ms(timeout)]


def stray_waiters(info: LockInfo, sid: int) -> list[int]:
    """Tickets of waits of session ``sid`` on a key (for a client with no acquire of
    its own in flight on it, each is a wait it gave up: its connection went)."""
    return [c.ticket for c in info.waiters if c.session == sid]


def _contender(reply: Any) -> Contender:
    d = to_dict(reply)
    return Contender(session=int(d["session"]), ticket=int(d["ticket"]), token=int(d["token"]),
                     mode=d["mode"].decode(), value=d["value"])


def parse_lock_info(reply: Any) -> LockInfo:
    d = to_dict(reply)
    return LockInfo(key=d["key"], kind=d["kind"].decode(), permits=int(d["permits"]), mode=d["mode"].decode(),
                    holders=[_contender(c) for c in d["holders"]], waiters=[_contender(c) for c in d["waiters"]])


def parse_leader(reply: Any) -> Leader | None:
    if reply is None:
        return None
    d = to_dict(reply)
    return Leader(session=int(d["session"]), value=d["value"], token=int(d["token"]))


def parse_watch_event(push: Any) -> WatchEvent | None:
    """A ``>`` push ``["watch", revision, kind, key, {fields}]`` as a WatchEvent."""
    if len(push) < 4 or push[0] != b"watch":
        return None
    fields = to_dict(push[4]) if len(push) > 4 and push[4] is not None else {}
    return WatchEvent(revision=int(push[1]), kind=push[2].decode(), key=push[3], fields=fields)


def watch_event(item: Any) -> WatchEvent | None:
    """What a watch connection read: an event, None for anything else; a
    ``watch-error`` push (the server stopped the watch) raises its error."""
    if isinstance(item, list) and item and item[0] == b"watch-error":
        raise error_from_reply(item[1].decode())
    return parse_watch_event(item)
