"""One exception hierarchy for all of coordcore.

Every error derives from :class:`CoordcoreError`; each leaf also derives from the
builtin it resembles, so ``except ValueError`` keeps working for callers that do not
know coordcore. Every class that can cross the wire has a unique ``code`` word: the
server sends ``-CODE message`` and the clients raise ``error_for_code(CODE)(message)``.

>>> from coordcore.errors import BadArgument, CoordcoreError, error_for_code
>>> issubclass(BadArgument, ValueError) and issubclass(BadArgument, CoordcoreError)
True
>>> error_for_code("BADARG") is BadArgument
True
>>> error_for_code("NO-SUCH-CODE") is CoordcoreError
True
"""
from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CoordcoreError",
    "BadArgument",
    "WrongType",
    "NotFound",
    "Unavailable",
    "InternalError",
    # ids
    "ClockMovedBackwards",
    "ForkedGenerator",
    "WorkerIdUnavailable",
    "WorkerLeaseLost",
    "StateFileError",
    # ring
    "EmptyRing",
    # locks
    "SessionExpired",
    "LockTimeout",
    "NotLockHolder",
    "LimitExceeded",
    "LockConflict",
    "AlreadyHeld",
    "NotLeader",
    "Cancelled",
    "LogCorrupted",
    "ServiceClosed",
    "WatchLagged",
    # server and clients
    "ProtocolError",
    "RequestTooLarge",
    "UnknownCommand",
    "AuthRequired",
    "AuthFailed",
    "NoPermission",
    "TooManyConnections",
    "ConnectionLost",
    "Moved",
    "error_for_code",
    "ERROR_CODES",
]

ERROR_CODES: dict[str, type[CoordcoreError]] = {}


class CoordcoreError(Exception):
    """Root of every error coordcore raises. ``code`` is its word on the wire."""

    code: ClassVar[str] = "ERR"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is not None:
            if code in ERROR_CODES:
                raise TypeError(f"error code {code!r} used twice: {ERROR_CODES[code]!r} and {cls!r}")
            ERROR_CODES[code] = cls


ERROR_CODES["ERR"] = CoordcoreError


def error_for_code(code: str) -> type[CoordcoreError]:
    """The exception class for a wire code word (``CoordcoreError`` if unknown)."""
    return ERROR_CODES.get(code, CoordcoreError)


# --- general -----------------------------------------------------------------------


class BadArgument(CoordcoreError, ValueError):
    """An argument is out of range or malformed."""

    code = "BADARG"


class WrongType(CoordcoreError, TypeError):
    """An argument has the wrong type."""

    code = "WRONGTYPE"


class NotFound(CoordcoreError, LookupError):
    """The named object (node, session, lock, election...) does not exist."""

    code = "NOTFOUND"


class Unavailable(CoordcoreError, RuntimeError):
    """The operation cannot be served right now (shutting down, not ready)."""

    code = "UNAVAILABLE"


class InternalError(CoordcoreError, RuntimeError):
    """A bug on the server's side: the reply names the exception, the server's log has
    the traceback. Its wire code is the root's ``ERR`` (so clients raise
    :class:`CoordcoreError` for it, as for any ``-ERR``)."""

    @classmethod
    def about(cls, exc: BaseException) -> InternalError:
        """The error that reports ``exc``.

        >>> str(InternalError.about(KeyError("k")))
        'internal error: KeyError'
        """
        return cls(f"internal error: {type(exc).__name__}")


# --- ids ---------------------------------------------------------------------------


class ClockMovedBackwards(CoordcoreError, RuntimeError):
    """The wall clock went back further than the generator's policy allows.

    ``drift_ms`` is how far behind the last issued timestamp the clock was.
    """

    code = "CLOCKBACK"

    def __init__(self, message: str, drift_ms: float = 0.0) -> None:
        super().__init__(message)
        self.drift_ms = drift_ms

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.drift_ms))


class ForkedGenerator(CoordcoreError, RuntimeError):
    """An ID generator was used in a forked child without a new worker ID."""

    code = "FORKED"


class WorkerIdUnavailable(CoordcoreError, LookupError):
    """No worker ID could be obtained (none configured, or all leased)."""

    code = "NOWORKER"


class WorkerLeaseLost(CoordcoreError, RuntimeError):
    """The lease behind this generator's worker ID was lost: issuance stopped."""

    code = "LEASELOST"


class StateFileError(CoordcoreError, OSError):
    """The generator's state file cannot be read, written or trusted."""

    code = "STATEFILE"


# --- ring --------------------------------------------------------------------------


class EmptyRing(CoordcoreError, LookupError):
    """A lookup on a ring that has no nodes."""

    code = "EMPTYRING"


# --- locks -------------------------------------------------------------------------


class SessionExpired(CoordcoreError, RuntimeError):
    """The session does not exist any more (expired, closed, or never opened)."""

    code = "NOSESSION"


class LockTimeout(CoordcoreError, TimeoutError):
    """A lock, semaphore or campaign was not granted within its timeout."""

    code = "TIMEOUT"


class NotLockHolder(CoordcoreError, RuntimeError):
    """Releasing (or using) a lock, permit or leadership this session does not hold."""

    code = "NOTHOLDER"


class LockConflict(CoordcoreError, RuntimeError):
    """The request conflicts with what the session already holds or waits for."""

    code = "CONFLICT"


class AlreadyHeld(LockConflict):
    """The session already holds (or waits for) this lock, and waiting again would wait
    for itself forever: a nested exclusive acquire, or a shared hold asked to become
    exclusive (there is no upgrade). Ask for ``reentrant=True`` to nest, or use another
    session per owner."""

    code = "HELD"


class LimitExceeded(CoordcoreError, RuntimeError):
    """A configured bound was reached: sessions on the server, holds and waits of one
    session, or items one reply may carry (page with the command's cursor instead)."""

    code = "LIMIT"


class NotLeader(CoordcoreError, RuntimeError):
    """A proclaim or resign by a session that is not the election's leader."""

    code = "NOTLEADER"


class Cancelled(CoordcoreError, RuntimeError):
    """A waiting request was cancelled before it was granted."""

    code = "CANCELLED"


class LogCorrupted(CoordcoreError, OSError):
    """The durable log or a snapshot is corrupt somewhere other than a torn tail."""

    code = "CORRUPT"


class ServiceClosed(CoordcoreError, RuntimeError):
    """The lock service (or client) is closed."""

    code = "CLOSED"


class WatchLagged(CoordcoreError, RuntimeError):
    """A watch (or election observer) fell further behind than its buffer allows and was
    stopped; the events up to ``last_revision`` were delivered. Re-read the state and
    watch again."""

    code = "LAGGED"

    def __init__(self, message: str, last_revision: int = 0) -> None:
        super().__init__(message)
        self.last_revision = last_revision

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.last_revision))


# --- server and clients ------------------------------------------------------------


class ProtocolError(CoordcoreError, ValueError):
    """A malformed protocol frame."""

    code = "PROTO"


class RequestTooLarge(CoordcoreError, ValueError):
    """A request or one of its arguments exceeds the server's limits."""

    code = "TOOBIG"


class UnknownCommand(CoordcoreError, ValueError):
    """The server does not know the command."""

    code = "UNKNOWN"


class NoProtocol(CoordcoreError, ValueError):
    """HELLO asked for a protocol version the server does not speak (it speaks RESP2
    and RESP3); the connection keeps its protocol."""

    code = "NOPROTO"


class AuthRequired(CoordcoreError, PermissionError):
    """The server requires AUTH before this command."""

    code = "NOAUTH"


class AuthFailed(CoordcoreError, PermissionError):
    """AUTH was given a wrong secret."""

    code = "WRONGPASS"


class NoPermission(CoordcoreError, PermissionError):
    """The connection's user may not run this command or touch this key (the ACL);
    nothing was done."""

    code = "NOPERM"


class TooManyConnections(CoordcoreError, ConnectionError):
    """The server is at its connection limit."""

    code = "MAXCONN"


class ConnectionLost(CoordcoreError, ConnectionError):
    """The connection to the server broke; the request's outcome is unknown."""

    code = "CONNLOST"


class Moved(CoordcoreError, RuntimeError):
    """Cluster mode: this server is not the writer; the leader serves at ``address``
    (``-MOVED host:port``, as Redis Cluster redirects). Nothing was applied here, so
    the client may send the command again to ``address``."""

    code = "MOVED"

    @property
    def address(self) -> str:
        """The leader's ``host:port`` (the first word of the message)."""
        return str(self).partition(" ")[0]
