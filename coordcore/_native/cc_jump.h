/* Jump consistent hash (Lamping and Veach, 2014), one key and many. */
#ifndef COORDCORE_CC_JUMP_H
#define COORDCORE_CC_JUMP_H
#include "cc_common.h"
#include "Python.h"
#include <stdint.h>

/* ---- jump consistent hash (Lamping and Veach, 2014) ------------------------------ */
#define CC_JUMP_MUL 2862933555777941757ULL
static inline int32_t cc_jump(uint64_t key, int32_t buckets) {
    int64_t b = -1, j = 0;
    while (j < buckets) {
        b = j;
        key = key * CC_JUMP_MUL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (int32_t)b;
}
/* The same function on CC_LANES keys in lockstep: every lane steps every round (a lane
   that is done keeps its values through a select), so the divisions of different keys
   overlap instead of waiting on one key's chain and on a mispredicted loop exit. */
#define CC_LANES 8
CC_UNUSED static void cc_jump_many(const uint64_t *keys, Py_ssize_t n, int32_t buckets, int32_t *out) {
    Py_ssize_t i = 0;
    for (; i + CC_LANES <= n; i += CC_LANES) {
        uint64_t k[CC_LANES];
        int64_t b[CC_LANES], j[CC_LANES];
        for (int l = 0; l < CC_LANES; l++) { k[l] = keys[i + l]; b[l] = -1; j[l] = 0; }
        for (;;) {
            int active = 0;
            for (int l = 0; l < CC_LANES; l++) {
                int go = j[l] < buckets;
                active |= go;
                uint64_t nk = k[l] * CC_JUMP_MUL + 1;
                int64_t nb = j[l];
                int64_t nj = (int64_t)((double)(nb + 1) * ((double)(1LL << 31) / (double)((nk >> 33) + 1)));
                k[l] = go ? nk : k[l];
                b[l] = go ? nb : b[l];
                j[l] = go ? nj : j[l];
            }
            if (!active) break;
        }
        for (int l = 0; l < CC_LANES; l++) out[i + l] = (int32_t)b[l];
    }
    for (; i < n; i++) out[i] = cc_jump(keys[i], buckets);
}

#endif
