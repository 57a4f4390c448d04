/* The 64-bit hashes of coordcore: xxHash64 (the ring's key hash, and the lock machine's
   hash of key bytes, seeded) and MurmurHash3's finaliser (a bijection on 64-bit words:
   rendezvous scores and the lock machine's integer-keyed tables). */
#ifndef COORDCORE_CC_HASH_H
#define COORDCORE_CC_HASH_H
#include <stddef.h>
#include <stdint.h>
#include "cc_endian.h"

/* ---- xxHash64 (Yann Collet's specification, XXH64) ----------------------------- */
#define CC_P64_1 0x9E3779B185EBCA87ULL
#define CC_P64_2 0xC2B2AE3D27D4EB4FULL
#define CC_P64_3 0x165667B19E3779F9ULL
#define CC_P64_4 0x85EBCA77C2B2AE63ULL
#define CC_P64_5 0x27D4EB2F165667C5ULL

static inline uint64_t cc_xxh64_round(uint64_t acc, uint64_t input) {
    acc += input * CC_P64_2;
    acc = cc_rotl64(acc, 31);
    return acc * CC_P64_1;
}
static inline uint64_t cc_xxh64_merge(uint64_t acc, uint64_t val) {
    acc ^= cc_xxh64_round(0, val);
    return acc * CC_P64_1 + CC_P64_4;
}
static inline uint64_t cc_xxh64_avalanche(uint64_t h) {
    h ^= h >> 33; h *= CC_P64_2;
    h ^= h >> 29; h *= CC_P64_3;
    h ^= h >> 32;
    return h;
}
static inline uint64_t cc_xxh64(const void *data, size_t len, uint64_t seed) {
    const uint8_t *p = (const uint8_t *)data;
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        const uint8_t *limit = end - 32;
        uint64_t v1 = seed + CC_P64_1 + CC_P64_2, v2 = seed + CC_P64_2;
        uint64_t v3 = seed, v4 = seed - CC_P64_1;
        do {
            v1 = cc_xxh64_round(v1, cc_ld64(p));
            v2 = cc_xxh64_round(v2, cc_ld64(p + 8));
            v3 = cc_xxh64_round(v3, cc_ld64(p + 16));
            v4 = cc_xxh64_round(v4, cc_ld64(p + 24));
            p += 32;
        } while (p <= limit);
        h = cc_rotl64(v1, 1) + cc_rotl64(v2, 7) + cc_rotl64(v3, 12) + cc_rotl64(v4, 18);
        h = cc_xxh64_merge(h, v1); h = cc_xxh64_merge(h, v2);
        h = cc_xxh64_merge(h, v3); h = cc_xxh64_merge(h, v4);
    } else {
        h = seed + CC_P64_5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= cc_xxh64_round(0, cc_ld64(p));
        h = cc_rotl64(h, 27) * CC_P64_1 + CC_P64_4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)cc_ld32(p) * CC_P64_1;
        h = cc_rotl64(h, 23) * CC_P64_2 + CC_P64_3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * CC_P64_5;
        h = cc_rotl64(h, 11) * CC_P64_1;
        p++;
    }
    return cc_xxh64_avalanche(h);
}
/* xxh64 of the 8 little-endian bytes of v: the encoding of int keys. */
static inline uint64_t cc_xxh64_u64(uint64_t v, uint64_t seed) {
    uint64_t h = seed + CC_P64_5 + 8;
    h ^= cc_xxh64_round(0, v);
    h = cc_rotl64(h, 27) * CC_P64_1 + CC_P64_4;
    return cc_xxh64_avalanche(h);
}

static inline uint64_t cc_fmix64(uint64_t z) {  /* MurmurHash3's finaliser: a bijection */
    z ^= z >> 33; z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33; z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}

#endif
