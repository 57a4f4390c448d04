"""The checker: pure functions over histories (no I/O, no coordcore imports).

It reads :class:`~history.Op` records (the clients' view), the fenced resource's apply
log (:class:`~history.FenceAttempt`), the nemesis's faults (:class:`~history.Fault`) and
two snapshots of the server's lock state, and reports :class:`Violation` records. It
knows nothing about how the server is built, so a cluster run can feed it the same way.

Time
----
Every stamp is CLOCK_MONOTONIC of one machine. An invocation is stamped before its
request is sent and an outcome after its reply is read, so the true send is at or after
``op.start`` and the true reply at or before ``op.end``; a process paused between the two
only widens the interval. Every rule below holds for any true instants inside the
recorded ones, so a reported violation is a real one (under the two stated assumptions
about the server's clock below), never an artefact of stamping.

Lease floor (when a holder stops being live)
---------------------------------------------
A holder is *live* from its acquire's acknowledgement (``ok.end``) to its release's
invocation (``release.start``), except that it stops being live at its session's
**lease floor** ``F``: the earliest instant at which the server was allowed to expire the
session, by the client's own evidence. After ``F`` another client may rightly be granted
the key (the holder may still write, and fencing must then refuse it); before ``F`` the
lease had provably not ended, so a second grant is a violation.

``F`` is computed from the extension requests (the open and every keep-alive) that the
server acknowledged. Let ``s`` be the latest send (``start``) among them and ``TTL`` the
session's TTL. The server processed that request at or after ``s`` and set the deadline to
its batch time + TTL; it expires the session at the first batch whose time reaches it.

* Assumption 1 (one clock): while a server runs, its batch clock advances with
  CLOCK_MONOTONIC (coordcore's clock is the wall clock at start + ``time.monotonic()``
  since, in whole ms; :data:`CLOCK_SLACK` covers the ms rounding of times and TTLs).
* Assumption 2 (downtime does not count): a restarted server resumes its clock at the
  last batch's time (``count_downtime=False``), so each restart refunds to every live
  session at least the time from the old process's death to the new one's launch.

So ``F = s + TTL + sum(refunds) - CLOCK_SLACK``, where a kill ``k`` (process reaped at
``k.stopped``, successor launched at ``k.restart``) with ``k.restart > s`` and
``k.stopped < F`` (the session could still be alive then: it dies only while a server
runs) refunds ``k.restart - max(k.stopped, s)``; kills are taken in order and ``F`` grows.
Everything here is a lower bound of the true expiry instant (requests whose outcome is
unknown can only extend a lease, refunds are counted short), so a correct server is never
reported; what is given up is a real violation inside a few milliseconds (or, across a
restart, the server's start-up time) before the true expiry.

The checks
----------
1. ``overlap``: two holders of one key (different grants) live at the same instant.
2. ``stale-write-accepted``: the fenced resource accepted a token older than one it had
   already accepted for the key (a stale holder's write after a newer holder's);
   ``unjustified-refusal``: it refused a token not older than the newest it had accepted;
   ``write-without-grant``: a write whose token was never granted to its process on that key.
3. ``token-order``: grant A acknowledged before grant B was invoked (any keys), yet
   ``token(A) >= token(B)``.
4. ``token-reused``: one token acknowledged for two grants.
5. ``lost-grant``: an acknowledged grant whose release was refused ``NOTHOLDER`` while its
   session provably lived (the release completed before the lease floor), or that is
   missing at the quiesced snapshot although its release never happened (no release, or
   one that failed definitely with another error). A grant counts as released (release
   ``ok``), ended with its session (release refused ``NOSESSION``, or ``NOTHOLDER`` after the
   floor), or indeterminate (release outcome unknown).
6. ``orphan``: a holder or waiter in the *quiesced* snapshot (every client idle, holding
   and waiting for nothing, sessions still open and kept alive, after a settling grace):
   a lock or wait no live client knows of. ``held-after-run``: a holder or waiter in the
   *final* snapshot (clients closed their sessions, the server restarted, a grace passed).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.fault.history import FenceAttempt, Fault, Op

__all__ = ["CLOCK_SLACK", "Report", "Snapshot", "Violation", "check", "lease_floor"]

#: Seconds subtracted from every lease floor: ms truncation of batch times and TTLs.
CLOCK_SLACK = 0.005
#: At most this many violations of one kind are listed in full.
MAX_LISTED = 20

#: ``{key: {"holders": [[session, token], ...], "waiters": [[session, ticket], ...]}}``
Snapshot = Mapping[str, Mapping[str, Sequence[Sequence[int]]]]


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    ops: tuple[dict[str, Any], ...] = ()

    def __str__(self) -> str:
        lines = [f"[{self.kind}] {self.detail}"] + [f"    {op}" for op in self.ops]
        return "\n".join(lines)


@dataclasses.dataclass
class Report:
    violations: list[Violation]
    ops: Counter[str]
    faults: Counter[str]
    grants: Counter[str]
    writes: Counter[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def text(self) -> str:
        out = ["operations (kind outcome [error]): " + ", ".join(f"{k}={n}" for k, n in sorted(self.ops.items())),
               "faults: " + (", ".join(f"{k}={n}" for k, n in sorted(self.faults.items())) or "none"),
               "grants: " + ", ".join(f"{k}={n}" for k, n in sorted(self.grants.items())),
               "fenced writes: " + ", ".join(f"{k}={n}" for k, n in sorted(self.writes.items()))]
        out += self.notes
        by_kind = Counter(v.kind for v in self.violations)
        out.append("violations: " + (", ".join(f"{k}={n}" for k, n in sorted(by_kind.items())) or "none"))
        listed: Counter[str] = Counter()
        for v in self.violations:
            listed[v.kind] += 1
            if listed[v.kind] <= MAX_LISTED:
                out.append(str(v))
        return "\n".join(out)


@dataclasses.dataclass
class _Session:
    sid: int
    process: str
    ttl: float
    extensions: list[float]  # sends of acknowledged extension requests
    lost_seen: float | None = None  # first reply saying the session is gone

    def floor(self, kills: Sequence[Fault]) -> float:
        return lease_floor(max(self.extensions), self.ttl, kills)


def lease_floor(last_send: float, ttl: float, kills: Sequence[Fault]) -> float:
    """The earliest instant the server may expire a session whose latest acknowledged
    extension was sent at ``last_send`` (see the module docstring). ``kills`` are the
    server kills, any order."""
    floor = last_send + ttl - CLOCK_SLACK
    for k in sorted((k for k in kills if k.stopped is not None and k.restart is not None),
                    key=lambda k: k.stopped or 0.0):
        assert k.stopped is not None and k.restart is not None
        if k.stopped >= floor:
            break
        if k.restart > last_send:
            floor += k.restart - max(k.stopped, last_send)
    return floor


def _sessions(ops: Sequence[Op]) -> dict[int, _Session]:
    sessions: dict[int, _Session] = {}
    for op in ops:
        if op.f == "open" and op.outcome == "ok" and op.session is not None:
            sessions[op.session] = _Session(op.session, op.process, float(op.ttl or 0.0), [op.start])
    for op in ops:
        if op.session is None or op.session not in sessions:
            continue
        s = sessions[op.session]
        if op.f == "keepalive" and op.outcome == "ok":
            s.extensions.append(op.start)
        if op.error == "NOSESSION" and op.end is not None:
            s.lost_seen = op.end if s.lost_seen is None else min(s.lost_seen, op.end)
    return sessions


@dataclasses.dataclass
class _Hold:
    grant: Op
    release: Op | None
    live_end: float


def _holds(ops: Sequence[Op], sessions: Mapping[int, _Session], kills: Sequence[Fault]) -> list[_Hold]:
    releases: dict[tuple[str, str | None, int | None], Op] = {}
    for op in ops:
        if op.f == "release":
            releases[(op.process, op.key, op.token)] = op
    holds = []
    for op in ops:
        if op.f != "acquire" or op.outcome != "ok":
            continue
        assert op.end is not None
        rel = releases.get((op.process, op.key, op.token))
        end = rel.start if rel is not None else math.inf
        s = sessions.get(op.session) if op.session is not None else None
        if s is not None:
            end = min(end, s.floor(kills))
        holds.append(_Hold(op, rel, end))
    return holds


def _check_overlap(holds: Sequence[_Hold], out: list[Violation]) -> None:
    by_key: dict[str | None, list[_Hold]] = defaultdict(list)
    for h in holds:
        by_key[h.grant.key].append(h)
    for key, hs in by_key.items():
        hs = sorted(hs, key=lambda h: h.grant.end or 0.0)
        active: list[_Hold] = []
        for h in hs:
            start = h.grant.end or 0.0
            active = [a for a in active if a.live_end > start]
            for a in active:
                if a.grant.token != h.grant.token and start < h.live_end:
                    out.append(Violation(
                        "overlap",
                        f"key {key!r}: {h.grant.process} acknowledged token {h.grant.token} at {start:.4f} "
                        f"while {a.grant.process} (token {a.grant.token}) was live until {a.live_end:.4f}",
                        (a.grant.brief(), *((a.release.brief(),) if a.release else ()), h.grant.brief())))
            active.append(h)


def _check_fence(attempts: Sequence[FenceAttempt], grants: Sequence[Op], out: list[Violation]) -> Counter[str]:
    granted = {(g.process, g.key, g.token) for g in grants}
    newest: dict[str, FenceAttempt] = {}
    counts: Counter[str] = Counter()
    for a in sorted(attempts, key=lambda a: a.seq):
        counts["accepted" if a.accepted else "refused"] += 1
        if (a.process, a.key, a.token) not in granted:
            out.append(Violation("write-without-grant",
                                 f"{a.process} wrote {a.key!r} with token {a.token}, never granted to it there",
                                 (dataclasses.asdict(a),)))
        top = newest.get(a.key)
        if a.accepted:
            if top is not None and a.token < top.token:
                out.append(Violation("stale-write-accepted",
                                     f"key {a.key!r}: token {a.token} accepted after token {top.token} was",
                                     (dataclasses.asdict(top), dataclasses.asdict(a))))
            if top is None or a.token >= top.token:
                newest[a.key] = a
        else:
            if top is None or a.token >= top.token:
                out.append(Violation("unjustified-refusal",
                                     f"key {a.key!r}: token {a.token} refused, newest accepted "
                                     f"{None if top is None else top.token}",
                                     (dataclasses.asdict(a),)))
            else:
                counts["refused-stale"] += 1
    return counts


def _check_tokens(grants: Sequence[Op], out: list[Violation]) -> None:
    by_token: dict[int | None, list[Op]] = defaultdict(list)
    for g in grants:
        by_token[g.token].append(g)
    for token, gs in by_token.items():
        if len(gs) > 1:
            out.append(Violation("token-reused", f"token {token} acknowledged {len(gs)} times",
                                 tuple(g.brief() for g in gs)))
    # Real-time order: sweep invocations in time order; the acknowledged grant with the
    # highest token among those acknowledged before each invocation must be lower.
    acks = sorted(grants, key=lambda g: g.end or 0.0)
    best: Op | None = None
    i = 0
    for b in sorted(grants, key=lambda g: g.start):
        while i < len(acks) and (acks[i].end or 0.0) < b.start:
            if best is None or (acks[i].token or 0) > (best.token or 0):
                best = acks[i]
            i += 1
        if best is not None and (best.token or 0) >= (b.token or 0):
            out.append(Violation("token-order",
                                 f"token {best.token} acknowledged at {best.end:.4f}, before token {b.token} "
                                 f"was invoked at {b.start:.4f}",
                                 (best.brief(), b.brief())))


def _held_in(snapshot: Snapshot | None, key: str | None, session: int | None, token: int | None) -> bool:
    if snapshot is None or key is None:
        return False
    return any(int(s) == session and int(t) == token for s, t in snapshot.get(key, {}).get("holders", ()))


def _check_lost(holds: Sequence[_Hold], sessions: Mapping[int, _Session], kills: Sequence[Fault],
                quiesced: Snapshot | None, out: list[Violation]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for h in holds:
        g, rel = h.grant, h.release
        s = sessions.get(g.session) if g.session is not None else None
        if rel is not None and rel.outcome == "ok":
            counts["released"] += 1
        elif rel is not None and rel.outcome == "fail" and rel.error == "NOSESSION":
            counts["ended-with-session"] += 1
        elif rel is not None and rel.outcome == "fail" and rel.error == "NOTHOLDER":
            floor = s.floor(kills) if s is not None else -math.inf
            if rel.end is not None and rel.end < floor:
                out.append(Violation(
                    "lost-grant",
                    f"{g.process}'s grant on {g.key!r} (token {g.token}) was gone at its release "
                    f"({rel.end:.4f}) although its session lived until at least {floor:.4f}",
                    (g.brief(), rel.brief())))
            else:
                counts["ended-with-session"] += 1
        elif _held_in(quiesced, g.key, g.session, g.token):
            # Still held with every client idle: an orphan too (reported by check 6).
            counts["held-at-end" if rel is None else "held-at-end after release " + rel.outcome] += 1
        elif rel is not None and rel.outcome == "info":
            counts["indeterminate"] += 1
        elif rel is None and s is not None and s.lost_seen is not None:
            counts["ended-with-session"] += 1
        else:
            out.append(Violation(
                "lost-grant",
                f"{g.process}'s grant on {g.key!r} (token {g.token}) was never released "
                f"({'no release' if rel is None else f'release failed {rel.error}'}) and is not held at the end",
                (g.brief(), *((rel.brief(),) if rel else ()))))
    return counts


def _check_snapshot(snapshot: Snapshot | None, kind: str, when: str, owners: Mapping[int, str],
                    out: list[Violation]) -> None:
    for key, info in sorted((snapshot or {}).items()):
        for what in ("holders", "waiters"):
            for sid, n in info.get(what, ()):
                out.append(Violation(kind, f"{when}: session {sid} (opened by {owners.get(int(sid), 'nobody we know')}) "
                                     f"is among the {what} of {key!r} ({'token' if what == 'holders' else 'ticket'} {n})"))


def check(ops: Sequence[Op], fence: Sequence[FenceAttempt] = (), faults: Sequence[Fault] = (), *,
          quiesced: Snapshot | None = None, final: Snapshot | None = None,
          server_targets: Iterable[str] | None = None) -> Report:
    """Every check of the module docstring. ``server_targets``: names of the faults'
    targets that are lock servers (default: every ``kill`` fault's target)."""
    targets = set(server_targets) if server_targets is not None else None
    kills = [f for f in faults if f.kind == "kill" and (targets is None or f.target in targets)]
    sessions = _sessions(ops)
    grants = [op for op in ops if op.f == "acquire" and op.outcome == "ok"]
    holds = _holds(ops, sessions, kills)
    violations: list[Violation] = []
    _check_overlap(holds, violations)
    writes = _check_fence(fence, grants, violations)
    _check_tokens(grants, violations)
    grant_counts = _check_lost(holds, sessions, kills, quiesced, violations)
    owners = {sid: s.process for sid, s in sessions.items()}
    _check_snapshot(quiesced, "orphan", "quiesced (clients idle, sessions open)", owners, violations)
    _check_snapshot(final, "held-after-run", "after the run (sessions closed, server restarted)", owners, violations)
    op_counts: Counter[str] = Counter()
    for op in ops:
        op_counts[" ".join(x for x in (op.f, op.outcome, op.error if op.outcome != "ok" else None) if x)] += 1
    notes = []
    stale = sum(1 for h in holds if h.release is not None and h.live_end < h.release.start)
    notes.append(f"holders whose lease floor passed before their release: {stale}; "
                 f"sessions: {len(sessions)} ({sum(1 for s in sessions.values() if s.lost_seen is not None)} "
                 "seen lost by their client)")
    return Report(violations, op_counts, Counter(f.kind for f in faults), grant_counts, writes, notes)
