/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of the log's
   records and of lock machine snapshots, the one CRC of coordcore.
   cc_crc32c(crc, p, n) continues from crc (0 to start), like google-crc32c's extend. */
#ifndef COORDCORE_CC_CRC32C_H
#define COORDCORE_CC_CRC32C_H
#include "cc_common.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t cc_crc32c_table[256];

/* Byte at a time through a 256-entry table: the portable path. */
CC_UNUSED static uint32_t cc_crc32c_sw(uint32_t crc, const unsigned char *p, size_t n) {
    while (n--) crc = cc_crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
/* SSE 4.2's crc32 instruction computes this very CRC, 8 bytes per instruction (log
   records reach megabytes; the table manages about one byte per cycle). */
__attribute__((target("sse4.2")))
CC_UNUSED static uint32_t cc_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);  /* x86 is little-endian: the word is the next 8 bytes in order */
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; p++, n--) c32 = _mm_crc32_u8(c32, *p);
    return c32;
}
static int cc_crc32c_use_hw;
#endif

/* Call once before the first cc_crc32c (at module import). */
CC_UNUSED static void cc_crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        cc_crc32c_table[i] = c;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    cc_crc32c_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

CC_UNUSED static uint32_t cc_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cc_crc32c_use_hw) return ~cc_crc32c_hw(crc, p, n);
#endif
    return ~cc_crc32c_sw(crc, p, n);
}

#endif
