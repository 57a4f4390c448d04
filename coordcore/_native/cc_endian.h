/* Little-endian loads and stores shared by the native modules that read and write
   coordcore's binary formats (batch records, results, events, snapshots) and hash
   bytes (the hashes are defined on little-endian words), and the rotations. */
#ifndef COORDCORE_CC_ENDIAN_H
#define COORDCORE_CC_ENDIAN_H
#include <stdint.h>
#include <string.h>

/* Unaligned little-endian loads and stores: the formats are little-endian on
   every host; compilers turn these into single moves on x86 and ARM. */
static inline uint64_t cc_ld64(const unsigned char *p) {
    uint64_t v; memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#endif
    return v;
}
static inline uint32_t cc_ld32(const unsigned char *p) {
    uint32_t v; memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#endif
    return v;
}
static inline uint16_t cc_ld16(const unsigned char *p) {
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}
static inline void cc_st64(unsigned char *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#endif
    memcpy(p, &v, 8);
}
static inline void cc_st32(unsigned char *p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#endif
    memcpy(p, &v, 4);
}
static inline void cc_st16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
}

static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#endif
