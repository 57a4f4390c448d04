"""A small pure-Python reference model of the lock state machine: the oracle for the
native ``coordcore._native.lockmachine``.

It is written from the contract in coordcore/locks/machine.py, independently of the
Cython code and deliberately naive (lists and dicts, linear scans): it parses the batch
bytes itself, returns results and events as plain tuples in the facade's field order,
and writes the snapshot format itself, so a byte comparison of snapshots checks the
whole state, its canonical ordering and the checksum.

    results: (op, status, detail, flags, value, aux)
    events:  (revision, kind, mode, session, ticket, token, key, value)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from coordcore.errors import BadArgument, UnknownCommand, WrongType

# Contract constants, restated (not imported) so a change on one side shows up.
MAX_KEY, MAX_VALUE = 1024, 4096
MIN_TTL, MAX_TTL = 1, 30 * 86_400_000
MAX_PERMITS, MAX_TIME, MAX_BATCH, WINDOW = 1_000_000, 2**62, 1 << 20, 128

OPEN, KEEPALIVE, CLOSE, ACQUIRE, RELEASE, SEM_ACQUIRE, SEM_RELEASE = 1, 2, 3, 4, 5, 6, 7
CAMPAIGN, PROCLAIM, RESIGN, CANCEL, DETACH = 8, 9, 10, 11, 12
DIGEST = 32
SHARED, WAIT = 1, 2
OK, WAITING, BUSY = 0, 1, 2
NOSESSION, NOTHOLDER, CONFLICT, NOTLEADER, BADARG, WRONGTYPE, NOTFOUND, HELD = 10, 11, 12, 13, 14, 15, 16, 17
(D_FLAGS, D_KEY, D_VALUE, D_TTL, D_PERMITS, D_PERMITS_MISMATCH, D_SESSION, D_ARG, D_NO_SUCH_SESSION,
 D_NO_SUCH_HOLD, D_NOT_LEADER, D_NO_SUCH_CONTENDER, D_ALREADY_CANDIDATE, D_KIND, D_TIMEOUT,
 D_WAIT_ENDED, D_HELD, D_UPGRADE) = range(1, 19)
LOCK, SEM, ELECTION = 1, 2, 3
M_NONE, M_EXCLUSIVE, M_SHARED, M_SEM, M_ELECTION = 0, 1, 2, 3, 4
E_OPEN, E_CLOSE, E_EXPIRE, E_WAIT, E_GRANT, E_RELEASE, E_CANCEL, E_PROCLAIM = range(1, 9)

Result = tuple[int, int, int, int, int, int]
EventT = tuple[int, int, int, int, int, int, bytes, bytes]


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass
class Contender:
    session: int
    ticket: int
    token: int
    mode: int
    value: bytes
    key: bytes
    wait_deadline: int = 0  # withdrawn at the first batch at or after it (0: never)
    detached: bool = False


@dataclass
class Key:
    kind: int
    permits: int
    holders: list[Contender] = field(default_factory=list)
    waiters: list[Contender] = field(default_factory=list)


@dataclass
class Session:
    id: int
    ttl: int
    deadline: int
    contenders: list[Contender] = field(default_factory=list)
    requests: list[tuple[int, Result]] = field(default_factory=list)  # oldest first
    digest: bytes = bytes(DIGEST)


class LockModel:
    def __init__(self) -> None:
        self.time = 0
        self.revision = 0
        self.next_session = 1
        self.sessions: dict[int, Session] = {}
        self.keys: dict[bytes, Key] = {}
        self.events: list[EventT] = []
        self.version = 3

    # --- parsing -------------------------------------------------------------------

    @staticmethod
    def parse(batch: object) -> tuple[int, list[tuple[int, int, int, int, int, bytes, bytes]], int]:
        if not isinstance(batch, (bytes, bytearray, memoryview)):
            raise WrongType("batch must be bytes")
        data = bytes(batch)
        if len(data) < 20:
            raise BadArgument("malformed batch: short")
        magic, version, flags, reserved, t, count = struct.unpack_from("<4sBBHQI", data)
        if magic != b"CCLB" or version not in (1, 2, 3) or flags or reserved:
            raise BadArgument("malformed batch: header")
        if t > MAX_TIME or count > MAX_BATCH:
            raise BadArgument("malformed batch: header values")
        pos, cmds = 20, []
        for _ in range(count):
            if len(data) - pos < 32:
                raise BadArgument("malformed batch: truncated")
            op, cf, klen, vlen, sid, req, arg = struct.unpack_from("<BBHIQQQ", data, pos)
            if not OPEN <= op <= (DETACH if version >= 2 else CANCEL):
                raise UnknownCommand("malformed batch: op")
            if cf & ~(SHARED | WAIT):
                raise BadArgument("malformed batch: flags")
            pos += 32
            if len(data) - pos < klen + vlen:
                raise BadArgument("malformed batch: truncated")
            cmds.append((op, cf, sid, req, arg, data[pos:pos + klen], data[pos + klen:pos + klen + vlen]))
            pos += klen + vlen
        if pos != len(data):
            raise BadArgument("malformed batch: trailing bytes")
        return t, cmds, version

    # --- applying ------------------------------------------------------------------

    def apply(self, batch: object) -> tuple[list[Result], list[EventT]]:
        t, cmds, self.version = self.parse(batch)
        self.events = []
        self.time = max(self.time, t)
        dead = sorted((s for s in self.sessions.values() if s.deadline <= self.time),
                      key=lambda s: (s.deadline, s.id))
        if dead:
            self._end(dead, E_EXPIRE)
        self._expire_waits()
        results = [self._one(*c) for c in cmds]
        return results, self.events

    def _contenders(self) -> list[Contender]:
        return [c for k in self.keys.values() for c in k.holders + k.waiters]

    def _expire_waits(self) -> None:
        due = sorted((c for c in self._contenders() if c.wait_deadline and c.wait_deadline <= self.time),
                     key=lambda c: (c.wait_deadline, c.ticket))
        affected: list[bytes] = []
        for c in due:
            self._remove(c)
            if c.key not in affected:
                affected.append(c.key)
        for name in affected:
            self._promote(name)
            self._drop_if_empty(name)

    def _emit(self, kind: int, mode: int, session: int, ticket: int = 0, token: int = 0,
              key: bytes = b"", value: bytes = b"") -> int:
        self.revision += 1
        self.events.append((self.revision, kind, mode, session, ticket, token, key, value))
        return self.revision

    def _emit_c(self, kind: int, c: Contender) -> None:
        self._emit(kind, c.mode, c.session, c.ticket, c.token, c.key, c.value)

    @staticmethod
    def _can_hold(k: Key, mode: int) -> bool:
        if k.kind == LOCK:
            return not k.holders or (mode == M_SHARED and k.holders[0].mode == M_SHARED)
        if k.kind == SEM:
            return len(k.holders) < k.permits
        return not k.holders

    def _promote(self, name: bytes) -> None:
        k = self.keys[name]
        while k.waiters and self._can_hold(k, k.waiters[0].mode):
            c = k.waiters.pop(0)
            c.token = self.revision + 1  # the GRANT event's revision
            if not c.detached:
                c.wait_deadline = 0
            k.holders.append(c)
            self._emit_c(E_GRANT, c)

    def _drop_if_empty(self, name: bytes) -> None:
        k = self.keys[name]
        if not k.holders and not k.waiters:
            del self.keys[name]

    def _remove(self, c: Contender) -> None:
        self._emit_c(E_RELEASE if c.token else E_CANCEL, c)
        k = self.keys[c.key]
        (k.holders if c.token else k.waiters).remove(c)
        self.sessions[c.session].contenders.remove(c)

    def _end(self, sessions: list[Session], kind: int) -> None:
        affected: list[bytes] = []
        for s in sessions:
            self._emit(kind, M_NONE, s.id)
            for c in list(s.contenders):
                self._remove(c)
                if c.key not in affected:
                    affected.append(c.key)
            del self.sessions[s.id]
        for name in affected:
            self._promote(name)
            self._drop_if_empty(name)

    def _one(self, op: int, flags: int, sid: int, req: int, arg: int, key: bytes, value: bytes) -> Result:
        v2 = self.version >= 2
        allowed = {ACQUIRE: SHARED | WAIT, SEM_ACQUIRE: WAIT, CAMPAIGN: WAIT}.get(op, 0)
        takes_key = op > CLOSE and op != DETACH
        takes_value = op in (ACQUIRE, SEM_ACQUIRE, CAMPAIGN, PROCLAIM)
        timeout, low = 0, arg
        if v2 and op in (ACQUIRE, SEM_ACQUIRE, CAMPAIGN):
            timeout, low = arg >> 32, arg & 0xFFFFFFFF
        detail = 0
        if flags & ~allowed:
            detail = D_FLAGS
        elif (takes_key and not 0 < len(key) <= MAX_KEY) or (not takes_key and key):
            detail = D_KEY
        elif v2 and op == OPEN:
            if len(value) not in (0, DIGEST):
                detail = D_VALUE
        elif (takes_value and len(value) > MAX_VALUE) or (not takes_value and value):
            detail = D_VALUE
        if detail:
            pass
        elif op == OPEN:
            if not MIN_TTL <= arg <= MAX_TTL:
                detail = D_TTL
            elif sid != 0:
                detail = D_SESSION
        elif op == DETACH:
            if arg > MAX_TTL:
                detail = D_ARG
            elif sid != 0:
                detail = D_SESSION
        elif op == SEM_ACQUIRE and not 1 <= low <= MAX_PERMITS:
            detail = D_PERMITS
        elif timeout > MAX_TTL or (timeout and not flags & WAIT):
            detail = D_TIMEOUT
        elif (op == CANCEL and arg == 0) or (op in (KEEPALIVE, CLOSE) and arg) \
                or (op in (ACQUIRE, CAMPAIGN) and low):
            detail = D_ARG
        elif sid == 0:
            detail = D_SESSION
        if detail:
            return (op, BADARG, detail, 0, 0, 0)
        if op == OPEN:
            s = Session(self.next_session, arg, self.time + arg, digest=value or bytes(DIGEST))
            self.sessions[s.id] = s
            self.next_session += 1
            self._emit(E_OPEN, M_NONE, s.id)
            return (op, OK, 0, 0, s.id, s.deadline)
        if op == DETACH:
            waiting = [c for k in self.keys.values() for c in k.waiters]
            for c in waiting:
                c.detached = True
                if not c.wait_deadline or c.wait_deadline > self.time + arg:
                    c.wait_deadline = self.time + arg
            return (op, OK, 0, 0, len(waiting), 0)
        found = self.sessions.get(sid)
        if found is None:
            return (op, NOSESSION, D_NO_SUCH_SESSION, 0, 0, 0)
        s = found
        if op == KEEPALIVE:
            s.deadline = self.time + s.ttl
            return (op, OK, 0, 0, s.deadline, s.deadline)
        if op == CLOSE:
            self._end([s], E_CLOSE)
            return (op, OK, 0, 0, 0, 0)
        if req:
            for r, res in reversed(s.requests):
                if r == req:
                    if res[1] == WAITING and v2:
                        return self._reattach(s, res, timeout)
                    return res[:3] + (1,) + res[4:]
        if op in (ACQUIRE, SEM_ACQUIRE, CAMPAIGN):
            kind = {ACQUIRE: LOCK, SEM_ACQUIRE: SEM, CAMPAIGN: ELECTION}[op]
            mode = {ACQUIRE: M_SHARED if flags & SHARED else M_EXCLUSIVE, SEM_ACQUIRE: M_SEM,
                    CAMPAIGN: M_ELECTION}[op]
            result = self._acquire(s, op, kind, mode, key, value, low if op == SEM_ACQUIRE else 0,
                                   bool(flags & WAIT), timeout)
        elif op in (RELEASE, SEM_RELEASE, RESIGN):
            result = self._release(s, op, {RELEASE: LOCK, SEM_RELEASE: SEM, RESIGN: ELECTION}[op], key, arg)
        elif op == PROCLAIM:
            result = self._proclaim(s, key, arg, value)
        else:
            result = self._cancel(s, key, arg)
        if req:
            s.requests.append((req, result))
            if len(s.requests) > WINDOW:
                s.requests.pop(0)
        return result

    def _reattach(self, s: Session, recorded: Result, timeout: int) -> Result:
        op, ticket = recorded[0], recorded[5]
        found = [c for c in s.contenders if c.ticket == ticket]
        if not found:
            return (op, NOTFOUND, D_WAIT_ENDED, 1, 0, ticket)
        c = found[0]
        c.detached = False
        if c.token:
            c.wait_deadline = 0
            return (op, OK, 0, 1, c.token, ticket)
        c.wait_deadline = self.time + timeout if timeout else 0
        return (op, WAITING, 0, 1, 0, ticket)

    def _acquire(self, s: Session, op: int, kind: int, mode: int, name: bytes, value: bytes,
                 permits: int, wait: bool, timeout: int) -> Result:
        k = self.keys.get(name)
        grant = True
        if k is not None:
            if k.kind != kind:
                return (op, WRONGTYPE, D_KIND, 0, k.kind, 0)
            if kind == SEM and k.permits != permits:
                return (op, BADARG, D_PERMITS_MISMATCH, 0, k.permits, 0)
            if kind == ELECTION and any(c.key == name for c in s.contenders):
                return (op, CONFLICT, D_ALREADY_CANDIDATE, 0, 0, 0)
            if kind == LOCK and self.version >= 3:
                mine = [c.mode for c in s.contenders if c.key == name]
                if M_EXCLUSIVE in mine:
                    return (op, HELD, D_HELD, 0, 0, 0)
                if mine and mode == M_EXCLUSIVE:
                    return (op, HELD, D_UPGRADE, 0, 0, 0)
            grant = not k.waiters and self._can_hold(k, mode)
        if not grant and not wait:
            return (op, BUSY, 0, 0, 0, 0)
        if k is None:
            k = self.keys[name] = Key(kind, permits)
        rev = self.revision + 1
        c = Contender(s.id, rev, rev if grant else 0, mode, value, name,
                      wait_deadline=self.time + timeout if timeout and not grant else 0)
        (k.holders if grant else k.waiters).append(c)
        s.contenders.append(c)
        self._emit_c(E_GRANT if grant else E_WAIT, c)
        return (op, OK, 0, 0, rev, rev) if grant else (op, WAITING, 0, 0, 0, rev)

    def _release(self, s: Session, op: int, kind: int, name: bytes, token: int) -> Result:
        err = (op, NOTLEADER, D_NOT_LEADER, 0, 0, 0) if kind == ELECTION else (op, NOTHOLDER, D_NO_SUCH_HOLD, 0, 0, 0)
        k = self.keys.get(name)
        if k is None:
            return err
        if k.kind != kind:
            return (op, WRONGTYPE, D_KIND, 0, k.kind, 0)
        mine = [c for c in k.holders if c.session == s.id]
        if token:
            mine = [c for c in mine if c.token == token]
        if not mine:
            return err
        c = min(mine, key=lambda c: c.token)
        self._remove(c)
        self._promote(name)
        self._drop_if_empty(name)
        return (op, OK, 0, 0, c.token, c.ticket)

    def _cancel(self, s: Session, name: bytes, ticket: int) -> Result:
        k = self.keys.get(name)
        found = [c for c in (k.holders + k.waiters if k else []) if c.ticket == ticket and c.session == s.id]
        if not found:
            return (CANCEL, NOTFOUND, D_NO_SUCH_CONTENDER, 0, 0, 0)
        c = found[0]
        self._remove(c)
        self._promote(name)
        self._drop_if_empty(name)
        return (CANCEL, OK, 0, 0, c.token, c.ticket)

    def _proclaim(self, s: Session, name: bytes, token: int, value: bytes) -> Result:
        k = self.keys.get(name)
        if k is None:
            return (PROCLAIM, NOTLEADER, D_NOT_LEADER, 0, 0, 0)
        if k.kind != ELECTION:
            return (PROCLAIM, WRONGTYPE, D_KIND, 0, k.kind, 0)
        if not k.holders or k.holders[0].session != s.id or (token and k.holders[0].token != token):
            return (PROCLAIM, NOTLEADER, D_NOT_LEADER, 0, 0, 0)
        c = k.holders[0]
        c.value = value
        self._emit_c(E_PROCLAIM, c)
        return (PROCLAIM, OK, 0, 0, self.revision, c.token)

    # --- snapshot ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        out = bytearray(b"CCLS\x02\x00\x00\x00")
        out += struct.pack("<QQQI", self.time, self.revision, self.next_session, len(self.sessions))
        for sid in sorted(self.sessions):
            s = self.sessions[sid]
            out += struct.pack("<QQQI", s.id, s.ttl, s.deadline, len(s.requests)) + s.digest
            for req, (op, status, detail, _flags, value, aux) in s.requests:
                out += struct.pack("<QBBBBIQQ", req, op, status, detail, 0, 0, value, aux)
        out += struct.pack("<I", len(self.keys))
        for name in sorted(self.keys):
            k = self.keys[name]
            out += struct.pack("<HBBIII", len(name), k.kind, 0, k.permits, len(k.holders), len(k.waiters))
            out += name
            for c in k.holders + k.waiters:
                out += struct.pack("<QQQBBHIQ", c.session, c.ticket, c.token, c.mode, int(c.detached), 0,
                                   len(c.value), c.wait_deadline)
                out += c.value
        out += struct.pack("<I", crc32c(bytes(out)))
        return bytes(out)
