# The lock machine's binary formats, declared once for every native module that reads or
# writes them (lockmachine applies and decodes, lockwire encodes the hot commands). The
# contract (what each field means) is documented in coordcore/locks/machine.py, whose
# constants come from lockmachine, which takes them from here.
#
# Batch record, little-endian:
#   header   HDR_SIZE bytes: magic BATCH_MAGIC, u8 version (BATCH_VERSION), u8 flags (0),
#            u16 reserved (0), u64 time_ms, u32 command count
#   command  CMD_SIZE bytes + key + value: u8 op, u8 flags (F_*), u16 key length,
#            u32 value length, u64 session, u64 request id, u64 arg, key, value
# Result     RES_SIZE bytes: u8 op, u8 status, u8 detail, u8 flags (bit 0: duplicate),
#            u32 0, u64 value, u64 aux
# Event      EV_SIZE bytes + key + value: u8 kind, u8 mode, u16 key length, u32 value
#            length, u64 revision, u64 session, u64 ticket, u64 token, key, value

cdef enum:
    BATCH_VERSION = 3      # 3: a session's second exclusive claim on a lock is HELD
    BATCH_VERSION_POOLS = 4  # 4: the pool ops; a record without them is still written as 3
    BATCH_VERSION_POOL_DETACH = 5  # 5: DETACH may detach pool waiters too (F_DETACH_POOLS)
    HDR_SIZE = 20
    CMD_SIZE = 32
    RES_SIZE = 24
    EV_SIZE = 40
    C_MAX_KEY = 1024
    C_MAX_VALUE = 4096
    C_MAX_PERMITS = 1000000
    C_MAX_BATCH = 1048576  # 1 << 20 (a literal: Cython 3.3 crashes on shifts in enums under overflowcheck)
    C_WINDOW = 128         # request ids remembered per session
    CRED = 32              # a session credential's digest (SHA-256)

cdef extern from *:
    """
    #define CC_BATCH_MAGIC "CCLB"
    """
    # The 4 bytes that start a batch record (C_MAGIC: compare and copy 4, not a C string).
    const char *C_MAGIC "CC_BATCH_MAGIC"

cdef enum:  # ops
    OP_OPEN = 1
    OP_KEEPALIVE = 2
    OP_CLOSE = 3
    OP_ACQUIRE = 4
    OP_RELEASE = 5
    OP_SEM_ACQUIRE = 6
    OP_SEM_RELEASE = 7
    OP_CAMPAIGN = 8
    OP_PROCLAIM = 9
    OP_RESIGN = 10
    OP_CANCEL = 11
    OP_DETACH = 12  # format version 2
    OP_POOL_SET = 13      # format version 4: quota pools
    OP_TENANT_SET = 14
    OP_CAP_ACQUIRE = 15
    OP_CAP_RELEASE = 16
    OP_CAP_RESIZE = 17

cdef enum:  # command flags
    F_SHARED = 1
    F_WAIT = 2
    F_DETACH_POOLS = 2  # on DETACH (format version 5): pool waiters too

cdef enum:  # statuses
    ST_OK = 0
    ST_WAITING = 1
    ST_BUSY = 2
    ST_NOSESSION = 10
    ST_NOTHOLDER = 11
    ST_CONFLICT = 12
    ST_NOTLEADER = 13
    ST_BADARG = 14
    ST_WRONGTYPE = 15
    ST_NOTFOUND = 16
    ST_HELD = 17           # format version 3

cdef enum:  # details
    D_NONE = 0
    D_FLAGS = 1
    D_KEY = 2
    D_VALUE = 3
    D_TTL = 4
    D_PERMITS = 5
    D_PERMITS_MISMATCH = 6
    D_SESSION = 7
    D_ARG = 8
    D_NO_SUCH_SESSION = 9
    D_NO_SUCH_HOLD = 10
    D_NOT_LEADER = 11
    D_NO_SUCH_CONTENDER = 12
    D_ALREADY_CANDIDATE = 13
    D_KIND = 14
    D_TIMEOUT = 15
    D_WAIT_ENDED = 16
    D_HELD = 17            # format version 3
    D_UPGRADE = 18
    D_NO_SUCH_POOL = 19    # format version 4
    D_NO_SUCH_TENANT = 20
    D_OVER = 21
    D_MINIMUMS = 22

cdef enum:  # key kinds
    K_LOCK = 1
    K_SEM = 2
    K_ELECTION = 3

cdef enum:  # contender modes
    M_NONE = 0
    M_EXCLUSIVE = 1
    M_SHARED = 2
    M_SEM = 3
    M_ELECTION = 4
    M_POOL = 5

cdef enum:  # event kinds
    E_OPEN = 1
    E_CLOSE = 2
    E_EXPIRE = 3
    E_WAIT = 4
    E_GRANT = 5
    E_RELEASE = 6
    E_CANCEL = 7
    E_PROCLAIM = 8
    E_GIVEBACK = 9   # a pool lease is asked to give its units back (deadline: batch time + grace)
    E_REVOKE = 10    # a pool lease not given back by its deadline

