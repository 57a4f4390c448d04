"""Unique, time-ordered 64-bit IDs (Snowflake-style).

Configure a generator once, then call it many times:

>>> from coordcore.ids import Snowflake
>>> gen = Snowflake(worker_id=7)
>>> a, b = gen.next_id(), gen.next_id()
>>> a < b
True
>>> d = gen.decode(b)
>>> (d.worker, d.datacenter)
(7, 0)
>>> ids = gen.next_ids(10_000)          # numpy int64, strictly increasing
>>> bool((ids[1:] > ids[:-1]).all()) and int(ids[0]) > b
True

What holds
----------
* **Never a duplicate, never a decrease** within a generator: the last issued
  (tick, sequence) is one 64-bit word claimed with compare-and-swap, so any number of
  threads share a generator without a lock. On free-threaded CPython builds the same
  CAS makes it safe without the GIL; the rare paths (state-file reservations, fork,
  lease loss) take a ``threading.Lock``.
* **Sequence exhaustion** (more than ``2**sequence_bits`` IDs in one tick) waits for the
  next tick under ``wait`` and ``raise``, and borrows the next tick under ``logical``.
  Never a wrap, never ``None``.
* **Clock regression** (the wall clock behind the last issued tick, or before the
  layout's epoch): ``wait`` sleeps until the clock catches up if the drift is at most
  ``max_backward_ms`` (Ctrl-C interrupts the wait), else raises
  :class:`~coordcore.errors.ClockMovedBackwards`; ``raise`` raises at once (with the
  drift); ``logical`` keeps issuing after the last tick, strictly increasing, and meets
  the wall clock again once it catches up (optionally bounded by ``max_ahead_ms``;
  ``None`` or ``inf``: no bound).
* **Fork**: a child process never issues its parent's IDs. With a
  :class:`WorkerIdSource` the child's generator takes a fresh worker ID from it on first
  use; otherwise it raises :class:`~coordcore.errors.ForkedGenerator`.
* **Restarts**: with ``state_file``, a timestamp high-water mark reserved ahead
  (``reserve_ms``, one fsync per reservation, not per ID) is kept on disk, so a restart
  with the clock set back issues nothing at or below it. :meth:`Snowflake.close` records
  the true last tick, so a clean restart need not wait out the reservation.
"""
from __future__ import annotations

import abc
import datetime as _dt
import fcntl
import math
import operator
import os
import struct
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from coordcore._native import require
from coordcore.errors import (
    BadArgument,
    ClockMovedBackwards,
    ForkedGenerator,
    StateFileError,
    Unavailable,
    WorkerIdUnavailable,
    WorkerLeaseLost,
    WrongType,
)

if TYPE_CHECKING:
    from coordcore._native import snowflake as _snowflake
else:
    _snowflake = require("snowflake")

__all__ = [
    "Layout",
    "LAYOUTS",
    "DecodedId",
    "Snowflake",
    "SkewClock",
    "decode",
    "decode_many",
    "WorkerIdSource",
    "WorkerAssignment",
    "StaticWorkerId",
    "HostWorkerIds",
    "LayoutWarning",
]

SkewClock = _snowflake.SkewClock
ClockPolicy = Literal["wait", "raise", "logical"]
_FIELDS = ("datacenter", "worker", "sequence")
_UTC = _dt.timezone.utc


class LayoutWarning(UserWarning):
    """A layout that works today but will run out of timestamp bits soon."""


def _as_int(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (numpy's too: an ID taken from an
    array is an ``np.int64``), else None. Booleans are not integers here."""
    if isinstance(value, int):
        return None if isinstance(value, bool) else value
    if isinstance(value, (np.integer, np.bool_)):
        return None if isinstance(value, np.bool_) else int(value)
    try:
        return operator.index(value)  # type: ignore[arg-type]  # any other integer type
    except TypeError:
        return None


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as a Python int in [lo, hi], or WrongType / BadArgument naming ``name``."""
    number = _as_int(value)
    if number is None:
        raise WrongType(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= number <= hi:
        raise BadArgument(f"{name} must be in [{lo}, {hi}], got {number}")
    return number


def _check_ms(name: str, value: object, lo: float, hi: float, what: str) -> float:
    """A number of milliseconds (int, float or numpy number) in [lo, hi], as a float;
    else BadArgument saying ``what`` it must be."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadArgument(f"{name} must be {what}, got {value!r}")
    ms = float(value)
    if not lo <= ms <= hi:  # NaN fails this too
        raise BadArgument(f"{name} must be {what}, got {value!r}")
    return ms


def _unix_ms(when: _dt.datetime | float | int) -> int:
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            raise BadArgument("datetime must be timezone-aware (e.g. tzinfo=datetime.timezone.utc)")
        return int(when.timestamp() * 1000)
    number = _as_int(when)
    if number is not None:
        return number
    if isinstance(when, (float, np.floating)):
        if not math.isfinite(when):
            raise BadArgument(f"Unix milliseconds must be finite, got {when!r}")
        return int(when)
    raise WrongType(f"expected a datetime or Unix milliseconds, not {type(when).__name__}")


class DecodedId(NamedTuple):
    """The fields of an ID. ``timestamp_ms`` is Unix milliseconds (start of its tick)."""

    id: int
    timestamp_ms: int
    datacenter: int
    worker: int
    sequence: int

    @property
    def datetime(self) -> _dt.datetime:
        """The timestamp as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.timestamp_ms / 1000, tz=_UTC)


@dataclass(frozen=True)
class Layout:
    """How an ID's 63 usable bits are split: data, not magic shifts.

    The timestamp is always the top field (so IDs sort by time); ``order`` gives the
    other three fields from high to low bits. ``epoch_ms`` is Unix milliseconds,
    ``unit_ms`` the length of one timestamp tick.

    >>> tw = Layout.preset("twitter")
    >>> (tw.timestamp_bits, tw.datacenter_bits, tw.worker_bits, tw.sequence_bits)
    (41, 5, 5, 12)
    >>> tw.ids_per_tick
    4096
    >>> Layout(timestamp_bits=60, datacenter_bits=0, worker_bits=10, sequence_bits=12, epoch_ms=0)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: layout uses 82 bits; at most 63 fit a signed 64-bit ID
    """

    timestamp_bits: int = 41
    datacenter_bits: int = 5
    worker_bits: int = 5
    sequence_bits: int = 12
    epoch_ms: int = 1288834974657
    unit_ms: int = 1
    order: tuple[str, str, str] = _FIELDS
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Stored as Python ints: numpy integers would make every shift and product below
        # wrap at 64 bits.
        for name, lo, hi in (("timestamp_bits", 1, 63), ("datacenter_bits", 0, 62), ("worker_bits", 0, 62),
                             ("sequence_bits", 1, 62), ("unit_ms", 1, 86_400_000), ("epoch_ms", 0, 2**53)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), lo, hi))
        if not isinstance(self.order, (tuple, list)) or sorted(map(str, self.order)) != sorted(_FIELDS):
            raise BadArgument(f"order must be a permutation of {_FIELDS}, got {self.order!r}")
        object.__setattr__(self, "order", tuple(self.order))
        total = self.timestamp_bits + self.datacenter_bits + self.worker_bits + self.sequence_bits
        if total > 63:
            raise BadArgument(f"layout uses {total} bits; at most 63 fit a signed 64-bit ID")
        now_ms = int(time.time() * 1000)
        if self.epoch_ms > now_ms:
            raise BadArgument(f"epoch_ms {self.epoch_ms} is in the future (now {now_ms})")
        end_ms = self.epoch_ms + (2**self.timestamp_bits) * self.unit_ms
        if end_ms <= now_ms:
            raise BadArgument(f"layout {self.name!r} ran out of timestamp bits at Unix ms {end_ms}")
        ten_years_ms = 10 * 365 * 86_400_000
        if end_ms < now_ms + ten_years_ms:
            when = _dt.datetime.fromtimestamp(end_ms / 1000, tz=_UTC).date()
            warnings.warn(f"layout {self.name!r} runs out of timestamp bits on {when}", LayoutWarning,
                          stacklevel=3)

    # -- derived ---------------------------------------------------------------------

    @property
    def ids_per_tick(self) -> int:
        """How many IDs one worker can issue per tick."""
        return 1 << self.sequence_bits

    @property
    def max_worker(self) -> int:
        return (1 << self.worker_bits) - 1

    @property
    def max_datacenter(self) -> int:
        return (1 << self.datacenter_bits) - 1

    def _bits(self, name: str) -> int:
        return int(getattr(self, f"{name}_bits"))

    def shift(self, name: str) -> int:
        """Bit offset of a field (``timestamp``, ``datacenter``, ``worker``, ``sequence``)."""
        if name == "timestamp":
            return sum(self._bits(f) for f in _FIELDS)
        below = self.order[self.order.index(name) + 1:]
        return sum(self._bits(f) for f in below)

    def fingerprint(self) -> int:
        """A checksum of everything that gives a timestamp tick its meaning."""
        key = (self.timestamp_bits, self.datacenter_bits, self.worker_bits, self.sequence_bits,
               self.epoch_ms, self.unit_ms, self.order)
        return zlib.crc32(repr(key).encode())

    # -- composing and decoding --------------------------------------------------------

    def compose(self, tick: int, datacenter: int, worker: int, sequence: int) -> int:
        """The ID with these fields (all range-checked)."""
        tick = _check_int("tick", tick, 0, (1 << self.timestamp_bits) - 1)
        datacenter = _check_int("datacenter", datacenter, 0, self.max_datacenter)
        worker = _check_int("worker", worker, 0, self.max_worker)
        sequence = _check_int("sequence", sequence, 0, self.ids_per_tick - 1)
        return ((tick << self.shift("timestamp")) | (datacenter << self.shift("datacenter"))
                | (worker << self.shift("worker")) | (sequence << self.shift("sequence")))

    def decode(self, id: int) -> DecodedId:
        """Split an ID into its fields.

        >>> tw = Layout.preset("twitter")
        >>> d = tw.decode(1541815603606036480)   # a real tweet ID
        >>> d.datetime.isoformat(), d.sequence
        ('2022-06-28T16:07:40.105000+00:00', 0)
        """
        id = _check_int("id", id, 0, 2**63 - 1)
        def part(name: str) -> int:
            return (id >> self.shift(name)) & ((1 << self._bits(name)) - 1)
        tick = id >> self.shift("timestamp")
        return DecodedId(id, self.epoch_ms + tick * self.unit_ms, part("datacenter"),
                         part("worker"), part("sequence"))

    def decode_many(self, ids: npt.ArrayLike) -> dict[str, npt.NDArray[np.int64]]:
        """Decode many IDs at once, in one native pass: a dict of int64 numpy columns
        ``timestamp_ms``, ``datacenter``, ``worker``, ``sequence`` (the fields of
        :class:`DecodedId`), each shaped like ``ids``. Hand it to ``pandas.DataFrame``
        as it is.

        >>> tw = Layout.preset("twitter")
        >>> cols = tw.decode_many(np.array([1541815603606036480, 1541815603606036481]))
        >>> cols["timestamp_ms"].tolist(), cols["sequence"].tolist()
        ([1656432460105, 1656432460105], [0, 1])
        """
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise WrongType(f"ids must be an array of integers, not of dtype {arr.dtype}")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > 2**63 - 1:
            raise BadArgument(f"ids must be in [0, {2**63 - 1}]: {int(arr.max())} is not an ID")
        flat = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)
        cols = {name: np.empty(flat.shape[0], dtype=np.int64) for name in ("timestamp_ms", *_FIELDS)}

        def mask(name: str) -> int:
            return (1 << self._bits(name)) - 1
        bad = _snowflake.decode_columns(
            flat, self.shift("timestamp"), self.shift("datacenter"), mask("datacenter"), self.shift("worker"),
            mask("worker"), self.shift("sequence"), mask("sequence"), self.epoch_ms, self.unit_ms,
            cols["timestamp_ms"], cols["datacenter"], cols["worker"], cols["sequence"])
        if bad >= 0:
            raise BadArgument(f"ids[{bad}] = {int(flat[bad])} is not an ID of layout {self.name!r}")
        return {name: col.reshape(arr.shape) for name, col in cols.items()}

    def tick_at(self, when: _dt.datetime | float | int) -> int:
        ms = _unix_ms(when)
        if ms < self.epoch_ms:
            raise BadArgument(f"time {ms} is before the layout's epoch {self.epoch_ms}")
        tick = (ms - self.epoch_ms) // self.unit_ms
        if tick >= 1 << self.timestamp_bits:
            raise BadArgument(f"time {ms} is past the end of the layout's timestamp field")
        return tick

    def min_id_at(self, when: _dt.datetime | float | int) -> int:
        """The smallest ID any worker can issue in the tick holding ``when``
        (a datetime or Unix ms): ``WHERE id >= min_id_at(t0)`` selects by time."""
        return self.tick_at(when) << self.shift("timestamp")

    def max_id_at(self, when: _dt.datetime | float | int) -> int:
        """The largest ID any worker can issue in the tick holding ``when``."""
        return ((self.tick_at(when) + 1) << self.shift("timestamp")) - 1

    @classmethod
    def preset(cls, name: str) -> Layout:
        """One of :data:`LAYOUTS`: ``twitter`` (the default), ``sonyflake``, ``discord``,
        ``instagram``."""
        try:
            return LAYOUTS[name]
        except KeyError:
            raise BadArgument(f"unknown layout {name!r}; presets: {sorted(LAYOUTS)}") from None


LAYOUTS: dict[str, Layout] = {
    # 41-bit ms timestamp, 5-bit datacenter, 5-bit worker, 12-bit sequence, Twitter's epoch.
    "twitter": Layout(name="twitter"),
    # Sonyflake: 39 bits of 10 ms, then an 8-bit sequence ABOVE a 16-bit machine ID.
    "sonyflake": Layout(timestamp_bits=39, datacenter_bits=0, worker_bits=16, sequence_bits=8,
                        epoch_ms=1409529600000, unit_ms=10,
                        order=("sequence", "datacenter", "worker"), name="sonyflake"),
    # Discord: 5-bit worker, 5-bit process (our "datacenter"), 12-bit increment, epoch 2015.
    # Discord's timestamp field is 42 bits; we use 41 so IDs stay positive int64 (until 2084).
    "discord": Layout(epoch_ms=1420070400000, name="discord"),
    # Instagram: ms timestamp, 13-bit shard ID (our worker), 10-bit sequence. Instagram's
    # timestamp field is 41 bits of a 64-bit ID; we use 40 so the layout fits 63 bits: IDs
    # are identical to Instagram's until the 41st bit would be needed, in 2045.
    "instagram": Layout(timestamp_bits=40, datacenter_bits=0, worker_bits=13, sequence_bits=10,
                        epoch_ms=1314220021721, name="instagram"),
}


def _layout(layout: Layout | str) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str):
        return Layout.preset(layout)
    raise WrongType(f"layout must be a Layout or a preset name, not {type(layout).__name__}")


def decode_many(ids: npt.ArrayLike, layout: Layout | str = "twitter") -> dict[str, npt.NDArray[np.int64]]:
    """Decode many IDs at once into numpy columns (see :meth:`Layout.decode_many`).

    >>> gen = Snowflake(5)
    >>> decode_many(gen.next_ids(3))["worker"].tolist()
    [5, 5, 5]
    """
    return _layout(layout).decode_many(ids)


def decode(id: int, layout: Layout | str = "twitter") -> DecodedId:
    """Decode an ID under a layout (default ``twitter``).

    >>> decode(1541815603606036480).timestamp_ms
    1656432460105
    """
    return _layout(layout).decode(id)


# --- worker IDs ----------------------------------------------------------------------


class WorkerAssignment(NamedTuple):
    worker_id: int
    datacenter_id: int = 0


class WorkerIdSource(abc.ABC):
    """Where a generator gets its worker (and datacenter) ID from.

    ``acquire`` is called when the generator is created and again in a forked child
    (where the parent's ID must not be reused). A source that holds a lease calls
    ``on_lost()`` if the lease is lost; the generator then stops issuing for good.
    """

    @abc.abstractmethod
    def acquire(self, layout: Layout, on_lost: Callable[[], None]) -> WorkerAssignment:
        """Return a worker ID that no other live generator with this layout holds."""

    def release(self, assignment: WorkerAssignment) -> None:  # noqa: B027 - optional hook
        """Give the ID back (the generator is closed)."""

    @property
    def can_reacquire_after_fork(self) -> bool:
        """Whether a forked child may call ``acquire`` for a fresh ID."""
        return True


@dataclass(frozen=True)
class StaticWorkerId(WorkerIdSource):
    """A fixed ID from configuration. It cannot give a forked child a new one."""

    worker_id: int
    datacenter_id: int = 0

    def acquire(self, layout: Layout, on_lost: Callable[[], None]) -> WorkerAssignment:
        return WorkerAssignment(self.worker_id, self.datacenter_id)

    @property
    def can_reacquire_after_fork(self) -> bool:
        return False


class HostWorkerIds(WorkerIdSource):
    """Lease worker IDs among the processes of one host through lock files.

    Each acquire takes an exclusive POSIX record lock on ``directory/worker-<dc>-<id>.lock``
    for the first free ID in ``worker_ids``. The kernel drops the lock when the process
    dies, and a forked child does not inherit it, so every process (a pre-fork server's
    workers, a multiprocessing pool) gets its own ID with no coordinator.

    >>> import tempfile
    >>> src = HostWorkerIds(tempfile.mkdtemp(), worker_ids=range(4))
    >>> Snowflake(src).worker_id in range(4)
    True
    """

    # POSIX record locks exclude other processes only: IDs this process holds, by lock file.
    _held_here: dict[Path, int] = {}  # lock file -> fd
    _held_pid = os.getpid()
    # ... so threads of this process take turns: two acquires racing between the
    # `in held` check and the insert both got the same lock file (the same process may
    # lock a file twice), i.e. two generators with one worker ID.
    _mutex = threading.Lock()

    def __init__(self, directory: str | os.PathLike[str], *, worker_ids: range | None = None,
                 datacenter_id: int = 0) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.worker_ids = worker_ids
        self.datacenter_id = datacenter_id

    def _path(self, worker: int) -> Path:
        return self.directory / f"worker-{self.datacenter_id}-{worker}.lock"

    def acquire(self, layout: Layout, on_lost: Callable[[], None]) -> WorkerAssignment:
        with HostWorkerIds._mutex:
            return self._acquire(layout)

    def _acquire(self, layout: Layout) -> WorkerAssignment:
        ids = self.worker_ids if self.worker_ids is not None else range(layout.max_worker + 1)
        held = self._held_in_this_process()
        for worker in ids:
            path = self._path(worker)
            if path in held:
                continue
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            held[path] = fd
            return WorkerAssignment(worker, self.datacenter_id)
        raise WorkerIdUnavailable(f"all worker IDs in {ids} are held by live processes under {self.directory}")

    @classmethod
    def _held_in_this_process(cls) -> dict[Path, int]:
        # In a forked child the parent's locks are the parent's: forget them and close our
        # copies of their descriptors (that releases only this process's locks: none).
        if cls._held_pid != os.getpid():
            for fd in cls._held_here.values():
                os.close(fd)
            HostWorkerIds._held_here = {}
            HostWorkerIds._held_pid = os.getpid()
        return cls._held_here

    def release(self, assignment: WorkerAssignment) -> None:
        with HostWorkerIds._mutex:
            fd = self._held_in_this_process().pop(self._path(assignment.worker_id), None)
            if fd is not None:
                os.close(fd)


# --- the state file ------------------------------------------------------------------


class _StateFile:
    """Two fixed 64-byte slots, written alternately, each with a sequence number and a
    CRC: a torn write spoils at most the slot being written, never the other one."""

    _open_paths: set[Path] = set()  # POSIX record locks do not exclude the same process
    _SLOT = struct.Struct("<4sHHIqQ")  # magic, version, reserved, layout fingerprint, tick, seqno
    _SIZE = 64
    _MAGIC = b"CCSF"

    def __init__(self, path: str | os.PathLike[str], layout: Layout) -> None:
        self.path = Path(path).resolve()
        self.fingerprint = layout.fingerprint()
        self.fd = -1
        if self.path in self._open_paths:
            raise StateFileError(f"state file {self.path} is already in use by another generator")
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateFileError(f"cannot open state file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise StateFileError(f"state file {self.path} is in use by another process") from None
        self._open_paths.add(self.path)
        self.seqno, self.tick = self._read()
        self.max_tick = (1 << layout.timestamp_bits) - 1
        if not -1 <= self.tick <= self.max_tick:
            # Not a mark this layout can have written; trusting it would either disable
            # the restart protection (a tick that overflows the ID) or block for ever.
            self.close()
            raise StateFileError(f"state file {self.path} is corrupt: tick {self.tick} is out of range")

    def _read(self) -> tuple[int, int]:
        data = os.pread(self.fd, 2 * self._SIZE, 0)
        if not data:
            return 0, -1
        best: tuple[int, int] | None = None
        for off in (0, self._SIZE):
            slot = data[off:off + self._SIZE]
            if len(slot) < self._SLOT.size + 4 or not any(slot):
                continue
            body, (crc,) = slot[:self._SLOT.size], struct.unpack_from("<I", slot, self._SLOT.size)
            if zlib.crc32(body) != crc:
                continue
            magic, version, _, fingerprint, tick, seqno = self._SLOT.unpack(body)
            if magic != self._MAGIC or version != 1:
                continue
            if fingerprint != self.fingerprint:
                self.close()
                raise StateFileError(f"state file {self.path} was written for a different ID layout")
            if best is None or seqno > best[0]:
                best = (seqno, tick)
        if best is None:
            self.close()
            raise StateFileError(f"state file {self.path} is corrupt: no valid record in it")
        return best

    def write(self, tick: int) -> None:
        self.seqno += 1
        body = self._SLOT.pack(self._MAGIC, 1, 0, self.fingerprint, tick, self.seqno)
        slot = body + struct.pack("<I", zlib.crc32(body))
        try:
            os.pwrite(self.fd, slot.ljust(self._SIZE, b"\0"), (self.seqno % 2) * self._SIZE)
            os.fdatasync(self.fd)
        except OSError as exc:
            raise StateFileError(f"cannot write state file {self.path}: {exc.strerror}") from exc
        self.tick = tick

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._open_paths.discard(self.path)


# --- the generator -------------------------------------------------------------------


class Snowflake(_snowflake.Generator):
    """A Snowflake ID generator: configure once, call :meth:`next_id` or :meth:`next_ids`.

    ``worker_id`` is an int, a :class:`WorkerIdSource`, or ``None`` to read
    ``COORDCORE_WORKER_ID`` (and ``COORDCORE_DATACENTER_ID``) from the environment.
    ``clock`` is the policy for a clock that goes backwards (see the module docs);
    ``state_file`` enables restart safety. ``clock_source`` takes a :class:`SkewClock`
    for tests.

    >>> gen = Snowflake(1, layout="sonyflake", clock="logical")
    >>> gen.decode(gen.next_id()).worker
    1
    >>> Snowflake(32)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: worker_id must be in [0, 31], got 32
    """

    __slots__ = ("_layout", "_assignment", "_source", "_state", "_reserve_ticks", "_lock",
                 "_lease_lost", "_closed", "__weakref__")

    def __init__(
        self,
        worker_id: int | WorkerIdSource | None = None,
        *,
        datacenter_id: int | None = None,
        layout: Layout | str = "twitter",
        clock: ClockPolicy = "wait",
        max_backward_ms: float = 1000.0,
        max_ahead_ms: float | None = None,
        state_file: str | os.PathLike[str] | None = None,
        reserve_ms: float = 1000.0,
        clock_source: SkewClock | None = None,
    ) -> None:
        self._layout = lay = _layout(layout)
        if clock not in ("wait", "raise", "logical"):
            raise BadArgument(f"clock must be 'wait', 'raise' or 'logical', not {clock!r}")
        max_backward_ms = _check_ms("max_backward_ms", max_backward_ms, 0, 3.6e6, "a number of ms in [0, 3600000]")
        reserve_ms = _check_ms("reserve_ms", reserve_ms, 0, 3.6e6, "a number of ms in [0, 3600000]")
        if max_ahead_ms is not None:
            max_ahead_ms = _check_ms("max_ahead_ms", max_ahead_ms, 0, math.inf, "None or a number of ms >= 0")
        if clock_source is not None and not isinstance(clock_source, SkewClock):
            raise WrongType("clock_source must be a SkewClock")
        self._lock = threading.Lock()
        _LIVE_GENERATORS.add(self)
        self._lease_lost = False
        self._closed = False
        self._source = self._resolve_source(worker_id, datacenter_id)
        self._assignment = self._acquire_assignment()
        self._configure(
            epoch_ms=lay.epoch_ms, unit_ms=lay.unit_ms, timestamp_bits=lay.timestamp_bits,
            sequence_bits=lay.sequence_bits, timestamp_shift=lay.shift("timestamp"),
            sequence_shift=lay.shift("sequence"), node_bits=self._node_bits(self._assignment),
            clock=clock, max_backward_ms=float(max_backward_ms), max_ahead_ms=max_ahead_ms,
            clock_source=clock_source,
        )
        self._reserve_ticks = max(1, int(reserve_ms) // lay.unit_ms)
        self._state: _StateFile | None = None
        if state_file is not None:
            self._state = _StateFile(state_file, lay)
            if self._state.tick >= 0:
                self._resume_after_tick(self._state.tick)
            self._set_hwm_tick(self._state.tick)

    # -- configuration ------------------------------------------------------------------

    def _resolve_source(self, worker_id: int | WorkerIdSource | None,
                        datacenter_id: int | None) -> WorkerIdSource:
        if isinstance(worker_id, WorkerIdSource):
            if datacenter_id is not None:
                raise BadArgument("give datacenter_id to the WorkerIdSource, not the generator")
            return worker_id
        env = os.environ
        if worker_id is None:
            raw = env.get("COORDCORE_WORKER_ID")
            if raw is None:
                raise WorkerIdUnavailable("no worker_id given and COORDCORE_WORKER_ID is not set")
            try:
                worker_id = int(raw)
            except ValueError:
                raise BadArgument(f"COORDCORE_WORKER_ID={raw!r} is not an integer") from None
            if datacenter_id is None and "COORDCORE_DATACENTER_ID" in env:
                try:
                    datacenter_id = int(env["COORDCORE_DATACENTER_ID"])
                except ValueError:
                    raise BadArgument(
                        f"COORDCORE_DATACENTER_ID={env['COORDCORE_DATACENTER_ID']!r} is not an integer") from None
        number = _as_int(worker_id)
        if number is None:
            raise WrongType(f"worker_id must be an int or a WorkerIdSource, not {type(worker_id).__name__}")
        if datacenter_id is not None:
            datacenter_id = _check_int("datacenter_id", datacenter_id, 0, 2**62)
        return StaticWorkerId(number, datacenter_id or 0)

    def _acquire_assignment(self) -> WorkerAssignment:
        a = self._source.acquire(self._layout, self._on_lease_lost)
        return WorkerAssignment(_check_int("worker_id", a.worker_id, 0, self._layout.max_worker),
                                _check_int("datacenter_id", a.datacenter_id, 0, self._layout.max_datacenter))

    def _node_bits(self, a: WorkerAssignment) -> int:
        lay = self._layout
        return (a.worker_id << lay.shift("worker")) | (a.datacenter_id << lay.shift("datacenter"))

    # -- public -------------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def worker_id(self) -> int:
        return self._assignment.worker_id

    @property
    def datacenter_id(self) -> int:
        return self._assignment.datacenter_id

    def next_ids(self, n: int | None = None, out: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.int64]:
        """``n`` new IDs in a numpy int64 array, strictly increasing; with ``out``, fill the
        first ``n`` (default: all) entries of that array and return that view."""
        if out is None:
            if n is None:
                raise BadArgument("next_ids needs n or out")
            n = _check_int("n", n, 0, 2**40)
            out = np.empty(n, dtype=np.int64)
            self._fill(out)
            return out
        if not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.ndim != 1:
            raise WrongType("out must be a 1-D numpy array of int64")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise BadArgument("out must be C-contiguous and writeable")
        if n is None:
            n = len(out)
        n = _check_int("n", n, 0, len(out))
        view = out[:n]
        self._fill(view)
        return view

    def next_run(self, max_count: int) -> tuple[int, int]:
        """Up to ``max_count`` consecutive integer IDs from one tick, as ``(first, count)``:
        a fresh tick gives a whole tick's worth (4096 under ``twitter``). Needs the
        sequence in the lowest bits (every preset but ``sonyflake``)."""
        max_count = _check_int("max_count", max_count, 1, 2**62)
        if self._layout.shift("sequence") != 0:
            raise BadArgument(f"next_run needs the sequence in the lowest bits; layout {self._layout.name!r} "
                              "does not have it")
        return super().next_run(max_count)

    def decode(self, id: int) -> DecodedId:
        """Decode an ID under this generator's layout."""
        return self._layout.decode(id)

    def decode_many(self, ids: npt.ArrayLike) -> dict[str, npt.NDArray[np.int64]]:
        """Decode many IDs at once into numpy columns (see :meth:`Layout.decode_many`)."""
        return self._layout.decode_many(ids)

    def min_id_at(self, when: _dt.datetime | float | int) -> int:
        """See :meth:`Layout.min_id_at`."""
        return self._layout.min_id_at(when)

    def max_id_at(self, when: _dt.datetime | float | int) -> int:
        """See :meth:`Layout.max_id_at`."""
        return self._layout.max_id_at(when)

    def close(self) -> None:
        """Stop issuing; record the true last tick in the state file; release the worker ID.

        In a forked child that has not taken a worker ID of its own, the state file and
        the worker ID are the parent's: the child only lets go of its copies. (Writing
        the parent's last tick there would lower the high-water mark the parent reserved
        ahead, and releasing would give up the parent's lease.)"""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            parents = self._forked
            last = self._seal()
            if self._state is not None:
                if last >= 0 and self._state.fd >= 0 and not parents:
                    self._state.write(last)
                self._state.close()
            if not parents:
                self._source.release(self._assignment)

    def __enter__(self) -> Snowflake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.next_id()

    def __repr__(self) -> str:
        return (f"Snowflake(worker_id={self.worker_id}, datacenter_id={self.datacenter_id}, "
                f"layout={self._layout.name!r})")

    # -- rare paths, called by the native core --------------------------------------------

    def _on_backwards(self, drift_ms: float) -> None:
        raise ClockMovedBackwards(
            f"clock is {drift_ms:.3f} ms behind the last issued ID's timestamp", drift_ms)

    def _reserve(self, tick: int) -> None:
        assert self._state is not None
        with self._lock:
            if self._closed:
                raise Unavailable("the generator is closed")
            if tick <= self._state.tick:
                return  # another thread reserved it meanwhile
            self._state.write(min(max(tick, self._now_tick()) + self._reserve_ticks, self._state.max_tick))
            self._set_hwm_tick(self._state.tick)

    def _on_fork(self) -> None:
        # The lock is fresh in a child (_reset_locks_after_fork), so threads of the child
        # meet here one at a time; the first one takes the new worker ID.
        with self._lock:
            if not self._forked:
                return  # another thread of this child did it meanwhile
            if self._state is not None or not self._source.can_reacquire_after_fork:
                why = ("it keeps a state file, which belongs to the parent"
                       if self._state is not None else "its worker ID is static")
                raise ForkedGenerator(
                    f"this generator was created in process {os.getppid()} and cannot issue IDs "
                    f"in a forked child: {why}. Create a new Snowflake with its own worker ID in "
                    "the child, or use a WorkerIdSource such as HostWorkerIds.")
            self._assignment = self._acquire_assignment()
            self._set_node_bits(self._node_bits(self._assignment))

    def _on_revoked(self) -> None:
        if self._lease_lost:
            raise WorkerLeaseLost(f"the lease on worker ID {self.worker_id} was lost: issuance stopped")
        raise Unavailable("the generator is closed")

    def _on_exhausted(self) -> None:
        raise Unavailable(f"layout {self._layout.name!r} has run out of timestamp bits")

    def _on_lease_lost(self) -> None:
        self._lease_lost = True
        self._seal()


# A child forked while another thread held a generator's lock (reserving in the state
# file, taking a worker ID) would inherit it held, and deadlock in close() or _on_fork().
# The generators' state needs no repair: its only shared word is swapped atomically.
_LIVE_GENERATORS: weakref.WeakSet[Snowflake] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    for gen in list(_LIVE_GENERATORS):
        gen._lock = threading.Lock()
    HostWorkerIds._mutex = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)

