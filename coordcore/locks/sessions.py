"""Sessions: leases that hold locks, and the credentials that act for them.

A session is named in public by its id and used only with its credential,
``b"<id>.<secret hex>"``: the secret is chosen where ``OPEN`` is accepted and only its
SHA-256 goes into the log (so into every replica), never the secret itself.

>>> secret, digest = new_secret()
>>> cred = credential(7, secret)
>>> parse_credential(cred) == (7, digest), parse_credential(b"7"), parse_credential(cred.upper())
(True, None, None)
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from coordcore._holds import LostCallbacks
from coordcore.errors import ServiceClosed, SessionExpired

if TYPE_CHECKING:
    from coordcore.locks.service import Key, LockService, _GrantContext
    from coordcore.types import Grant

__all__ = ["SECRET_BYTES", "Session", "credential", "new_secret", "parse_credential"]

logger = logging.getLogger("coordcore.locks.service")

#: Bytes of a session credential's secret (from ``secrets``).
SECRET_BYTES: Final = 16
_HEX: Final = frozenset(b"0123456789abcdef")


def _digest(secret: bytes, owner: bytes) -> bytes:
    # The owner (a server user's name; empty for the default user) is folded into the
    # digest the OPEN command logs: the binding replicates and survives restarts with no
    # log format change, and another user's connection computes another digest, so the
    # credential simply does not match there.
    return hashlib.sha256(owner + b"\0" + secret if owner else secret).digest()


def new_secret(owner: bytes = b"") -> tuple[bytes, bytes]:
    """A fresh secret and its digest for ``owner`` (what the OPEN command carries into
    the log)."""
    secret = secrets.token_bytes(SECRET_BYTES)
    return secret, _digest(secret, owner)


def credential(session_id: int, secret: bytes) -> bytes:
    """The credential of session ``session_id`` opened with ``secret``."""
    return b"%d.%s" % (session_id, secret.hex().encode())


def parse_credential(cred: bytes, owner: bytes = b"") -> tuple[int, bytes] | None:
    """``(session id, digest of the secret for owner)`` of a well-formed credential, else None.
    One spelling only (decimal id, lowercase hex), as a server's native lane reads it."""
    sid_text, dot, secret_hex = cred.partition(b".")
    if not dot or len(secret_hex) != 2 * SECRET_BYTES or not sid_text.isdigit() or len(sid_text) > 19 \
            or not _HEX.issuperset(secret_hex):
        return None
    return int(sid_text), _digest(bytes.fromhex(secret_hex.decode("ascii")), owner)


class Session:
    """A lease: alive while kept alive (in the background unless ``keepalive=False``).

    Everything acquired with a session is released when it closes or expires. ``done``
    resolves (with ``"closed"``, ``"expired"`` or ``"service closed"``) when it ends, and
    the ``on_lost`` callbacks run with that reason.

    The background keep-alive runs every ttl/3; each one resets the lease to the TTL
    from the batch that applies it (it never adds). One that comes late (a loop blocked
    longer than the TTL) finds the session expired: the session ends as above. Past
    ``max_lifetime`` seconds from opening (if given) keep-alives are refused, so the
    session expires at most a TTL later.
    """

    def __init__(self, service: LockService, session_id: int, ttl: float, keepalive: bool,
                 credential: bytes = b"", max_lifetime: float | None = None) -> None:
        self.id = session_id
        self.ttl = ttl
        #: ``b"<id>.<secret>"``: what a server's client presents to act for this session
        #: (the id alone is public; empty for a handle made by :meth:`LockService.session`).
        self.credential = credential
        self.max_lifetime = max_lifetime
        self._service = service
        loop = asyncio.get_running_loop()
        self._opened_at = loop.time()
        self.done: asyncio.Future[str] = loop.create_future()
        self._lost = LostCallbacks()
        self._keepalive: asyncio.Task[None] | None = None
        if keepalive:
            self._keepalive = asyncio.ensure_future(self._keepalive_loop())

    @property
    def expired(self) -> bool:
        """True once the session ended by expiry."""
        return self.done.done() and self.done.result() == "expired"

    @property
    def alive(self) -> bool:
        """Not yet closed or expired (as far as this process has seen)."""
        return not self.done.done()

    async def _keepalive_loop(self) -> None:
        interval = max(self.ttl / 3.0, 0.001)
        while not self.done.done():
            await asyncio.sleep(interval)
            try:
                await self._service.keepalive(self)
            except (SessionExpired, ServiceClosed):
                return
            except Exception:  # an I/O error: the service is failing; say so once
                logger.exception("keep-alive of session %d failed", self.id)
                return

    def _end(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        task, self._keepalive = self._keepalive, None
        if task is not None and task is not _current_task():
            task.cancel()
        self._lost.fire(reason, self.id)

    def on_lost(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when the session ends, for any reason (at once
        if it has). Returns a function that unregisters it."""
        return self._lost.add(callback)

    def holds(self, grant: Grant) -> bool:
        """Whether ``grant`` is still held by this session, from the lock machine's state
        (exact here: the machine is in this process)."""
        if grant.session != self.id or self.done.done():
            return False
        info = self._service.info(grant.key)
        return info is not None and any(c.token == grant.token for c in info.holders)

    def past_lifetime(self) -> bool:
        return self.max_lifetime is not None and \
            asyncio.get_running_loop().time() >= self._opened_at + self.max_lifetime

    async def keepalive(self) -> None:
        """Reset the lease to the TTL from now (the background task does this every
        ttl/3). :class:`~coordcore.errors.SessionExpired` if the session ended or is
        past its max lifetime."""
        await self._service.keepalive(self)

    async def close(self) -> None:
        """Close the session, releasing everything it holds and waits for. Idempotent."""
        if self.done.done():
            return
        try:
            await self._service.close_session(self)
        except SessionExpired:
            pass

    def lock(self, key: Key, *, shared: bool = False, timeout: float | None = None, reentrant: bool = False,
             cancel_on_loss: bool = False) -> _GrantContext:
        """``self.service.lock(key, self, ...)``."""
        return self._service.lock(key, self, shared=shared, timeout=timeout, reentrant=reentrant,
                                  cancel_on_loss=cancel_on_loss)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self.done.result() if self.done.done() else "alive"
        return f"<Session {self.id} ttl={self.ttl}s {state}>"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None

