/* The ring snapshot's lookups and the builders of its bucket index and replica table. */
#ifndef COORDCORE_CC_RING_H
#define COORDCORE_CC_RING_H
#include "cc_common.h"
#include "Python.h"
#include <stdint.h>

/* ---- ring lookups ------------------------------------------------------------------ */
typedef struct {
    const uint64_t *points;   /* sorted, strictly increasing */
    const int32_t *owners;    /* node index of each point */
    const uint32_t *index;    /* (1 << bits) + 1 entries: first point whose bucket >= b */
    const int32_t *succ;      /* npoints rows of `width` distinct nodes in ring order */
    uint64_t hmask;           /* the hash's bits: 32 for ketama, 64 for xxh64 */
    Py_ssize_t npoints;
    int shift;                /* bucket of h = h >> shift */
    int width;
} cc_ring;

/* The first point at or after h, wrapping to point 0 (libketama's and libmemcached's
   rule). The bucket index leaves about one point to look at. Points of later buckets
   are all > h and the array carries CC_PAD sentinels (UINT64_MAX) after its end, so
   counting the points below h among the next four needs no branch per point; a
   crowded bucket (hostile node names) takes a binary search instead. */
#define CC_PAD 4
#if defined(__GNUC__)
#define CC_LIKELY(x) __builtin_expect(!!(x), 1)
#define CC_PREFETCH(p) __builtin_prefetch(p)
#else
#define CC_LIKELY(x) (x)
#define CC_PREFETCH(p) ((void)0)
#endif
static inline Py_ssize_t cc_ring_find(const cc_ring *r, uint64_t h) {
    /* Batch callers validate ketama hashes (< 2**32) before the lookup loop, but the
       array may change in between (another thread, no GIL held): masking keeps the
       bucket inside the index whatever the value. */
    h &= r->hmask;
    uint64_t bucket = h >> r->shift;
    Py_ssize_t i = (Py_ssize_t)r->index[bucket], e = (Py_ssize_t)r->index[bucket + 1];
    if (CC_LIKELY(e - i <= CC_PAD)) {
        const uint64_t *p = r->points + i;
        i += (Py_ssize_t)(p[0] < h) + (Py_ssize_t)(p[1] < h)
           + (Py_ssize_t)(p[2] < h) + (Py_ssize_t)(p[3] < h);
    } else {
        while (i < e) {
            Py_ssize_t mid = i + ((e - i) >> 1);
            if (r->points[mid] < h) i = mid + 1; else e = mid;
        }
    }
    return i == r->npoints ? 0 : i;
}
static inline void cc_prefetch(const void *p) { CC_PREFETCH(p); CC_PREFETCH((const char *)p + 64); }

CC_UNUSED static void cc_ring_build_index(const uint64_t *points, Py_ssize_t n, int shift, int bits,
                                uint32_t *index) {
    Py_ssize_t i = 0;
    uint64_t nb = (uint64_t)1 << bits;
    for (uint64_t b = 0; b <= nb; b++) {
        while (i < n && (points[i] >> shift) < b) i++;
        index[b] = (uint32_t)i;
    }
}

/* Row i: the first `width` distinct owners met walking the ring from point i.
   `stamp` has one slot per node, initialised to -1. width <= distinct owners. */
CC_UNUSED static void cc_ring_build_succ(const int32_t *owners, Py_ssize_t n, int width,
                               int64_t *stamp, int32_t *succ) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int got = 0;
        Py_ssize_t j = i;
        while (got < width) {
            int32_t o = owners[j];
            if (stamp[o] != (int64_t)i) { stamp[o] = (int64_t)i; succ[i * width + got++] = o; }
            j = (j + 1 == n) ? 0 : j + 1;
        }
    }
}

/* Walk from point i collecting `want` distinct owners into out (n > width case). */
CC_UNUSED static void cc_ring_walk(const cc_ring *r, Py_ssize_t i, int want, uint8_t *seen, int32_t *out) {
    int got = 0;
    while (got < want) {
        int32_t o = r->owners[i];
        if (!seen[o]) { seen[o] = 1; out[got++] = o; }
        i = (i + 1 == r->npoints) ? 0 : i + 1;
    }
    for (int k = 0; k < got; k++) seen[out[k]] = 0;
}

#endif
