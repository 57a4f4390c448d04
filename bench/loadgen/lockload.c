/*
 * lockload: a light load generator for lock acquire+release cycles, so that the
 * server is what `./dev bench server` measures, not the client.
 *
 * One thread, one epoll set, N non-blocking TCP connections to 127.0.0.1:PORT
 * (TCP_NODELAY). Each connection runs the command sequence of one client:
 *
 *   --protocol coordcore    SESSION.OPEN 30 -> session credential; LOCK.ACQUIRE key session
 *                           (blocking, the reply is the fencing token); when the token
 *                           comes, LOCK.RELEASE key session TOKEN t and the next
 *                           LOCK.ACQUIRE go out in one write. At the end: LOCK.RELEASE,
 *                           then SESSION.CLOSE.
 *   --user U --password P   first AUTH U P on each connection (an ACL user, or
 *                           "default" for --requirepass), pipelined before the rest.
 *   --protocol redis-lock   what redis-py's Lock sends: SCRIPT LOAD <release script>
 *                           once; per cycle SET key token NX PX 10000, retried every
 *                           100 ms while the key is held (redis-py's default sleep), then
 *                           EVALSHA sha 1 key token, waiting for its reply.
 *
 * Keys are "bench/<k>", k uniform in [0, keys) from a per-client seeded PRNG.
 * A cycle counts when its acquire is granted; its latency is from the first acquire
 * request of the cycle to the grant. Cycles granted in [warm-up end, warm-up end +
 * seconds) are measured; every cycle counts in all_cycles (the caller divides the
 * server's CPU by it). After the measured window each connection finishes its cycle
 * (releases, closes its session) and closes; a drain deadline bounds that.
 *
 * Output: one JSON object on stdout (figures, and the measured latencies' quantiles at
 * 0.001 .. 0.999 for the CDF plots). Any error reply, unexpected reply, dropped
 * connection, a grant of a key another client still holds, or a fencing token that
 * does not rise per key is printed to stderr and the exit status is 1 (2 for usage).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RBUF 4096           /* per-connection read buffer: replies here are tiny */
#define WBUF 1024           /* per-connection write buffer: at most two commands pending */
#define EXPQ 8              /* replies a connection may await at once */
#define MAX_EVENTS 256
#define MAX_CLIENTS 10000
#define MAX_KEYS (1u << 24)
#define RETRY_NS 100000000LL /* redis-py Lock's default sleep between SET NX attempts */
#define LOCK_TTL_MS "10000"  /* the PX of the SET: redis-py Lock(timeout=10) */
#define SESSION_TTL "30"
#define CONNECT_TIMEOUT_S 10

/* redis-py's Lock.LUA_RELEASE_SCRIPT (redis/lock.py): compare-and-delete. */
static const char LUA_RELEASE[] =
    "\n"
    "local token = redis.call('get', KEYS[1])\n"
    "if not token or token ~= ARGV[1] then\n"
    "    return 0\n"
    "end\n"
    "redis.call('del', KEYS[1])\n"
    "return 1\n";

enum protocol { P_COORDCORE, P_REDIS };

/* What a connection awaits, in order. */
enum expect {
    X_SESSION,      /* $session credential ("<id>.<secret>") */
    X_TOKEN,        /* :fencing token */
    X_RELEASED,     /* +OK of a release pipelined with the next acquire */
    X_LAST_RELEASE, /* +OK of the last release: then SESSION.CLOSE */
    X_CLOSED,       /* +OK of SESSION.CLOSE: then close */
    X_SHA,          /* $40 sha of the loaded script */
    X_SET,          /* +OK or null */
    X_EVAL,         /* :1 */
    X_AUTH,         /* +OK of AUTH */
};

static const char *const EXPECT_NAME[] = {
    "SESSION.OPEN", "LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.RELEASE", "SESSION.CLOSE",
    "SCRIPT LOAD", "SET NX PX", "EVALSHA", "AUTH",
};

struct reply {
    char type;          /* '+', '-', ':', '$', '*', or 0 for a null */
    int64_t num;        /* ':' value; '$' / '*' length */
    const char *str;    /* '+', '-', '$' payload (not NUL-terminated) */
    size_t len;
};

struct conn {
    int fd;
    unsigned idx;
    uint64_t rng;
    size_t rpos, rlen, wpos, wlen;
    unsigned eq_head, eq_len;
    unsigned char eq[EXPQ];
    int want_out;       /* EPOLLOUT is armed (a write was partial) */
    int64_t t_sent;     /* start of the current acquire (ns) */
    int64_t retry_at;
    uint32_t key;       /* current key index */
    int64_t token;      /* coordcore: fencing token held */
    uint64_t cycle;     /* redis-lock: cycles started, for unique tokens */
    char sid[64];       /* coordcore session credential, "<id>.<secret hex>" */
    size_t sid_len;
    char rtok[64];      /* redis-lock: token of the current cycle */
    size_t rtok_len;
    char rbuf[RBUF];
    char wbuf[WBUF];
};

/* Per key: who holds it (client index + 1, 0: nobody) and the last fencing token. */
struct keystate {
    uint32_t holder;
    int64_t last_token;
};

static struct {
    enum protocol proto;
    int port;
    unsigned clients;
    uint32_t keys;
    double seconds, warmup, drain;
    uint64_t seed;
    int ep;
    struct conn *conns;
    struct keystate *keyst;
    unsigned active;
    int errors;
    int64_t t_meas0, t_meas1, deadline;
    uint64_t cycles, all_cycles;
    uint64_t *lat;          /* measured acquire latencies, ns */
    size_t nlat, caplat;
    unsigned *retryq;       /* FIFO of connections waiting to retry: deadlines rise */
    unsigned rq_head, rq_len;
    char sha[41];
    const char *user, *password;  /* AUTH first when set */
} g;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("lockload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* A failure of one connection: reported, counted, and the run stops. */
static void fail(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lockload: client %u: ", c->idx);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    g.errors++;
}

/* --- PRNG: splitmix64, unbiased bounded draws by rejection ------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    if (n <= 1)
        return 0;
    uint64_t threshold = (0 - (uint64_t)n) % n; /* 2^64 mod n */
    for (;;) {
        uint64_t r = rng_next(s);
        if (r >= threshold)
            return (uint32_t)(r % n);
    }
}

/* --- RESP replies ------------------------------------------------------------------ */

/* A strict decimal integer: optional '-', 1..19 digits, no overflow. */
static int parse_i64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0;
    if (n > 0 && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || n - i > 19)
        return -1;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/*
 * Parses one reply from buf[0..len). Returns the bytes it spans, 0 if the buffer holds
 * only part of it, -1 on a malformed frame (*err says why). Arrays other than the null
 * array are returned as type '*' with their length only: no command here answers one.
 */
static long resp_parse(const char *buf, size_t len, struct reply *r, const char **err)
{
    if (len < 3)
        return 0;
    const char *nl = memchr(buf, '\n', len);
    if (nl == NULL)
        return 0;
    size_t line_end = (size_t)(nl - buf) + 1; /* just past '\n' */
    if (line_end < 3 || nl[-1] != '\r') {
        *err = "line not terminated by CRLF";
        return -1;
    }
    const char *body = buf + 1;
    size_t blen = line_end - 3; /* type byte and CRLF excluded */
    memset(r, 0, sizeof *r);
    switch (buf[0]) {
    case '+':
    case '-':
        r->type = buf[0];
        r->str = body;
        r->len = blen;
        return (long)line_end;
    case ':':
        if (parse_i64(body, blen, &r->num) != 0) {
            *err = "bad integer reply";
            return -1;
        }
        r->type = ':';
        return (long)line_end;
    case '_':
        if (blen != 0) {
            *err = "bad RESP3 null";
            return -1;
        }
        return (long)line_end; /* type 0: null */
    case '*':
    case '$': {
        int64_t n;
        if (parse_i64(body, blen, &n) != 0 || n < -1) {
            *err = "bad length";
            return -1;
        }
        if (n == -1)
            return (long)line_end; /* null bulk string / null array */
        r->type = buf[0];
        r->num = n;
        if (buf[0] == '*')
            return (long)line_end;
        if (line_end + 2 > RBUF || (uint64_t)n > RBUF - line_end - 2) {
            *err = "bulk string larger than the read buffer";
            return -1;
        }
        size_t total = line_end + (size_t)n + 2;
        if (len < total)
            return 0;
        if (buf[total - 2] != '\r' || buf[total - 1] != '\n') {
            *err = "bulk string not terminated by CRLF";
            return -1;
        }
        r->str = buf + line_end;
        r->len = (size_t)n;
        return (long)total;
    }
    default:
        *err = "unknown reply type byte";
        return -1;
    }
}

/* For messages: a printable, bounded rendering of a reply. */
static const char *show(const struct reply *r)
{
    static char out[160];
    switch (r->type) {
    case 0:
        return "(null)";
    case ':':
        snprintf(out, sizeof out, ":%" PRId64, r->num);
        return out;
    case '*':
        snprintf(out, sizeof out, "an array of %" PRId64, r->num);
        return out;
    default: {
        int n = r->len > 120 ? 120 : (int)r->len;
        snprintf(out, sizeof out, "%c%.*s%s", r->type, n, r->str, r->len > 120 ? "..." : "");
        for (char *p = out; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                *p = '?';
        return out;
    }
    }
}

static int is_ok(const struct reply *r)
{
    return r->type == '+' && r->len == 2 && memcmp(r->str, "OK", 2) == 0;
}

/* --- commands ---------------------------------------------------------------------- */

static size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Appends one command (a RESP array of bulk strings) to the connection's write buffer. */
static void put_cmd(struct conn *c, int argc, const char *const *argv, const size_t *lens)
{
    size_t need = 1 + 20 + 2;
    for (int i = 0; i < argc; i++)
        need += 1 + 20 + 2 + lens[i] + 2;
    if (c->wlen + need > WBUF && c->wpos > 0) {
        memmove(c->wbuf, c->wbuf + c->wpos, c->wlen - c->wpos);
        c->wlen -= c->wpos;
        c->wpos = 0;
    }
    if (c->wlen + need > WBUF)
        die("client %u: command does not fit the %d-byte write buffer", c->idx, WBUF);
    char *p = c->wbuf + c->wlen;
    *p++ = '*';
    p += fmt_u64(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p += fmt_u64(p, lens[i]);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    c->wlen = (size_t)(p - c->wbuf);
}

static void expect(struct conn *c, enum expect x)
{
    if (c->eq_len == EXPQ)
        die("client %u: too many replies awaited", c->idx);
    c->eq[(c->eq_head + c->eq_len) % EXPQ] = (unsigned char)x;
    c->eq_len++;
}

static size_t key_name(char *out, uint32_t k)
{
    memcpy(out, "bench/", 6);
    return 6 + fmt_u64(out + 6, k);
}

#define CMD(c, ...)                                                                      \
    do {                                                                                 \
        const char *argv_[] = {__VA_ARGS__};                                             \
        size_t lens_[sizeof argv_ / sizeof argv_[0]];                                    \
        for (size_t i_ = 0; i_ < sizeof argv_ / sizeof argv_[0]; i_++)                   \
            lens_[i_] = strlen(argv_[i_]);                                               \
        put_cmd((c), (int)(sizeof argv_ / sizeof argv_[0]), argv_, lens_);               \
    } while (0)

static void send_acquire(struct conn *c, int64_t now)
{
    char key[32];
    size_t kl = key_name(key, c->key);
    const char *argv[] = {"LOCK.ACQUIRE", key, c->sid};
    size_t lens[] = {12, kl, c->sid_len};
    put_cmd(c, 3, argv, lens);
    expect(c, X_TOKEN);
    c->t_sent = now;
}

static void send_release(struct conn *c, enum expect x)
{
    char key[32], tok[24];
    size_t kl = key_name(key, c->key);
    size_t tl = fmt_u64(tok, (uint64_t)c->token);
    const char *argv[] = {"LOCK.RELEASE", key, c->sid, "TOKEN", tok};
    size_t lens[] = {12, kl, c->sid_len, 5, tl};
    put_cmd(c, 5, argv, lens);
    expect(c, x);
    g.keyst[c->key].holder = 0; /* from here another client may be granted it */
}

static void send_set(struct conn *c)
{
    char key[32];
    size_t kl = key_name(key, c->key);
    const char *argv[] = {"SET", key, c->rtok, "NX", "PX", LOCK_TTL_MS};
    size_t lens[] = {3, kl, c->rtok_len, 2, 2, sizeof LOCK_TTL_MS - 1};
    put_cmd(c, 6, argv, lens);
    expect(c, X_SET);
}

static void redis_start_cycle(struct conn *c, int64_t now)
{
    c->key = rng_below(&c->rng, g.keys);
    int n = snprintf(c->rtok, sizeof c->rtok, "%" PRIu64 "-%u-%" PRIu64, g.seed, c->idx, c->cycle++);
    c->rtok_len = (size_t)n;
    c->t_sent = now;
    send_set(c);
}

/* --- connection I/O ---------------------------------------------------------------- */

static void set_out(struct conn *c, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = c->idx};
    if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = on;
}

static void flush(struct conn *c)
{
    while (c->wpos < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                set_out(c, 1);
            return;
        } else {
            fail(c, "send: %s", n < 0 ? strerror(errno) : "wrote nothing");
            return;
        }
    }
    c->wpos = c->wlen = 0;
    if (c->want_out)
        set_out(c, 0);
}

static void finish(struct conn *c)
{
    if (c->wpos < c->wlen)
        fail(c, "closing with unsent bytes");
    close(c->fd);
    c->fd = -1;
    g.active--;
}

static void cycle_done(struct conn *c, int64_t now)
{
    struct keystate *ks = &g.keyst[c->key];
    if (ks->holder != 0)
        fail(c, "granted bench/%u while client %u holds it", c->key, ks->holder - 1);
    ks->holder = c->idx + 1;
    g.all_cycles++;
    if (now >= g.t_meas0 && now < g.t_meas1) {
        g.cycles++;
        if (g.nlat == g.caplat) {
            size_t cap = g.caplat ? g.caplat * 2 : 65536;
            uint64_t *p = realloc(g.lat, cap * sizeof *p);
            if (p == NULL)
                die("out of memory for %zu latencies", cap);
            g.lat = p;
            g.caplat = cap;
        }
        g.lat[g.nlat++] = (uint64_t)(now - c->t_sent);
    }
}

static void retry_push(struct conn *c, int64_t now)
{
    c->retry_at = now + RETRY_NS;
    g.retryq[(g.rq_head + g.rq_len) % g.clients] = c->idx;
    g.rq_len++;
}

/* Acts on one reply; a failure is reported through fail(). */
static void on_reply(struct conn *c, const struct reply *r, int64_t now)
{
    if (c->eq_len == 0) {
        fail(c, "unsolicited reply %s", show(r));
        return;
    }
    enum expect x = (enum expect)c->eq[c->eq_head];
    c->eq_head = (c->eq_head + 1) % EXPQ;
    c->eq_len--;
    if (r->type == '-') {
        fail(c, "%s: server error %s", EXPECT_NAME[x], show(r));
        return;
    }
    int stopping = now >= g.t_meas1;
    switch (x) {
    case X_SESSION:
        if (r->type != '$' || r->len == 0 || r->len >= sizeof c->sid)
            break;
        memcpy(c->sid, r->str, r->len);
        c->sid_len = r->len;
        c->sid[c->sid_len] = '\0';
        c->key = rng_below(&c->rng, g.keys);
        send_acquire(c, now);
        return;
    case X_TOKEN: {
        if (r->type != ':' || r->num <= 0)
            break;
        struct keystate *ks = &g.keyst[c->key];
        if (r->num <= ks->last_token) {
            fail(c, "fencing token %" PRId64 " for bench/%u is not above the last one, %" PRId64,
                 r->num, c->key, ks->last_token);
            return;
        }
        ks->last_token = r->num;
        c->token = r->num;
        cycle_done(c, now);
        if (stopping) {
            send_release(c, X_LAST_RELEASE);
        } else {
            send_release(c, X_RELEASED);
            c->key = rng_below(&c->rng, g.keys);
            send_acquire(c, now);
        }
        return;
    }
    case X_RELEASED:
        if (!is_ok(r))
            break;
        return;
    case X_AUTH:
        if (!is_ok(r))
            break;
        return;
    case X_LAST_RELEASE: {
        if (!is_ok(r))
            break;
        const char *argv[] = {"SESSION.CLOSE", c->sid};
        size_t lens[] = {13, c->sid_len};
        put_cmd(c, 2, argv, lens);
        expect(c, X_CLOSED);
        return;
    }
    case X_CLOSED:
        if (!is_ok(r))
            break;
        finish(c);
        return;
    case X_SHA:
        if (r->type != '$' || r->len != 40)
            break;
        if (g.sha[0] == '\0')
            memcpy(g.sha, r->str, 40);
        else if (memcmp(g.sha, r->str, 40) != 0) {
            fail(c, "SCRIPT LOAD: sha %.40s differs from another client's %s", r->str, g.sha);
            return;
        }
        redis_start_cycle(c, now);
        return;
    case X_SET:
        if (r->type == 0) { /* held by another client: try again in 100 ms */
            retry_push(c, now);
            return;
        }
        if (!is_ok(r))
            break;
        cycle_done(c, now);
        {
            char key[32];
            size_t kl = key_name(key, c->key);
            const char *argv[] = {"EVALSHA", g.sha, "1", key, c->rtok};
            size_t lens[] = {7, 40, 1, kl, c->rtok_len};
            put_cmd(c, 5, argv, lens);
            expect(c, X_EVAL);
            g.keyst[c->key].holder = 0;
        }
        return;
    case X_EVAL:
        if (r->type != ':' || r->num != 1) {
            if (r->type == ':' && r->num == 0) {
                fail(c, "EVALSHA: bench/%u was no longer held with token %s", c->key, c->rtok);
                return;
            }
            break;
        }
        if (stopping)
            finish(c);
        else
            redis_start_cycle(c, now);
        return;
    }
    fail(c, "%s: unexpected reply %s", EXPECT_NAME[x], show(r));
}

static void on_readable(struct conn *c)
{
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen == RBUF) {
        fail(c, "a reply larger than the %d-byte read buffer", RBUF);
        return;
    }
    ssize_t n;
    do
        n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        fail(c, "connection lost%s%s (awaiting %u repl%s)", n < 0 ? ": " : " (server closed it)",
             n < 0 ? strerror(errno) : "", c->eq_len, c->eq_len == 1 ? "y" : "ies");
        return;
    }
    c->rlen += (size_t)n;
    int64_t now = now_ns();
    int errors = g.errors;
    while (c->fd >= 0 && g.errors == errors) {
        struct reply r;
        const char *err = NULL;
        long used = resp_parse(c->rbuf + c->rpos, c->rlen - c->rpos, &r, &err);
        if (used == 0)
            break;
        if (used < 0) {
            fail(c, "malformed reply: %s", err);
            return;
        }
        c->rpos += (size_t)used;
        on_reply(c, &r, now);
    }
    if (c->fd < 0)
        return;
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    if (g.errors == errors)
        flush(c);
}

static void connect_all(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (unsigned i = 0; i < g.clients; i++) {
        struct conn *c = &g.conns[i];
        c->idx = i;
        c->rng = g.seed * 0x100000001B3ULL + i; /* splitmix64 scrambles any distinct start */
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket: %s", strerror(errno));
        struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_S};
        int one = 1;
        if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
            die("setsockopt: %s", strerror(errno));
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0)
            die("connect to 127.0.0.1:%d: %s", g.port, strerror(errno));
        int fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) != 0)
            die("fcntl: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            die("epoll_ctl: %s", strerror(errno));
        g.active++;
    }
}

static void start_all(void)
{
    for (unsigned i = 0; i < g.clients; i++) {
        struct conn *c = &g.conns[i];
        if (g.user) {
            CMD(c, "AUTH", g.user, g.password);
            expect(c, X_AUTH);
        }
        if (g.proto == P_COORDCORE) {
            CMD(c, "SESSION.OPEN", SESSION_TTL);
            expect(c, X_SESSION);
        } else {
            CMD(c, "SCRIPT", "LOAD", LUA_RELEASE);
            expect(c, X_SHA);
        }
        flush(c);
    }
}

static void run(void)
{
    int64_t t0 = now_ns();
    g.t_meas0 = t0 + (int64_t)(g.warmup * 1e9);
    g.t_meas1 = g.t_meas0 + (int64_t)(g.seconds * 1e9);
    g.deadline = g.t_meas1 + (int64_t)(g.drain * 1e9);
    start_all();
    struct epoll_event evs[MAX_EVENTS];
    while (g.active > 0 && g.errors == 0) {
        int64_t now = now_ns();
        while (g.rq_len > 0 && g.errors == 0) {
            struct conn *c = &g.conns[g.retryq[g.rq_head]];
            if (c->retry_at > now)
                break;
            g.rq_head = (g.rq_head + 1) % g.clients;
            g.rq_len--;
            send_set(c);
            flush(c);
        }
        if (g.errors)
            break;
        if (now >= g.deadline) {
            fprintf(stderr, "lockload: %u of %u connection(s) still busy %.1f s after the measured "
                    "window (a stuck server?); giving up\n", g.active, g.clients, g.drain);
            g.errors += (int)g.active;
            break;
        }
        int64_t next = g.deadline;
        if (g.rq_len > 0 && g.conns[g.retryq[g.rq_head]].retry_at < next)
            next = g.conns[g.retryq[g.rq_head]].retry_at;
        int64_t wait_ms = (next - now + 999999) / 1000000;
        int n = epoll_wait(g.ep, evs, MAX_EVENTS, wait_ms > INT_MAX ? INT_MAX : (int)wait_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n && g.errors == 0; i++) {
            struct conn *c = &g.conns[evs[i].data.u32];
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                flush(c);
            if (g.errors == 0 && c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c);
        }
    }
}

/* --- results ----------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void report(void)
{
    char p50[32] = "null", p99[32] = "null";
    if (g.nlat > 0) {
        /* as bench/_lockbench.measure: statistics.median and lat[min(n-1, int(n*0.99))] */
        qsort(g.lat, g.nlat, sizeof *g.lat, cmp_u64);
        size_t n = g.nlat;
        double med = n % 2 ? (double)g.lat[n / 2] : ((double)g.lat[n / 2 - 1] + (double)g.lat[n / 2]) / 2;
        size_t i99 = (size_t)((double)n * 0.99);
        if (i99 > n - 1)
            i99 = n - 1;
        snprintf(p50, sizeof p50, "%.6f", med / 1e6);
        snprintf(p99, sizeof p99, "%.6f", (double)g.lat[i99] / 1e6);
    }
    int64_t end = now_ns();
    if (end > g.t_meas1)
        end = g.t_meas1;
    double elapsed = end > g.t_meas0 ? (double)(end - g.t_meas0) / 1e9 : 0.0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* the latency distribution for the CDF plots: quantiles at k/1000, k = 1..999,
     * indexed as p99 above (lat[min(n-1, int(n*q))]); an empty list when nothing was measured */
    printf("{\"quantiles_ms\": [");
    for (unsigned k = 1; g.nlat > 0 && k < 1000; k++) {
        size_t i = (size_t)((double)g.nlat * k / 1000.0);
        if (i > g.nlat - 1)
            i = g.nlat - 1;
        printf("%s%.6f", k > 1 ? ", " : "", (double)g.lat[i] / 1e6);
    }
    printf("], ");
    printf("\"cycles\": %" PRIu64 ", \"all_cycles\": %" PRIu64 ", \"elapsed\": %.6f, "
           "\"cycles_per_s\": %.3f, \"p50_ms\": %s, \"p99_ms\": %s, \"errors\": %d, "
           "\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, \"protocol\": \"%s\", \"clients\": %u, "
           "\"keys\": %" PRIu32 "}\n",
           g.cycles, g.all_cycles, elapsed, elapsed > 0 ? (double)g.cycles / elapsed : 0.0, p50, p99,
           g.errors, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
           g.proto == P_COORDCORE ? "coordcore" : "redis-lock", g.clients, g.keys);
    fflush(stdout);
}

/* --- options ----------------------------------------------------------------------- */

static void usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "lockload: %s\n", msg);
    fprintf(stderr,
            "usage: lockload --port P --protocol coordcore|redis-lock [--clients N] [--keys K]\n"
            "                [--seconds S] [--warmup W] [--drain D] [--seed X] [--user U --password P]\n"
            "Drives lock acquire+release cycles against 127.0.0.1:P; prints one JSON object.\n");
    exit(2);
}

static double opt_double(const char *s, const char *what, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "lockload: %s must be a number in [%g, %g], got %s\n", what, lo, hi, s);
        exit(2);
    }
    return v;
}

static uint64_t opt_u64(const char *s, const char *what, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "lockload: %s must be an integer in [%" PRIu64 ", %" PRIu64 "], got %s\n",
                what, lo, hi, s);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", required_argument, 0, 'p'},     {"clients", required_argument, 0, 'c'},
        {"keys", required_argument, 0, 'k'},     {"seconds", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},   {"protocol", required_argument, 0, 'P'},
        {"seed", required_argument, 0, 'S'},     {"drain", required_argument, 0, 'd'},
        {"user", required_argument, 0, 'u'},     {"password", required_argument, 0, 'a'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    g.clients = 1;
    g.keys = 1;
    g.seconds = 3.0;
    g.warmup = 1.0;
    g.drain = 30.0;
    int have_proto = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'p': g.port = (int)opt_u64(optarg, "--port", 1, 65535); break;
        case 'c': g.clients = (unsigned)opt_u64(optarg, "--clients", 1, MAX_CLIENTS); break;
        case 'k': g.keys = (uint32_t)opt_u64(optarg, "--keys", 1, MAX_KEYS); break;
        case 's': g.seconds = opt_double(optarg, "--seconds", 0.001, 86400); break;
        case 'w': g.warmup = opt_double(optarg, "--warmup", 0, 86400); break;
        case 'd': g.drain = opt_double(optarg, "--drain", 0.001, 86400); break;
        case 'S': g.seed = opt_u64(optarg, "--seed", 0, UINT64_MAX); break;
        case 'P':
            have_proto = 1;
            if (strcmp(optarg, "coordcore") == 0)
                g.proto = P_COORDCORE;
            else if (strcmp(optarg, "redis-lock") == 0)
                g.proto = P_REDIS;
            else
                usage("--protocol must be coordcore or redis-lock");
            break;
        case 'u': g.user = optarg; break;
        case 'a': g.password = optarg; break;
        case 'h': usage(NULL); break;
        default: usage(NULL);
        }
    }
    if (optind != argc)
        usage("unexpected positional argument");
    if (!g.user != !g.password)
        usage("--user and --password go together");
    if (g.port == 0)
        usage("--port is required");
    if (!have_proto)
        usage("--protocol is required");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    g.conns = calloc(g.clients, sizeof *g.conns);
    g.keyst = calloc(g.keys, sizeof *g.keyst);
    g.retryq = calloc(g.clients, sizeof *g.retryq);
    if (!g.conns || !g.keyst || !g.retryq)
        die("out of memory");
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0)
        die("epoll_create1: %s", strerror(errno));
    connect_all();
    run();
    report();
    for (unsigned i = 0; i < g.clients; i++)
        if (g.conns[i].fd >= 0)
            close(g.conns[i].fd);
    close(g.ep);
    free(g.conns);
    free(g.keyst);
    free(g.retryq);
    free(g.lat);
    return g.errors ? 1 : 0;
}
