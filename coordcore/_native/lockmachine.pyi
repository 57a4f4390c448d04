"""Type stub of the compiled lock state machine (see coordcore.locks.machine for the contract)."""

from enum import IntEnum
from typing import Any, TypeVar, final

BATCH_FORMAT_VERSION: int
POOL_BATCH_FORMAT_VERSION: int
POOL_DETACH_BATCH_FORMAT_VERSION: int
BATCH_MAGIC: bytes
SNAPSHOT_VERSION: int
CREDENTIAL_DIGEST_SIZE: int
BATCH_HEADER_SIZE: int
COMMAND_HEADER_SIZE: int
RESULT_SIZE: int
EVENT_HEADER_SIZE: int
MAX_KEY_SIZE: int
MAX_VALUE_SIZE: int
MIN_TTL_MS: int
MAX_TTL_MS: int
MAX_TIMEOUT_MS: int
MAX_PERMITS: int
MAX_TIME_MS: int
MAX_BATCH_COMMANDS: int
REQUEST_WINDOW: int
FLAG_SHARED: int
FLAG_WAIT: int

class Op(IntEnum):
    OPEN = 1
    KEEPALIVE = 2
    CLOSE = 3
    ACQUIRE = 4
    RELEASE = 5
    SEM_ACQUIRE = 6
    SEM_RELEASE = 7
    CAMPAIGN = 8
    PROCLAIM = 9
    RESIGN = 10
    CANCEL = 11
    DETACH = 12
    POOL_SET = 13
    TENANT_SET = 14
    CAP_ACQUIRE = 15
    CAP_RELEASE = 16
    CAP_RESIZE = 17

class Status(IntEnum):
    OK = 0
    WAITING = 1
    BUSY = 2
    NOSESSION = 10
    NOTHOLDER = 11
    CONFLICT = 12
    NOTLEADER = 13
    BADARG = 14
    WRONGTYPE = 15
    NOTFOUND = 16
    HELD = 17

class Detail(IntEnum):
    NONE = 0
    FLAGS = 1
    KEY = 2
    VALUE = 3
    TTL = 4
    PERMITS = 5
    PERMITS_MISMATCH = 6
    SESSION = 7
    ARG = 8
    NO_SUCH_SESSION = 9
    NO_SUCH_HOLD = 10
    NOT_LEADER = 11
    NO_SUCH_CONTENDER = 12
    ALREADY_CANDIDATE = 13
    KIND = 14
    TIMEOUT = 15
    WAIT_ENDED = 16
    HELD = 17
    UPGRADE = 18
    NO_SUCH_POOL = 19
    NO_SUCH_TENANT = 20
    OVER = 21
    MINIMUMS = 22

class Kind(IntEnum):
    LOCK = 1
    SEMAPHORE = 2
    ELECTION = 3

class Mode(IntEnum):
    NONE = 0
    EXCLUSIVE = 1
    SHARED = 2
    SEMAPHORE = 3
    ELECTION = 4
    POOL = 5

class EventKind(IntEnum):
    OPEN = 1
    CLOSE = 2
    EXPIRE = 3
    WAIT = 4
    GRANT = 5
    RELEASE = 6
    CANCEL = 7
    PROCLAIM = 8
    GIVEBACK = 9
    REVOKE = 10

_T = TypeVar("_T", bound=tuple[Any, ...])

_Contender = tuple[int, int, int, int, bytes]

@final
class LockMachine:
    def apply(self, batch: bytes) -> tuple[bytes, bytes]: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...
    @property
    def revision(self) -> int: ...
    def raise_revision(self, floor: int) -> int: ...
    @property
    def time_ms(self) -> int: ...
    @property
    def next_session_id(self) -> int: ...
    @property
    def session_count(self) -> int: ...
    @property
    def key_count(self) -> int: ...
    def next_deadline(self) -> int | None: ...
    @property
    def waiter_count(self) -> int: ...
    def session_ids(self) -> list[int]: ...
    def credential_matches(self, session_id: int, digest: bytes) -> bool: ...
    def session(self, session_id: int, after: int = 0, limit: int = 0xFFFFFFFF) -> \
        tuple[int, int, int, list[tuple[bytes, _Contender]], int] | None: ...
    def key_info(self, key: bytes, limit: int = 0xFFFFFFFF) -> \
        tuple[int, int, list[_Contender], list[_Contender], int, int] | None: ...
    def oldest_wait_ms(self, key: bytes, now_ms: int | None = None) -> int | None: ...
    def scan_keys(self, prefix: bytes, cursor: int, count: int) -> tuple[int, list[bytes]]: ...
    def contender_count(self, session_id: int) -> int: ...
    def keys(self, prefix: bytes) -> list[bytes]: ...
    def pool_info(self, name: bytes) -> tuple[int, int, int, list[tuple[bytes, int, int, int, int, int]],
                                              list[tuple[int, bytes, int, int, int, int]],
                                              list[tuple[int, bytes, int, int, int, int]]] | None: ...
    def pool_names(self) -> list[bytes]: ...
    def pool_summary(self, name: bytes) -> tuple[int, int, int, list[tuple[bytes, int, int, int, int, int, int, int]]] | None: ...
    def pool_totals(self) -> tuple[int, int, int, int, int, int]: ...
    def timings(self) -> tuple[list[int], dict[str, tuple[list[int], int]], dict[str, tuple[list[int], int]]]: ...
    def clear_timings(self) -> None: ...
    def check_invariants(self) -> None: ...

def crc32c(data: bytes, value: int = 0) -> int: ...
def _crc32c_portable(data: bytes, value: int = 0) -> int: ...
def decode_results(raw: bytes, cls: type[_T]) -> list[_T]: ...
def decode_events(raw: bytes, cls: type[_T]) -> list[_T]: ...
def assemble(time_ms: int, parts: list[bytes], count: int) -> bytes: ...
def filter_events(raw: bytes, cls: type[_T], parked: dict[int, Any]) -> list[_T]: ...
def live_blocks() -> int: ...
