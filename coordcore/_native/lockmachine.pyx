# cython: language_level=3, autotestdict=False, auto_pickle=False
"""The deterministic lock state machine (skeleton: the API is published, apply comes next)."""

BATCH_FORMAT_VERSION = 1
SNAPSHOT_VERSION = 1
MAX_KEY_SIZE = 1024
MAX_VALUE_SIZE = 4096
MIN_TTL_MS = 1
MAX_TTL_MS = 30 * 86_400_000
MAX_PERMITS = 1_000_000
MAX_TIME_MS = 2**62
MAX_BATCH_COMMANDS = 1 << 20
REQUEST_WINDOW = 128


cdef class LockMachine:
    def __init__(self):
        pass

    def apply(self, batch):
        raise NotImplementedError("LockMachine.apply is being implemented")

    def snapshot(self):
        raise NotImplementedError

    def restore(self, data):
        raise NotImplementedError

    @property
    def revision(self):
        return 0

    @property
    def time_ms(self):
        return 0

    @property
    def next_session_id(self):
        return 1

    @property
    def session_count(self):
        return 0

    @property
    def key_count(self):
        return 0

    def next_deadline(self):
        return None

    def session(self, session_id):
        return None

    def key_info(self, key):
        return None

    def keys(self, prefix):
        return []

    def check_invariants(self):
        pass


def crc32c(data, value=0):
    raise NotImplementedError
