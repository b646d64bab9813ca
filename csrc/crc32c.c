/* crc32c.c — CRC-32C (Castagnoli), the checksum of Kafka's RecordBatch v2.
 *
 * Owns: shm_crc32c(crc, data, len), with the usual pre/post
 * inversion, so shm_crc32c(0, "123456789", 9) == 0xE3069283. Uses the
 * SSE4.2 / ARMv8 crc32c instruction where the CPU has it, over three
 * interleaved streams for large inputs (the instruction's latency is 3
 * cycles, its throughput 1 per cycle), and a slicing-by-8 table otherwise;
 * and shm_crc32c_copy, the same checksum of a copy made in the same pass.
 * Must never: touch shared memory or allocate.
 */
#include "shmlog.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define SHM_HAVE_X86_CRC 1
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
#define SHM_HAVE_ARM_CRC 1
#endif

#define POLY 0x82F63B78u   /* reflected Castagnoli polynomial */

static uint32_t table8[8][256];
static int hw = -1;

/* GF(2) product of a and b modulo POLY, both as reflected polynomials. */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

/* x^(8*n) mod POLY: multiplying a raw CRC state by it appends n zero bytes. */
static uint32_t x8nmodp(uint64_t n)
{
    uint32_t p = 1u << 31;   /* x^0 */
    uint32_t sq = 1u << 23;  /* x^8 */
    while (n) {
        if (n & 1)
            p = multmodp(sq, p);
        sq = multmodp(sq, sq);
        n >>= 1;
    }
    return p;
}

#define LONG_BLOCK 8192
#define SHORT_BLOCK 256
static uint32_t shift_long, shift_short;

static void init_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table8[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table8[t][i] = (table8[t - 1][i] >> 8) ^ table8[0][table8[t - 1][i] & 0xFF];
    shift_long = x8nmodp(LONG_BLOCK);
    shift_short = x8nmodp(SHORT_BLOCK);
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ table8[0][(c ^ *p++) & 0xFF];
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = table8[7][w & 0xFF] ^ table8[6][(w >> 8) & 0xFF] ^ table8[5][(w >> 16) & 0xFF] ^
            table8[4][(w >> 24) & 0xFF] ^ table8[3][(w >> 32) & 0xFF] ^
            table8[2][(w >> 40) & 0xFF] ^ table8[1][(w >> 48) & 0xFF] ^ table8[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ table8[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(SHM_HAVE_X86_CRC) || defined(SHM_HAVE_ARM_CRC)
#if defined(SHM_HAVE_X86_CRC)
#define HW_ATTR __attribute__((target("sse4.2")))
#define CRC8(c, v) ((uint32_t)_mm_crc32_u64((c), (v)))
#define CRC1(c, v) _mm_crc32_u8((c), (v))
#else
#define HW_ATTR
#define CRC8(c, v) __crc32cd((c), (v))
#define CRC1(c, v) __crc32cb((c), (v))
#endif

HW_ATTR static uint32_t crc_hw_serial(uint32_t c, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        c = CRC1(c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = CRC8(c, w);
        p += 8;
        n -= 8;
    }
    while (n--)
        c = CRC1(c, *p++);
    return c;
}

/* Three streams of `block` bytes each, combined: crc(A|B|C) =
 * shift(shift(crc(A), |B|) ^ crc(B), |C|) ^ crc(C) on raw states. */
HW_ATTR static uint32_t crc_hw_3way(uint32_t c, const uint8_t *p, size_t block, uint32_t shift)
{
    uint32_t c1 = 0, c2 = 0;
    const uint8_t *p1 = p + block, *p2 = p + 2 * block;
    for (size_t i = 0; i < block; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p1 + i, 8);
        memcpy(&w2, p2 + i, 8);
        c = CRC8(c, w0);
        c1 = CRC8(c1, w1);
        c2 = CRC8(c2, w2);
    }
    c = multmodp(shift, c) ^ c1;
    return multmodp(shift, c) ^ c2;
}

/* crc_hw_3way and crc_hw_serial that also store what they read at dst: a
 * copy and its checksum in one pass over the source (shm_crc32c_copy) */
HW_ATTR static uint32_t crc_hw_3way_copy(uint32_t c, uint8_t *dst, const uint8_t *p, size_t block, uint32_t shift)
{
    uint32_t c1 = 0, c2 = 0;
    const uint8_t *p1 = p + block, *p2 = p + 2 * block;
    uint8_t *d1 = dst + block, *d2 = dst + 2 * block;
    for (size_t i = 0; i < block; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p1 + i, 8);
        memcpy(&w2, p2 + i, 8);
        memcpy(dst + i, &w0, 8);
        memcpy(d1 + i, &w1, 8);
        memcpy(d2 + i, &w2, 8);
        c = CRC8(c, w0);
        c1 = CRC8(c1, w1);
        c2 = CRC8(c2, w2);
    }
    c = multmodp(shift, c) ^ c1;
    return multmodp(shift, c) ^ c2;
}

HW_ATTR static uint32_t crc_hw_copy(uint32_t c, uint8_t *dst, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        *dst++ = *p;
        c = CRC1(c, *p++);
        n--;
    }
    while (n >= 3 * LONG_BLOCK) {
        c = crc_hw_3way_copy(c, dst, p, LONG_BLOCK, shift_long);
        p += 3 * LONG_BLOCK;
        dst += 3 * LONG_BLOCK;
        n -= 3 * LONG_BLOCK;
    }
    while (n >= 3 * SHORT_BLOCK) {
        c = crc_hw_3way_copy(c, dst, p, SHORT_BLOCK, shift_short);
        p += 3 * SHORT_BLOCK;
        dst += 3 * SHORT_BLOCK;
        n -= 3 * SHORT_BLOCK;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        memcpy(dst, &w, 8);
        c = CRC8(c, w);
        p += 8;
        dst += 8;
        n -= 8;
    }
    while (n--) {
        *dst++ = *p;
        c = CRC1(c, *p++);
    }
    return c;
}

HW_ATTR static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        c = CRC1(c, *p++);
        n--;
    }
    while (n >= 3 * LONG_BLOCK) {
        c = crc_hw_3way(c, p, LONG_BLOCK, shift_long);
        p += 3 * LONG_BLOCK;
        n -= 3 * LONG_BLOCK;
    }
    while (n >= 3 * SHORT_BLOCK) {
        c = crc_hw_3way(c, p, SHORT_BLOCK, shift_short);
        p += 3 * SHORT_BLOCK;
        n -= 3 * SHORT_BLOCK;
    }
    return crc_hw_serial(c, p, n);
}
#endif

static void crc_init_once(void)
{
    if (__atomic_load_n(&hw, __ATOMIC_ACQUIRE) >= 0)
        return;
    init_tables();
    int have = 0;
#if defined(SHM_HAVE_X86_CRC)
    __builtin_cpu_init();
    have = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#elif defined(SHM_HAVE_ARM_CRC)
    have = 1;
#endif
    /* release: the tables written above are visible to whoever sees hw >= 0 */
    __atomic_store_n(&hw, have, __ATOMIC_RELEASE);
}

int shm_crc32c_hardware(void)
{
    crc_init_once();
    return hw;
}

uint32_t shm_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
    crc_init_once();
    uint32_t c = ~crc;
#if defined(SHM_HAVE_X86_CRC) || defined(SHM_HAVE_ARM_CRC)
    if (hw)
        return ~crc_hw(c, data, len);
#endif
    return ~crc_table(c, data, len);
}

/* Copies len bytes from src to dst (not overlapping) and returns
 * shm_crc32c(crc, src, len), reading src once: the copy a producer or
 * reader makes anyway carries the checksum (issue 13.3). */
uint32_t shm_crc32c_copy(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len)
{
    crc_init_once();
#if defined(SHM_HAVE_X86_CRC) || defined(SHM_HAVE_ARM_CRC)
    if (hw)
        return ~crc_hw_copy(~crc, dst, src, len);
#endif
    memcpy(dst, src, len);
    return ~crc_table(~crc, src, len);
}

/* The table path, callable directly so tests can hold both paths to the same
 * answers on every machine. */
uint32_t shm_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len)
{
    crc_init_once();
    return ~crc_table(~crc, data, len);
}
