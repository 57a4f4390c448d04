# The machine's C data structures (their meaning is in lockmachine.pyx's docstring) and
# its internal bounds. The formats it reads and writes are declared in lockformat.pxd.
# Included by lockmachine.pyx.

cdef enum:
    NIL = 0xFFFFFFFF
    REQ_REC = 32
    SNAP_CON = 32
    SNAP_CON2 = 40  # version 2 adds the wait deadline

cdef uint64_t C_MIN_TTL = 1
cdef uint64_t C_MAX_TTL = 30 * 86_400_000ULL
cdef uint64_t C_MAX_TIME = 1ULL << 62
# Largest revision and session counter a snapshot may carry: far from 2**64, so the
# counters can never wrap (a wrapped counter would reuse tokens and hand out session 0,
# the hash maps' empty marker).
cdef uint64_t C_MAX_COUNTER = 1ULL << 62


# Wait and hold time histograms (lm_timings.pxi): fixed power-of-two buckets in ms.
cdef enum:
    HIST_BOUNDS = 24  # finite upper bounds 1, 2, 4, ... 2**23 ms (2.3 h); one more count: above
    HIST_KINDS = 5    # by contender mode - 1: exclusive, shared, semaphore, election, pool
cdef uint64_t C_NO_TIME = 0xFFFFFFFFFFFFFFFFULL  # not known (a contender restored from a snapshot)


# --- data structures -----------------------------------------------------------------

ctypedef struct Contender:
    uint64_t session      # session id
    uint64_t ticket       # revision at arrival
    uint64_t token        # revision at grant; 0 while waiting
    uint32_t key          # key slot
    uint32_t sess         # session slot
    uint32_t kprev, knext  # key's holders or waiters list (knext doubles as free link)
    uint32_t sprev, snext  # session's list, ticket order
    uint32_t vlen
    uint8_t mode
    uint8_t used
    uint8_t detached      # a waiter at a restart: withdrawn at wait_deadline unless its client re-attaches
    uint64_t wait_deadline  # withdrawn at the first batch at or after it (0: never)
    unsigned char *value
    # For the wait and hold histograms only: the batch time (ms) of its arrival while it
    # waits, of its grant once granted. Not state (never in a snapshot, nor compared);
    # C_NO_TIME when restored from one.
    uint64_t since

ctypedef struct KeySlot:
    unsigned char *key
    uint64_t hash
    uint32_t klen
    uint32_t permits
    uint32_t h_head, h_tail, h_count
    uint32_t w_head, w_tail, w_count
    uint32_t next_free
    uint8_t kind
    uint8_t used
    uint8_t pending       # in the affected list of a session teardown

ctypedef struct ReqEntry:
    uint64_t req
    uint64_t value
    uint64_t aux
    uint8_t op
    uint8_t status
    uint8_t detail

ctypedef struct Session:
    uint64_t id
    uint64_t ttl
    uint64_t deadline
    uint64_t req_max      # upper bound of the request ids in the table (fast miss)
    ReqEntry *reqs        # ring buffer; wraps only once it holds C_WINDOW entries
    uint32_t req_cap, req_len, req_start
    uint32_t c_head, c_tail, c_count
    uint32_t next_free
    uint8_t used
    uint8_t dying         # collected by the current expiry pass
    unsigned char cred[CRED]  # digest of the opener's credential (all zero: none, a version 1 session)

ctypedef struct U64Map:   # u64 (non-zero) -> u32
    uint64_t *keys
    uint32_t *vals
    uint32_t cap, used

ctypedef struct KeyTab:   # key bytes -> key slot
    uint32_t *slots
    uint32_t cap, used

ctypedef struct HeapEntry:
    uint64_t deadline
    uint64_t id

ctypedef struct Buf:
    unsigned char *data
    size_t len, cap

ctypedef struct TicketRef:
    uint64_t ticket
    uint32_t con

ctypedef struct State:
    uint64_t time
    uint64_t revision
    uint64_t next_session
    Contender *con
    uint32_t con_cap, con_free, con_used
    KeySlot *keys
    uint32_t key_cap, key_free, key_used
    Session *ses
    uint32_t ses_cap, ses_free, ses_used
    U64Map ses_map
    U64Map rev_map
    KeyTab ktab
    HeapEntry *heap       # (deadline, session id)
    uint32_t heap_len, heap_cap
    HeapEntry *wheap      # (wait deadline, ticket)
    uint32_t wheap_len, wheap_cap

ctypedef struct Histogram:
    uint64_t counts[HIST_BOUNDS + 1]  # per bucket, not cumulative; the last: above every bound
    uint64_t sum_ms                   # saturates at 2**64 - 1 (never wraps)

cdef uint64_t HASH_SEED = <uint64_t>int.from_bytes(os.urandom(8), "little")
