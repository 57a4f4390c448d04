/* MD5, for ketama compatibility: a ketama ring's points are the words of md5 digests. */
#ifndef COORDCORE_CC_MD5_H
#define COORDCORE_CC_MD5_H
#include "cc_common.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "cc_endian.h"

/* ---- MD5, for ketama compatibility ----------------------------------------------- */
/* MD5 (RFC 1321), unrolled: the four round functions and the 64 steps, as published. */
#define CC_MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define CC_MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define CC_MD5_H(x, y, z) ((x) ^ (y) ^ (z))
#define CC_MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))
#define CC_MD5_STEP(f, a, b, c, d, x, t, s) \
    do { (a) += f((b), (c), (d)) + (x) + (t); (a) = cc_rotl32((a), (s)) + (b); } while (0)
CC_UNUSED static void cc_md5_block(uint32_t st[4], const uint8_t *blk) {
    uint32_t m[16];
    for (int i = 0; i < 16; i++) m[i] = cc_ld32(blk + 4 * i);
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[0], 0xd76aa478U, 7);
    CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[1], 0xe8c7b756U, 12);
    CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[2], 0x242070dbU, 17);
    CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[3], 0xc1bdceeeU, 22);
    CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[4], 0xf57c0fafU, 7);
    CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[5], 0x4787c62aU, 12);
    CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[6], 0xa8304613U, 17);
    CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[7], 0xfd469501U, 22);
    CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[8], 0x698098d8U, 7);
    CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[9], 0x8b44f7afU, 12);
    CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[10], 0xffff5bb1U, 17);
    CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[11], 0x895cd7beU, 22);
    CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[12], 0x6b901122U, 7);
    CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[13], 0xfd987193U, 12);
    CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[14], 0xa679438eU, 17);
    CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[15], 0x49b40821U, 22);
    CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[1], 0xf61e2562U, 5);
    CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[6], 0xc040b340U, 9);
    CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[11], 0x265e5a51U, 14);
    CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[0], 0xe9b6c7aaU, 20);
    CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[5], 0xd62f105dU, 5);
    CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[10], 0x02441453U, 9);
    CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[15], 0xd8a1e681U, 14);
    CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[4], 0xe7d3fbc8U, 20);
    CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[9], 0x21e1cde6U, 5);
    CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[14], 0xc33707d6U, 9);
    CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[3], 0xf4d50d87U, 14);
    CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[8], 0x455a14edU, 20);
    CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[13], 0xa9e3e905U, 5);
    CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[2], 0xfcefa3f8U, 9);
    CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[7], 0x676f02d9U, 14);
    CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[12], 0x8d2a4c8aU, 20);
    CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[5], 0xfffa3942U, 4);
    CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[8], 0x8771f681U, 11);
    CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[11], 0x6d9d6122U, 16);
    CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[14], 0xfde5380cU, 23);
    CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[1], 0xa4beea44U, 4);
    CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[4], 0x4bdecfa9U, 11);
    CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[7], 0xf6bb4b60U, 16);
    CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[10], 0xbebfbc70U, 23);
    CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[13], 0x289b7ec6U, 4);
    CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[0], 0xeaa127faU, 11);
    CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[3], 0xd4ef3085U, 16);
    CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[6], 0x04881d05U, 23);
    CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[9], 0xd9d4d039U, 4);
    CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[12], 0xe6db99e5U, 11);
    CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[15], 0x1fa27cf8U, 16);
    CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[2], 0xc4ac5665U, 23);
    CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[0], 0xf4292244U, 6);
    CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[7], 0x432aff97U, 10);
    CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[14], 0xab9423a7U, 15);
    CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[5], 0xfc93a039U, 21);
    CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[12], 0x655b59c3U, 6);
    CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[3], 0x8f0ccc92U, 10);
    CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[10], 0xffeff47dU, 15);
    CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[1], 0x85845dd1U, 21);
    CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[8], 0x6fa87e4fU, 6);
    CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[15], 0xfe2ce6e0U, 10);
    CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[6], 0xa3014314U, 15);
    CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[13], 0x4e0811a1U, 21);
    CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[4], 0xf7537e82U, 6);
    CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[11], 0xbd3af235U, 10);
    CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[2], 0x2ad7d2bbU, 15);
    CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[9], 0xeb86d391U, 21);
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
}
/* The four little-endian 32-bit words of md5(data): ketama's points are exactly these. */
CC_UNUSED static void cc_md5_words(const void *data, size_t len, uint32_t out[4]) {
    const uint8_t *p = (const uint8_t *)data;
    uint32_t st[4] = {0x67452301U, 0xefcdab89U, 0x98badcfeU, 0x10325476U};
    size_t left = len;
    while (left >= 64) { cc_md5_block(st, p); p += 64; left -= 64; }
    uint8_t tail[128];
    memset(tail, 0, sizeof tail);
    if (left) memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tlen = left < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tlen - 8 + i] = (uint8_t)(bits >> (8 * i));
    cc_md5_block(st, tail);
    if (tlen == 128) cc_md5_block(st, tail + 64);
    for (int i = 0; i < 4; i++) out[i] = st[i];
}
static inline uint64_t cc_ketama_hash(const void *data, size_t len) {
    uint32_t w[4];
    cc_md5_words(data, len, w);
    return (uint64_t)w[0];
}

#endif
