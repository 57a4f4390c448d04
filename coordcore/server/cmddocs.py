"""What every command of the server takes and answers: the one description behind
``COMMAND`` (INFO, DOCS, LIST, COUNT: what redis-cli and client libraries read for
hints and key positions) and the command pages of ``docs/PROTOCOL.md``
(``python -m coordcore.server.cmddocs`` prints them; a test checks the file has them
and that they name exactly the commands of the server's table).

>>> DOCS[b"LOCK.TRY"].syntax
'LOCK.TRY key session [SHARED] [LABEL label] [REQID n]'
>>> DOCS[b"LOCK.TRY"].arity, DOCS[b"PING"].arity
(-3, -1)
"""
from __future__ import annotations

import dataclasses
import sys

from coordcore.errors import ERROR_CODES
from coordcore.server import resp

__all__ = ["DOCS", "Arg", "Doc", "command_docs", "command_info", "render_markdown"]


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument: ``type`` is Redis's (key, string, integer, double, pure-token);
    ``token`` the word before an option's value; ``optional``/``multiple`` as Redis says."""

    name: str
    type: str = "string"
    token: str | None = None
    optional: bool = False
    multiple: bool = False

    @property
    def syntax(self) -> str:
        if self.type == "pure-token":
            text = self.token or self.name
        else:
            text = f"{self.token} {self.name}" if self.token else self.name
        if self.multiple:
            text = f"{text} [{text} ...]"
        return f"[{text}]" if self.optional else text


def _a(name: str, type: str = "string") -> Arg:
    return Arg(name, type)


def _opt(token: str, name: str | None = None, type: str = "string") -> Arg:
    """``[TOKEN name]``, or ``[TOKEN]`` alone when it takes no value."""
    if name is None:
        return Arg(token.lower(), "pure-token", token, optional=True)
    return Arg(name, type, token, optional=True)


_KEY = _a("key", "key")
_SESSION = _a("session")
_REQID = _opt("REQID", "n", "integer")
_LABEL = _opt("LABEL", "label")
_TIMEOUT = _opt("TIMEOUT", "ms", "integer")
_TOKEN = _opt("TOKEN", "t", "integer")


@dataclasses.dataclass(frozen=True)
class Doc:
    """A command: its arguments (after the name), summary, what it answers and the
    error code words it may send besides the common ones, Redis's flags, whether a
    key is its first argument, whether ``REQID n`` makes a retry safe."""

    args: tuple[Arg, ...]
    summary: str
    reply: str
    group: str
    flags: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    keyed: bool = False
    reqid: bool = False
    subcommands: tuple[tuple[str, Doc], ...] = ()

    name: str = ""

    @property
    def syntax(self) -> str:
        return " ".join([self.name, *(a.syntax for a in self.args)])

    @property
    def arity(self) -> int:
        """Redis's arity: the number of words with the name if fixed, else minus the least."""
        if self.subcommands:
            return -2
        need = 1 + sum(1 for a in self.args if not a.optional)
        return -need if any(a.optional or a.multiple for a in self.args) else need


def _doc(name: str, args: tuple[Arg, ...], summary: str, reply: str, group: str, *,
         flags: tuple[str, ...] = (), errors: tuple[str, ...] = (), keyed: bool = False, reqid: bool = False,
         subcommands: tuple[tuple[str, Doc], ...] = ()) -> tuple[bytes, Doc]:
    subs = tuple((sub, dataclasses.replace(doc, name=f"{name} {sub}", group=group)) for sub, doc in subcommands)
    return name.encode(), Doc(args, summary, reply, group, flags, errors, keyed, reqid, subs, name)


def _sub(args: tuple[Arg, ...], summary: str, reply: str, errors: tuple[str, ...] = ()) -> Doc:
    return Doc(args, summary, reply, "", errors=errors)


_LOCKING = ("write", "denyoom")
_READ = ("readonly", "fast")

DOCS: dict[bytes, Doc] = dict([
    # --- connection
    _doc("PING", (Arg("message", optional=True),), "Answers PONG, or the message.",
         "`+PONG`, or the message as a bulk string.", "connection", flags=("fast", "stale")),
    _doc("ECHO", (_a("message"),), "Answers the message.", "The message as a bulk string.", "connection",
         flags=("fast",)),
    _doc("QUIT", (), "Closes the connection once +OK is written.", "`+OK`, then the server closes.",
         "connection", flags=("no_auth", "fast")),
    _doc("AUTH", (Arg("username", optional=True), _a("password")),
         "Logs the connection in (a user of the ACL file, or `default` with --requirepass).",
         "`+OK`; a wrong pair is answered after a delay that grows per client address.", "connection",
         flags=("no_auth",), errors=("WRONGPASS",)),
    _doc("HELLO", (Arg("protover", "integer", optional=True), Arg("password", token="AUTH", optional=True),
                   Arg("clientname", token="SETNAME", optional=True)),
         "Chooses RESP2 or RESP3 (optionally logging in and naming the connection).",
         "A map: server, version, proto, id, mode, role, modules.", "connection", flags=("no_auth", "fast"),
         errors=("NOPROTO", "WRONGPASS", "NOAUTH")),
    _doc("SELECT", (_a("index", "integer"),), "Accepts database 0, the only one.", "`+OK`.", "connection",
         flags=("fast",)),
    _doc("READONLY", (), "Lets a cluster follower answer this connection's reads (LOCK.INFO, LOCKS.*, "
         "SESSION.INFO, ELECT.LEADER, WATCH) from its own state, which may lag the leader's; without it "
         "a follower redirects reads to the leader (`-MOVED`) as it does writes, so a client reads its "
         "own writes.", "`+OK`.", "connection", flags=("fast",)),
    _doc("READWRITE", (), "Ends READONLY: a follower redirects this connection's reads again.", "`+OK`.",
         "connection", flags=("fast",)),
    _doc("TRACEPARENT", (_a("traceparent"), _opt("TRACESTATE", "tracestate"), _a("command"),
                         Arg("arg", optional=True, multiple=True)),
         "Runs `command` as the child of an OpenTelemetry span: `traceparent` is a W3C traceparent of "
         "version 00 (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lower-case hex, 55 bytes, "
         "neither id all zeros); `tracestate`, the parent's W3C tracestate (`key=value` members "
         "separated by commas, at most 512 bytes and 32 members, keys unique; empty members are "
         "skipped), is restored with it. Each command carries its own parent, so traced commands may be "
         "pipelined and share a connection. A traced command is served by the command table, not the "
         "native lane; on a server started with `--otel` it gets a span (kind SERVER, named after the "
         "command), and the group-commit batch that carries it a `coordcore.commit` span linked to "
         "it. Without `--otel` the prefix is checked, then the command runs untraced. The command is "
         "checked (authentication, ACL, arity) as if it came alone; a bad traceparent or tracestate runs nothing.",
         "The command's own reply.", "connection", flags=("fast",), errors=("BADARG",)),
    _doc("CLIENT", (), "Connection introspection and control.", "See the subcommands.", "connection",
         subcommands=(
             ("ID", _sub((), "This connection's id.", "An integer.")),
             ("SETNAME", _sub((_a("name"),), "Names this connection (at most 128 bytes are kept).", "`+OK`.")),
             ("GETNAME", _sub((), "This connection's name.", "A bulk string, or nil if unnamed.")),
             ("INFO", _sub((), "This connection as one CLIENT LIST line.", "A bulk string.")),
             ("LIST", _sub((Arg("id", "integer", "ID", optional=True, multiple=True),),
                           "Every connection, one line each, in Redis's format (admin once users exist).",
                           "A bulk string: `id=.. addr=.. laddr=.. fd=.. name=.. age=.. idle=.. flags=.. "
                           "db=0 sub=.. psub=0 multi=-1 qbuf=.. obl=.. omem=.. cmd=.. user=.. resp=..` per line.",
                           errors=("NOPERM",))),
             ("KILL", _sub((Arg("id", "integer", "ID", optional=True), Arg("ip:port", token="ADDR", optional=True),
                            Arg("username", token="USER", optional=True)),
                           "Closes connections by id, peer address or user (admin once users exist).",
                           "The number of connections closed.", errors=("NOPERM",))),
             ("SETINFO", _sub((_a("attr"), _a("value")), "Accepted and ignored (what client libraries send).",
                              "`+OK`.")),
         )),
    _doc("ACL", (), "Who the connection is.", "See the subcommands.", "connection",
         subcommands=(("WHOAMI", _sub((), "This connection's user.", "A bulk string.")),)),
    _doc("COMMAND", (), "Describes the commands (what redis-cli reads for hints).",
         "Without a subcommand: COMMAND INFO of every command.", "server",
         subcommands=(
             ("COUNT", _sub((), "How many commands there are.", "An integer.")),
             ("LIST", _sub((), "Every command's name.", "An array of bulk strings.")),
             ("INFO", _sub((Arg("command", optional=True, multiple=True),),
                           "Arity, flags and key positions of the commands (all without names).",
                           "An array per command, as Redis's (nil for an unknown name).")),
             ("DOCS", _sub((Arg("command", optional=True, multiple=True),),
                           "Summary, group and arguments of the commands (all without names).",
                           "A map from name to its description, as Redis's.")),
         )),
    _doc("CONFIG", (), "Reads the server's settings.", "See the subcommands.", "server",
         subcommands=(
             ("GET", _sub((_a("parameter"), Arg("parameter", optional=True, multiple=True)),
                          "Settings whose names match the glob patterns (Redis names too: port, bind, "
                          "maxclients...).", "A map from name to value; empty when nothing matches.")),
             ("SET", _sub((_a("parameter"), _a("value")), "Refused: settings are fixed at start.",
                          "Always `-BADARG`.")),
         )),
    _doc("INFO", (Arg("section", optional=True, multiple=True),), "Server, client and lock service figures.",
         "A bulk string of `name:value` lines under `# Section` headers.", "server", flags=("stale",)),
    _doc("SHUTDOWN", (Arg("nosave", "pure-token", "NOSAVE", optional=True),
                      Arg("save", "pure-token", "SAVE", optional=True)),
         "Stops the server as SIGTERM does (the lock log is flushed and closed); admin once users exist.",
         "Nothing: the connection closes as the server stops.", "server", flags=("admin", "stale"),
         errors=("NOPERM",)),
    # --- IDs
    _doc("ID.NEXT", (), "One Snowflake ID.", "An integer.", "ids", flags=("fast",), errors=("CLOCKBACK",)),
    _doc("ID.RANGE", (_a("count", "integer"),), "count IDs, as runs of consecutive integers.",
         "An array of `[start, count]` runs; each run is one millisecond's.", "ids", errors=("CLOCKBACK",)),
    _doc("ID.DECODE", (_a("id", "integer"),), "An ID's fields.",
         "A map: id, timestamp_ms, datetime, datacenter, worker, sequence.", "ids", flags=("fast",)),
    _doc("ID.WORKERS", (), "Every process serving IDs for this server.", "An array of `host:port`.", "ids",
         flags=("fast",)),
    # --- sessions
    _doc("SESSION.OPEN", (_a("ttl", "double"),), "Opens a session whose lease lasts ttl seconds.",
         "The session's handle `id.secret` (a bulk string): only its opener can use it.", "locks",
         flags=_LOCKING, errors=("LIMIT",)),
    _doc("SESSION.KEEPALIVE", (_SESSION,), "Resets the session's lease to its full TTL (never adds to it).",
         "The new deadline (an integer: ms on the lock service's clock).", "locks", flags=("write", "fast"),
         errors=("NOSESSION",)),
    _doc("SESSION.CLOSE", (_SESSION,), "Closes the session: its holds are released, its waits withdrawn.",
         "`+OK`.", "locks", flags=("write",), errors=("NOSESSION",)),
    _doc("SESSION.INFO", (_a("id", "integer"), _opt("AFTER", "ticket", "integer"), _opt("COUNT", "n", "integer")),
         "A session's lease and a page of its holds and waits.",
         "A map: session, ttl_ms, deadline_ms, contender_count, contenders, next (0: last page); nil if "
         "there is no such session.", "locks", flags=_READ),
    # --- locks
    _doc("LOCK.ACQUIRE", (_KEY, _SESSION, _opt("SHARED"), _TIMEOUT, _LABEL, _REQID),
         "Takes the lock, waiting in FIFO order (at most TIMEOUT ms).",
         "The fencing token (an integer).", "locks", flags=("write", "blocking"), keyed=True, reqid=True,
         errors=("NOSESSION", "TIMEOUT", "HELD", "CONFLICT", "WRONGTYPE", "LIMIT")),
    _doc("LOCK.TRY", (_KEY, _SESSION, _opt("SHARED"), _LABEL, _REQID), "Takes the lock if it is free now.",
         "The fencing token, or nil when the lock is busy.", "locks", flags=("write", "fast"), keyed=True,
         reqid=True, errors=("NOSESSION", "HELD", "CONFLICT", "WRONGTYPE", "LIMIT")),
    _doc("LOCK.RELEASE", (_KEY, _SESSION, _TOKEN, _REQID), "Releases the session's hold (of that token).",
         "`+OK`.", "locks", flags=("write", "fast"), keyed=True, reqid=True,
         errors=("NOSESSION", "NOTHOLDER", "WRONGTYPE")),
    _doc("LOCK.CANCEL", (_KEY, _SESSION, Arg("t", "integer", "TICKET"), _REQID),
         "Withdraws one contender by its ticket (a waiter leaves the queue, a holder releases).", "`+OK`.",
         "locks", flags=("write",), keyed=True, reqid=True, errors=("NOSESSION", "NOTHOLDER")),
    _doc("LOCK.INFO", (_KEY, _opt("COUNT", "n", "integer")), "A key's holders and waiters (the first n of each).",
         "A map: key, kind, permits, mode, holders, waiters, holder_count, waiter_count.", "locks", flags=_READ,
         keyed=True),
    # --- semaphores
    _doc("SEM.ACQUIRE", (_KEY, _SESSION, _a("capacity", "integer"), _TIMEOUT, _LABEL, _REQID),
         "Takes one unit of the semaphore `key` of `capacity` units, waiting in FIFO order. The third "
         "argument is the semaphore's size, not a number of units to take: every holder holds one unit, "
         "and every acquire must name the capacity the first one set (else `-BADARG`).", "The fencing token.", "locks", flags=("write", "blocking"),
         keyed=True, reqid=True, errors=("NOSESSION", "TIMEOUT", "HELD", "CONFLICT", "WRONGTYPE", "LIMIT")),
    _doc("SEM.TRY", (_KEY, _SESSION, _a("capacity", "integer"), _LABEL, _REQID),
         "Takes one unit of the semaphore of `capacity` units if one is free now.",
         "The fencing token, or nil when every unit is held.", "locks", flags=("write", "fast"), keyed=True,
         reqid=True, errors=("NOSESSION", "HELD", "CONFLICT", "WRONGTYPE", "LIMIT")),
    _doc("SEM.RELEASE", (_KEY, _SESSION, _TOKEN, _REQID), "Gives the session's unit back.", "`+OK`.", "locks",
         flags=("write", "fast"), keyed=True, reqid=True, errors=("NOSESSION", "NOTHOLDER", "WRONGTYPE")),
    _doc("SEM.INFO", (_KEY, _opt("COUNT", "n", "integer")), "A semaphore's capacity, holders and waiters.",
         "The map LOCK.INFO answers (`permits`: the capacity).", "locks", flags=_READ, keyed=True),
    # --- capacity pools (fair shares, priorities, preemption)
    _doc("POOL.DEFINE", (_a("pool", "key"), _a("capacity", "integer"), _opt("GRACE", "ms", "integer"),
                         _opt("PATIENCE", "n", "integer")),
         "Defines a pool of `capacity` units (or changes it): GRACE (5000 ms) is how long a preempted lease "
         "has to give back, PATIENCE (16) how many later grants a waiting request lets pass. Admin; it sets, so a retry is harmless.",
         "`+OK`.", "locks", flags=("write",), keyed=True),
    _doc("POOL.TENANT", (_a("pool", "key"), _a("tenant"), _opt("WEIGHT", "w", "integer"),
                         _opt("MIN", "units", "integer"), _opt("MAX", "units", "integer"),
                         _opt("BAND", "priority", "integer")),
         "Defines a tenant of a pool (or changes it): its weight in the fair share (1), the units it is "
         "guaranteed (0) and may hold at most (the capacity), and its priority band 0-7 (0). Admin; it sets, so a retry is harmless.",
         "`+OK`.", "locks", flags=("write",), keyed=True),
    _doc("POOL.ACQUIRE", (_a("pool", "key"), _SESSION, _a("tenant"), _a("units", "integer"), _TIMEOUT, _REQID),
         "Leases `units` of the pool for the tenant, waiting (weighted max-min fair share across tenants, "
         "FIFO within one; a higher band may preempt a lower one's leases over its share, after a give-back "
         "grace). A retry with the same REQID whose first attempt was left waiting takes that wait over "
         "(its first TIMEOUT still counts): it answers the token if the wait was granted meanwhile, or "
         "`-NOTFOUND` if the wait ended meanwhile (then ask again with a new REQID).",
         "The lease's fencing token.", "locks", flags=("write", "blocking"), keyed=True, reqid=True,
         errors=("NOSESSION", "TIMEOUT", "NOTFOUND", "LIMIT")),
    _doc("POOL.TRY", (_a("pool", "key"), _SESSION, _a("tenant"), _a("units", "integer"), _REQID),
         "Leases `units` of the pool for the tenant if they are free for it now.",
         "The lease's fencing token, or nil.", "locks", flags=("write", "fast"), keyed=True, reqid=True,
         errors=("NOSESSION", "LIMIT")),
    _doc("POOL.RELEASE", (_a("pool", "key"), _SESSION, _a("token", "integer"), _REQID), "Gives a lease back.",
         "`+OK`.", "locks", flags=("write", "fast"), keyed=True, reqid=True, errors=("NOSESSION", "NOTHOLDER")),
    _doc("POOL.RESIZE", (_a("pool", "key"), _SESSION, _a("token", "integer"), _a("units", "integer"), _REQID),
         "Grows or shrinks a lease (shrinking always succeeds; growing only if the units are free for it).",
         "`:1` if done, `:0` if the units to grow by are not free now.", "locks", flags=("write", "fast"),
         keyed=True, reqid=True, errors=("NOSESSION", "NOTHOLDER")),
    _doc("POOL.INFO", (_a("pool", "key"), _opt("SESSION", "id", "integer")),
         "A pool's capacity, tenants (with their fair share), leases and waits; with SESSION only that "
         "session's leases and waits (a client settles an acquire it gave up with it).",
         "A map: `capacity`, `grace_ms`, `patience`, `held`, `tenants` (name, weight, min, max, band, "
         "held, share), `leases` (session, tenant, units, token, giveback_deadline_ms), `waiting` (how many), "
         "`waits` (session, tenant, units, ticket); nil if no such pool.", "locks", flags=_READ, keyed=True),
    # --- elections
    _doc("ELECT.CAMPAIGN", (_a("name", "key"), _SESSION, _a("value"), _TIMEOUT, _REQID),
         "Waits to lead the election, then leads with value.", "The leader's fencing token.", "locks",
         flags=("write", "blocking"), keyed=True, reqid=True,
         errors=("NOSESSION", "TIMEOUT", "HELD", "WRONGTYPE", "LIMIT")),
    _doc("ELECT.PROCLAIM", (_a("name", "key"), _SESSION, _a("value"), _TOKEN, _REQID),
         "The leader publishes a new value.", "The revision of the change (an integer).", "locks",
         flags=("write", "fast"), keyed=True, reqid=True, errors=("NOSESSION", "NOTHOLDER", "WRONGTYPE")),
    _doc("ELECT.RESIGN", (_a("name", "key"), _SESSION, _TOKEN, _REQID), "Leaves the election (or its queue).",
         "`+OK`.", "locks", flags=("write", "fast"), keyed=True, reqid=True,
         errors=("NOSESSION", "NOTHOLDER", "WRONGTYPE")),
    _doc("ELECT.LEADER", (_a("name", "key"),), "The election's leader.",
         "A map: session, value, token; nil when nobody leads.", "locks", flags=_READ, keyed=True),
    # --- state
    _doc("LOCKS.KEYS", (Arg("prefix", optional=True),), "Every key in use under prefix, sorted.",
         "An array of keys; `-LIMIT` past max_reply_items (page with LOCKS.SCAN).", "locks", flags=("readonly",),
         errors=("LIMIT",)),
    _doc("LOCKS.SCAN", (_a("cursor", "integer"), _opt("MATCH", "prefix"), _opt("COUNT", "n", "integer")),
         "Pages through the keys in use, as SCAN does (MATCH is a prefix, not a glob).",
         "`[next cursor, [keys]]`; the scan ends when the cursor is 0.", "locks", flags=("readonly",)),
    _doc("LOCKS.TOP", (_opt("COUNT", "n", "integer"), _opt("SCAN", "m", "integer"), _opt("AFTER", "cursor", "integer")),
         "The busiest keys and the longest waits among at most SCAN keys (10000; at most 100000) "
         "from cursor AFTER: COUNT of each (10; at most 100). What `coordcore top` shows; admin.",
         "`[next cursor, busiest, longest]`, each a list of `[key, holders, waiters, waited revisions, "
         "waited ms]`: how long the oldest waiter has waited, in revisions and in ms of batch time (0 "
         "without a waiter; the ms are nil when unknown, for a waiter restored from a snapshot); longest "
         "first (revisions and batch time rise together). The cursor is 0 when the scan reached the end.",
         "locks", flags=("readonly",)),
    # --- the audit trail (serve --audit-key)
    _doc("AUDIT.CHECKPOINT", (),
         "Signs a checkpoint of the audit trail now (tree size, root, revision, time; Ed25519).",
         "A map: `size`, `root` (hex), `revision`, `time_ms`; `-UNAVAILABLE` without --audit-key.", "server",
         flags=("write",)),
    _doc("AUDIT.HISTORY", (_a("prefix"), _a("from_ms", "integer"), _a("to_ms", "integer"),
                           _opt("AFTER", "revision", "integer"), _opt("COUNT", "n", "integer")),
         "The audited events (opened, granted, waited, released, expired) on keys under prefix "
         "between two times, paged by revision.",
         "`[next revision, [events]]`, each event a map: `index`, `time_ms`, `revision`, `event`, `session`, "
         "`user`, `key`, `mode`, `ticket`, `token`; the paging ends at next revision 0.", "server",
         flags=("readonly",)),
    _doc("LOCKS.REVISION", (), "The lock state's revision (every change raises it).", "An integer.", "locks",
         flags=_READ),
    # --- watches
    _doc("WATCH", (_a("prefix"),), "Pushes every change of a key under prefix to this connection.",
         "`+OK`, then a push `[watch, revision, kind, key, {mode, session, ticket, token, value}]` per "
         "change (RESP3: a `>` push; RESP2: an array, and the connection serves only watch commands "
         "meanwhile).", "locks", flags=("pubsub",), errors=("LAGGED",)),
    _doc("UNWATCH", (Arg("prefix", optional=True),), "Stops one watch, or all.", "`+OK`.", "locks",
         flags=("pubsub",)),
    _doc("SUBSCRIBE", (_a("prefix"),),
         "WATCH in pub/sub's form, for redis-cli (`redis-cli SUBSCRIBE prefix` prints the pushes).",
         "`[subscribe, prefix, 1]`, then WATCH's pushes.", "locks", flags=("pubsub",), errors=("LAGGED",)),
    _doc("UNSUBSCRIBE", (Arg("prefix", optional=True, multiple=True),), "UNWATCH in pub/sub's form.",
         "`[unsubscribe, prefix, watches left]` per prefix.", "locks", flags=("pubsub",)),
])


# --- COMMAND's replies -----------------------------------------------------------------


def _set(words: tuple[str, ...], resp3: bool) -> bytes:
    body = b"".join(b"+%s\r\n" % w.encode() for w in words)
    return b"%s%d\r\n%s" % (b"~" if resp3 else b"*", len(words), body)


def command_info(name: bytes, resp3: bool) -> bytes:
    """``COMMAND INFO name``'s entry: name, arity, flags, first key, last key, step,
    ACL categories, tips, key specs, subcommands (Redis 7's ten fields)."""
    doc = DOCS[name]
    return _info(doc, doc.name.lower(), resp3)


def _info(doc: Doc, name: str, resp3: bool) -> bytes:
    first = 1 if doc.keyed else 0
    specs = [resp.encode_map([(b"begin_search", resp.encode_map([
        (b"type", resp.encode_bulk(b"index")),
        (b"spec", resp.encode_map([(b"index", resp.encode_int(1))], resp3))], resp3)),
        (b"find_keys", resp.encode_map([
            (b"type", resp.encode_bulk(b"range")),
            (b"spec", resp.encode_map([(b"lastkey", resp.encode_int(0)), (b"keystep", resp.encode_int(1)),
                                       (b"limit", resp.encode_int(0))], resp3))], resp3))], resp3)] if doc.keyed else []
    subs = [_info(sub, f"{name}|{word.lower()}", resp3) for word, sub in doc.subcommands]
    return resp.encode_array([
        resp.encode_bulk(name.encode()), resp.encode_int(doc.arity),
        _set(doc.flags, resp3), resp.encode_int(first), resp.encode_int(first), resp.encode_int(first),
        _set((f"@{doc.group}",), resp3), resp.encode_array([]), resp.encode_array(specs), resp.encode_array(subs)])


def _arg(arg: Arg, resp3: bool) -> bytes:
    pairs = [(b"name", resp.encode_bulk(arg.name.encode())), (b"type", resp.encode_bulk(arg.type.encode()))]
    if arg.type == "key":
        pairs.append((b"key_spec_index", resp.encode_int(0)))
    if arg.token is not None:
        pairs.append((b"token", resp.encode_bulk(arg.token.encode())))
    if arg.type != "pure-token":
        pairs.append((b"display_text", resp.encode_bulk(arg.name.encode())))
    flags = [f for f, on in (("optional", arg.optional), ("multiple", arg.multiple)) if on]
    if flags:
        pairs.append((b"flags", _set(tuple(flags), resp3)))
    return resp.encode_map(pairs, resp3)


def _docs(doc: Doc, name: str, resp3: bool) -> bytes:
    pairs = [(b"summary", resp.encode_bulk(doc.summary.encode())), (b"since", resp.encode_bulk(b"0.1.0")),
             (b"group", resp.encode_bulk(doc.group.encode()))]
    if doc.args:
        pairs.append((b"arguments", resp.encode_array([_arg(a, resp3) for a in doc.args])))
    if doc.subcommands:
        pairs.append((b"subcommands", resp.encode_map(
            [(f"{name}|{w.lower()}".encode(), _docs(s, f"{name}|{w.lower()}", resp3)) for w, s in doc.subcommands],
            resp3)))
    return resp.encode_map(pairs, resp3)


def command_docs(names: list[bytes], resp3: bool) -> bytes:
    """``COMMAND DOCS``'s map for ``names`` (documented ones; others are left out, as Redis)."""
    return resp.encode_map([(DOCS[n].name.lower().encode(), _docs(DOCS[n], DOCS[n].name.lower(), resp3))
                            for n in names if n in DOCS], resp3)


# --- docs/PROTOCOL.md ------------------------------------------------------------------

#: The line above the generated command pages in docs/PROTOCOL.md.
MARKER = "<!-- command pages: generated by `python -m coordcore.server.cmddocs`; do not edit below -->"

_GROUPS = (("connection", "Connection"), ("server", "Server"), ("ids", "IDs"), ("locks", "Locks, semaphores, "
           "elections, watches"))


def _page(doc: Doc, level: str = "###") -> list[str]:
    lines = [f"{level} {doc.name}", "", f"`{doc.syntax}`" if doc.args or not doc.subcommands else
             f"`{doc.name} subcommand ...`", "", doc.summary, "", f"Reply: {doc.reply}"]
    if doc.errors:
        lines += ["", "Errors: " + ", ".join(f"`{e}`" for e in doc.errors)]
    if doc.reqid:
        lines += ["", "Idempotent with `REQID n`: a retry with the same n answers the first outcome."]
    lines.append("")
    for _, sub in doc.subcommands:
        lines += [f"#### {sub.name}", "", f"`{sub.syntax}`", "", sub.summary, "", f"Reply: {sub.reply}"]
        if sub.errors:
            lines += ["", "Errors: " + ", ".join(f"`{e}`" for e in sub.errors)]
        lines.append("")
    return lines


def _first_sentence(text: str | None) -> str:
    words = " ".join((text or "").split())
    return words.split(". ")[0].rstrip(".").replace("``", "`") + "." if words else ""


def render_markdown() -> str:
    """The generated part of docs/PROTOCOL.md: the error code words (from
    :data:`coordcore.errors.ERROR_CODES`) and the command pages (from :data:`DOCS`)."""
    lines = [MARKER, "", "## Error code words", "", "| code | exception | meaning |", "| --- | --- | --- |"]
    for code, cls in sorted(ERROR_CODES.items()):
        lines.append(f"| `{code}` | `{cls.__name__}` | {_first_sentence(cls.__doc__)} |")
    lines.append("")
    for group, title in _GROUPS:
        lines += [f"## {title}", ""]
        for doc in DOCS.values():
            if doc.group == group:
                lines += _page(doc)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
