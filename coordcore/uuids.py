"""Time-ordered 128-bit IDs: UUIDv7 (RFC 9562) and ULID, beside the 64-bit Snowflakes.

Configure a generator once, then ask for each ID in the form you need:

>>> import uuid
>>> from coordcore.uuids import UUIDv7Generator, ULIDGenerator
>>> gen = UUIDv7Generator()
>>> u = gen.next_uuid()                  # a uuid.UUID
>>> (u.version, u.variant == uuid.RFC_4122)
(7, True)
>>> s, b = gen.next_str(), gen.next_bytes()
>>> len(s), len(b), uuid.UUID(s) > u, uuid.UUID(bytes=b) > uuid.UUID(s)
(36, 16, True, True)
>>> ids = gen.next_array(10_000)         # numpy, 16 bytes per ID (dtype 'V16')
>>> ids.dtype.str, uuid.UUID(bytes=ids[0].tobytes()) > uuid.UUID(bytes=b)
('|V16', True)
>>> keys = ULIDGenerator().next_strs(3)  # Crockford base32, 26 characters
>>> [len(k) for k in keys], keys == sorted(keys)
([26, 26, 26], True)

Formats
-------
* **UUIDv7** (RFC 9562): 48-bit Unix milliseconds, version 7, then a 42-bit counter
  (the 12 bits of ``rand_a`` and the top 30 bits of ``rand_b``), the variant bits, and
  32 random bits per ID. This is RFC 9562 section 6.2's *Method 1* (fixed-length
  dedicated counter) at the longest length it allows: the counter is seeded from the
  CSPRNG at each new millisecond with its top bit zero (the RFC's rollover guard), so a
  millisecond has room for at least 2**41 IDs and the timestamp stays on the wall clock
  even at batch rates of hundreds of millions per second (a 12-bit counter would run
  the timestamp ahead of the clock above 2-4 million IDs per second).
* **ULID** (github.com/ulid/spec): 48-bit Unix milliseconds and 80 bits of randomness,
  with the spec's monotonic rule: the first ID of a millisecond draws 80 random bits,
  the next ones add 1.

Both: a counter that would overflow moves the timestamp one millisecond ahead of the
clock and draws a new seed (the ULID spec fails there instead; RFC 9562 allows this).

What holds
----------
* **Never a repeat, never a decrease** within a generator, across threads: the state
  (timestamp and counter) is claimed under a spinlock held for nanoseconds, and on
  free-threaded builds too. A clock that stands still or goes back keeps the last
  timestamp and the counter goes on rising (as ``clock="logical"`` does for
  :class:`~coordcore.ids.Snowflake`).
* **Fork**: a child process drops the random bytes it inherited and leaps its counter
  ahead by a random 32-bit amount: its IDs still sort after every ID its parent issued
  before the fork, and do not retrace the parent's. (A ``fork()`` made from C is
  caught too.) A lock held by a thread of the parent at the fork is taken over.
* **Randomness** comes from the kernel's CSPRNG (``getrandom(2)``), fetched 16 KiB at a
  time into a buffer per generator: no system call per ID.

Binary forms: 16 bytes, big-endian (``uuid.UUID.bytes`` order), for both formats, so
sorting the bytes sorts by time. In numpy a batch is a 1-D array of dtype ``'V16'``; view
it as ``arr.view('>u8').reshape(-1, 2)`` for (high, low) 64-bit halves, or
``arr.view(np.uint8).reshape(-1, 16)`` for the bytes.
"""
from __future__ import annotations

import uuid as _uuid
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from coordcore._native import require
from coordcore.errors import BadArgument, WrongType
from coordcore.ids import SkewClock, _check_int

if TYPE_CHECKING:
    from coordcore._native import uuidgen as _uuidgen
else:
    _uuidgen = require("uuidgen")

__all__ = [
    "UUIDv7Generator",
    "ULIDGenerator",
    "ID_DTYPE",
    "uuid7",
    "ulid",
    "timestamp_ms",
]

#: The numpy dtype of a batch: one 16-byte record per ID, big-endian.
ID_DTYPE = np.dtype("V16")
_MAX_BATCH = 2**36


class _Generator128(_uuidgen.Generator):
    """What both formats share; see :class:`UUIDv7Generator` and :class:`ULIDGenerator`."""

    __slots__ = ()
    _V7 = True

    def __init__(self, *, clock_source: SkewClock | None = None) -> None:
        if clock_source is not None and not isinstance(clock_source, SkewClock):
            raise WrongType(f"clock_source must be a SkewClock or None, not {type(clock_source).__name__}")
        self._configure(v7=self._V7, clock_source=clock_source)

    def next_array(self, n: int | None = None, out: npt.NDArray[np.void] | None = None) -> npt.NDArray[np.void]:
        """``n`` new IDs in a numpy array of dtype ``'V16'`` (16 big-endian bytes each),
        rising; with ``out``, fill the first ``n`` (default: all) records of that array
        and return that view."""
        if out is None:
            if n is None:
                raise BadArgument("next_array needs n or out")
            n = _check_int("n", n, 0, _MAX_BATCH)
            out = np.empty(n, dtype=ID_DTYPE)
        else:
            if not isinstance(out, np.ndarray) or out.dtype != ID_DTYPE or out.ndim != 1:
                raise WrongType("out must be a 1-D numpy array of dtype 'V16'")
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise BadArgument("out must be C-contiguous and writeable")
            n = len(out) if n is None else _check_int("n", n, 0, len(out))
            out = out[:n]
        self._fill(out.view(np.uint8))
        return out

    def next_strs(self, n: int) -> list[str]:
        """``n`` new IDs as a list of their text forms, rising."""
        return super().next_strs(_check_int("n", n, 0, _MAX_BATCH))


class UUIDv7Generator(_Generator128):
    """UUIDv7 (RFC 9562) generator: :meth:`next_uuid` (a :class:`uuid.UUID`),
    :meth:`next_str` (36-char lowercase hex), :meth:`next_bytes` (16 bytes),
    :meth:`next_int`, and in batches :meth:`next_array` (numpy ``'V16'``) and
    :meth:`next_strs`. ``clock_source`` takes a :class:`~coordcore.ids.SkewClock` for tests.

    >>> gen = UUIDv7Generator()
    >>> a, b = gen.next_uuid(), gen.next_uuid()
    >>> a < b and a.version == 7
    True
    >>> import time
    >>> abs(timestamp_ms(b) - time.time() * 1000) < 1000
    True
    """

    __slots__ = ()
    _V7 = True

    def __repr__(self) -> str:
        return "UUIDv7Generator()"


class ULIDGenerator(_Generator128):
    """ULID generator: :meth:`next_str` (26-char Crockford base32), :meth:`next_bytes`
    (the 16-byte binary form), :meth:`next_int`, :meth:`next_uuid` (the same 128 bits as a
    :class:`uuid.UUID`, as ULID libraries convert them; not a valid RFC version), and in
    batches :meth:`next_array` and :meth:`next_strs`.

    >>> gen = ULIDGenerator()
    >>> a, b = gen.next_str(), gen.next_str()
    >>> len(a), a < b, a[0] in "01234567"
    (26, True, True)
    """

    __slots__ = ()
    _V7 = False

    def __repr__(self) -> str:
        return "ULIDGenerator()"


_default_v7: UUIDv7Generator | None = None
_default_ulid: ULIDGenerator | None = None


def uuid7() -> _uuid.UUID:
    """A new UUIDv7 from the process's shared generator.

    >>> uuid7().version
    7
    """
    global _default_v7
    if _default_v7 is None:
        _default_v7 = UUIDv7Generator()
    return _default_v7.next_uuid()


def ulid() -> str:
    """A new ULID, as text, from the process's shared generator.

    >>> len(ulid())
    26
    """
    global _default_ulid
    if _default_ulid is None:
        _default_ulid = ULIDGenerator()
    return _default_ulid.next_str()


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def timestamp_ms(value: _uuid.UUID | str | bytes | int) -> int:
    """The Unix-millisecond timestamp of a UUIDv7 or ULID (a UUID, its text, its 16
    bytes, or its int).

    >>> timestamp_ms("017f22e2-79b0-7cc3-98c4-dc0c0c07398f")   # RFC 9562's example UUIDv7
    1645557742000
    >>> timestamp_ms("01ARZ3NDEKTSV4RRFFQ69G5FAV")             # the ULID spec's example
    1469922850259
    >>> timestamp_ms(bytes.fromhex("017f22e279b0") + bytes(10))
    1645557742000
    """
    if isinstance(value, _uuid.UUID):
        return value.int >> 80
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != 16:
            raise BadArgument(f"a binary ID is 16 bytes, not {len(value)}")
        return int.from_bytes(bytes(value)[:6], "big")
    if isinstance(value, str):
        if len(value) == 26:
            try:
                n = 0
                for c in value[:10].upper():
                    n = n * 32 + _CROCKFORD[c]
            except KeyError:
                raise BadArgument(f"not a ULID: {value!r}") from None
            if n >> 48:  # 26 characters are 130 bits: the top two must be zero
                raise BadArgument(f"not a ULID (too large): {value!r}")
            return n
        try:
            return _uuid.UUID(value).int >> 80
        except ValueError:
            raise BadArgument(f"not a UUID or ULID: {value!r}") from None
    return _check_int("value", value, 0, 2**128 - 1) >> 80
