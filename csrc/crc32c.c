/* crc32c.c — CRC-32C (Castagnoli), the checksum of Kafka's RecordBatch v2.
 *
 * Owns: shm_crc32c(crc, data, len), with the usual pre/post inversion, so
 * shm_crc32c(0, "123456789", 9) == 0xE3069283, and shm_crc32c_copy, the
 * same checksum of a copy made in the same pass (ordinary stores: whoever
 * asked for the copy reads it next). Paths, picked once per process from
 * the CPU (crc_init_once; shm_crc32c_path can lower it, for tests):
 *  - x86-64 with VPCLMULQDQ + AVX-512 F/VL/BW, from FOLD512_MIN bytes
 *    (FOLD512_COPY_MIN for the copy):
 *    carry-less-multiply folding of 4 x 64 bytes per round (16 lanes of
 *    16 bytes), its 64-byte accesses aligned (the stores, for the copy) by
 *    a masked first block (bytes outside the input neither read nor
 *    written), the blocks and lanes left at the end folded all at once;
 *  - x86-64 with PCLMULQDQ, from FOLD_MIN bytes (and on a CPU with the
 *    above, up to its threshold; on one without, up to the handover init
 *    measured, if the instruction's three streams are faster there): the
 *    same over 4 x 16 bytes;
 *  - the SSE4.2 / ARMv8 crc32c instruction, over three interleaved streams
 *    for large inputs (the instruction's latency is 3 cycles, its
 *    throughput 1 per cycle): below FOLD_MIN, and the whole input elsewhere;
 *  - a slicing-by-8 table otherwise (shm_crc32c_portable, always).
 * The folding code has its own target attributes: the build stays generic
 * x86-64, and runs on any x86-64 CPU. Folding constants are x^k mod POLY
 * computed at init (xnmodp), not typed in.
 * Must never: touch shared memory or allocate; use non-temporal stores.
 */
#include "shmlog.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define SHM_HAVE_X86_CRC 1
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8)
/* VPCLMULQDQ intrinsics: GCC 8, clang 6; used only in functions compiled
 * with their own target attribute, the build stays generic x86-64 */
#include <immintrin.h>
#define SHM_HAVE_X86_FOLD 1
#endif
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
#define SHM_HAVE_ARM_CRC 1
#endif

#define POLY 0x82F63B78u   /* reflected Castagnoli polynomial */

static uint32_t table8[8][256];
/* the path in use (SHM_CRC32C_PATH_*), -1 before crc_init_once; cpu_path the
 * best this CPU has, shm_crc32c_path's ceiling */
static int path = -1, cpu_path;

/* The folding paths from FOLD_MIN bytes on, the 512-bit one from
 * FOLD512_MIN on (FOLD512_COPY_MIN for the copy). Measured on a Xeon with
 * AVX-512 (ns per call, in L1, the mean over the 64 misalignments): at 64
 * bytes 8.3-8.5 folding 128-bit against 8.9 (aligned) to 14.8 (misaligned)
 * by the crc32 instruction, whose serial 3 cycles per 8 bytes lose from
 * there on; 128-bit against 512-bit folding 16.6/14.9 at 384 bytes,
 * 19.0/15.4 at 512, 34.7/19.2 at 1 KiB, 140/43 at 4 KiB; for the copy
 * 18.5/19.1 at 512, 21.3/17.8 at 640, 34.6/24.2 at 1 KiB (below that the
 * 512-bit path's masked head and tail cost what its width saves). */
#define FOLD_MIN 64
#define FOLD512_MIN 384
#define FOLD512_COPY_MIN 640

/* Where the 128-bit path hands over to the crc32 instruction's three
 * streams, on CPUs without the 512-bit path: measured once at init
 * (handover), since it depends on the CPU -- on a Xeon pclmulqdq issues once
 * a cycle and folding wins at every length; on AMD Zen 3 it issues every
 * other cycle, and for 1 MiB folding did 12.2 GB/s against the three
 * streams' 17.8. SIZE_MAX: never (and always while a test forces the path). */
static size_t insn_from = SIZE_MAX, insn_copy_from = SIZE_MAX;
static size_t insn_from_cpu = SIZE_MAX, insn_copy_from_cpu = SIZE_MAX;   /* what init measured */

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

/* x^n mod POLY: multiplying a raw CRC state by it appends n zero bits. */
static uint32_t xnmodp(uint64_t n)
{
    uint32_t p = 1u << 31;   /* x^0 */
    uint32_t sq = 1u << 30;  /* x^1 */
    while (n) {
        if (n & 1)
            p = multmodp(sq, p);
        sq = multmodp(sq, sq);
        n >>= 1;
    }
    return p;
}

/* x^(8*n) mod POLY: multiplying a raw CRC state by it appends n zero bytes. */
static uint32_t x8nmodp(uint64_t n)
{
    return xnmodp(8 * n);
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

#if defined(SHM_HAVE_X86_FOLD)
/* Carry-less-multiply folding (Intel's "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", reflected form). A 16-byte little-endian lane
 * X = L + H (L its low quadword, the earlier bytes) stands for the polynomial
 * L*x^64 + H; moving it D bits further down the message multiplies it by x^D,
 * and mod POLY that is clmul(L, x^(D+31)) ^ clmul(H, x^(D-33)) with both
 * constants reduced to 32 bits (pclmulqdq's product of reflected operands
 * carries one extra factor x, and a 32-bit constant in a quadword's low half
 * another x^32). The folded lane keeps the message's CRC: at the end,
 * crc32(crc32(0, L), H) of the last lane is the raw state. */
struct fold_k {
    uint64_t lo, hi;
};
static struct fold_k k2048, k512, k128;   /* D = 2048, 512, 128 bits */
/* fold_tail[31 - m]: D = 128 * m, m = 1..31 lanes ahead; then zeros */
static struct fold_k fold_tail[36];

static struct fold_k fold_constants(uint64_t d)
{
    struct fold_k k = {xnmodp(d + 31), xnmodp(d - 33)};
    return k;
}

#define FOLD_ATTR __attribute__((target("sse4.2,pclmul")))
#define FOLD512_ATTR __attribute__((target("sse4.2,pclmul,avx512f,avx512vl,avx512bw,vpclmulqdq")))

FOLD_ATTR static inline __m128i fold128(__m128i x, __m128i k, __m128i next)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

FOLD_ATTR static inline uint32_t fold_finish(__m128i x)
{
    uint32_t c = (uint32_t)_mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(x));
    return (uint32_t)_mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(x, 1));
}

FOLD512_ATTR static inline __m512i fold512(__m512i x, __m512i k, __m512i next)
{
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                     next, 0x96);
}

/* x moved m lanes ahead, m for each of its lanes in k (fold_tail's entries),
 * but the lane under keep (none, or the last lane itself) as it is. */
FOLD512_ATTR static inline __m512i fold_at(__m512i x, const struct fold_k *k, __mmask8 keep)
{
    __m512i kk = _mm512_loadu_si512(k);
    __m512i f = _mm512_xor_si512(_mm512_clmulepi64_epi128(x, kk, 0x00), _mm512_clmulepi64_epi128(x, kk, 0x11));
    return _mm512_mask_mov_epi64(f, keep, x);
}

/* Raw state c over n >= h + 256 bytes at p (and, when dst is not NULL, a
 * copy of them at dst), where p + h (dst + h for the copy) is on a 64-byte
 * boundary. The h < 64 bytes before it are the end of a 64-byte block read
 * and written under a mask (its other bytes neither read nor written, and no
 * fault from them), the state XORed in where the message begins; a zero
 * block when h is 0. Then 4 x 64 bytes per round, 16 lanes each folded 2048
 * bits ahead; then the 64-byte blocks and 16-byte lanes left, all lanes
 * moved to the last one's place at once; the last < 16 bytes by crc32.
 * Always inlined, so each caller's dst test is a constant: two loops. */
FOLD512_ATTR static inline __attribute__((always_inline)) uint32_t
crc_vpclmul_body(uint32_t c, uint8_t *dst, const uint8_t *p, size_t n, size_t h)
{
    __mmask64 m = h ? ~0ULL << (64 - h) : 0;
    __m512i head = _mm512_maskz_loadu_epi8(m, p + h - 64);
    if (dst) {
        _mm512_mask_storeu_epi8(dst + h - 64, m, head);
        dst += h;
    }
    p += h;
    n -= h;
    /* the state goes to bytes 64 - h .. 67 - h of head | x0: qword q, spilling into q + 1 */
    unsigned o = 64 - (unsigned)h, sh = o & 7, q = o >> 3;
    uint64_t lo = (uint64_t)c << (8 * sh), hi = sh ? (uint64_t)c >> (64 - 8 * sh) : 0;
    unsigned mlo = 1u << q, mhi = 1u << (q + 1);
    head = _mm512_ternarylogic_epi64(head, _mm512_maskz_set1_epi64((__mmask8)mlo, (long long)lo),
                                     _mm512_maskz_set1_epi64((__mmask8)mhi, (long long)hi), 0x96);
    __m512i c0 = _mm512_or_si512(_mm512_maskz_set1_epi64((__mmask8)(mlo >> 8), (long long)lo),
                                 _mm512_maskz_set1_epi64((__mmask8)(mhi >> 8), (long long)hi));
    __m512i k = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)k512.hi, (long long)k512.lo));
    __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64);
    __m512i x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
    if (dst) {
        _mm512_storeu_si512(dst, x0);
        _mm512_storeu_si512(dst + 64, x1);
        _mm512_storeu_si512(dst + 128, x2);
        _mm512_storeu_si512(dst + 192, x3);
        dst += 256;
    }
    x0 = fold512(head, k, _mm512_xor_si512(x0, c0));
    k = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)k2048.hi, (long long)k2048.lo));
    p += 256;
    n -= 256;
    while (n >= 256) {
        __m512i d0 = _mm512_loadu_si512(p), d1 = _mm512_loadu_si512(p + 64);
        __m512i d2 = _mm512_loadu_si512(p + 128), d3 = _mm512_loadu_si512(p + 192);
        if (dst) {
            _mm512_storeu_si512(dst, d0);
            _mm512_storeu_si512(dst + 64, d1);
            _mm512_storeu_si512(dst + 128, d2);
            _mm512_storeu_si512(dst + 192, d3);
            dst += 256;
        }
        x0 = fold512(x0, k, d0);
        x1 = fold512(x1, k, d1);
        x2 = fold512(x2, k, d2);
        x3 = fold512(x3, k, d3);
        p += 256;
        n -= 256;
    }
    /* The < 256 bytes left, j 64-byte blocks and i 16-byte lanes: every one
     * of the L lanes (x0..x3's 16 and those) moved at once to the last
     * lane's place by its own constants, then XORed, no chain of folds. */
    size_t j = n / 64, i = n % 64 / 16;
    unsigned nl = 16 + 4 * (unsigned)j + (unsigned)i;
    uint64_t last = 3ULL << (2 * (nl - 1));   /* the last lane's qwords, 4 lanes per byte */
    const struct fold_k *t = fold_tail + 32 - nl;
    __m512i s0 = fold_at(x0, t, (__mmask8)last), s1 = fold_at(x1, t + 4, (__mmask8)(last >> 8));
    s0 = _mm512_ternarylogic_epi64(s0, s1, fold_at(x2, t + 8, (__mmask8)(last >> 16)), 0x96);
    s1 = fold_at(x3, t + 12, (__mmask8)(last >> 24));
    for (size_t b = 0; b < j; b++) {
        __m512i d = _mm512_loadu_si512(p);
        if (dst) {
            _mm512_storeu_si512(dst, d);
            dst += 64;
        }
        s1 = _mm512_xor_si512(s1, fold_at(d, t + 16 + 4 * b, (__mmask8)(last >> (32 + 8 * b))));
        p += 64;
    }
    __mmask64 mi = (1ULL << (16 * i)) - 1;
    __m512i d = _mm512_maskz_loadu_epi8(mi, p);
    if (dst) {
        _mm512_mask_storeu_epi8(dst, mi, d);
        dst += 16 * i;
    }
    p += 16 * i;
    n -= 64 * j + 16 * i;
    s0 = _mm512_ternarylogic_epi64(s0, s1, fold_at(d, t + 16 + 4 * j, (__mmask8)(last >> (32 + 8 * j))), 0x96);
    __m256i s2 = _mm256_xor_si256(_mm512_castsi512_si256(s0), _mm512_extracti64x4_epi64(s0, 1));
    __m128i y = _mm_xor_si128(_mm256_castsi256_si128(s2), _mm256_extracti128_si256(s2, 1));
    c = fold_finish(y);
    return dst ? crc_hw_copy(c, dst, p, n) : crc_hw_serial(c, p, n);
}

/* The same with 128-bit pclmulqdq (CPUs before AVX-512 VPCLMULQDQ, and
 * inputs below FOLD512_MIN): n >= 64, four lanes of 16 bytes per round,
 * each folded 512 bits ahead, then one after the other. */
FOLD_ATTR static inline __attribute__((always_inline)) uint32_t
crc_pclmul_body(uint32_t c, uint8_t *dst, const uint8_t *p, size_t n)
{
    __m128i k = _mm_set_epi64x((long long)k512.hi, (long long)k512.lo);
    __m128i x0 = _mm_loadu_si128((const __m128i *)p), x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32)), x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    if (dst) {
        _mm_storeu_si128((__m128i *)dst, x0);
        _mm_storeu_si128((__m128i *)(dst + 16), x1);
        _mm_storeu_si128((__m128i *)(dst + 32), x2);
        _mm_storeu_si128((__m128i *)(dst + 48), x3);
        dst += 64;
    }
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)c));
    p += 64;
    n -= 64;
    while (n >= 64) {
        __m128i d0 = _mm_loadu_si128((const __m128i *)p), d1 = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i d2 = _mm_loadu_si128((const __m128i *)(p + 32)), d3 = _mm_loadu_si128((const __m128i *)(p + 48));
        if (dst) {
            _mm_storeu_si128((__m128i *)dst, d0);
            _mm_storeu_si128((__m128i *)(dst + 16), d1);
            _mm_storeu_si128((__m128i *)(dst + 32), d2);
            _mm_storeu_si128((__m128i *)(dst + 48), d3);
            dst += 64;
        }
        x0 = fold128(x0, k, d0);
        x1 = fold128(x1, k, d1);
        x2 = fold128(x2, k, d2);
        x3 = fold128(x3, k, d3);
        p += 64;
        n -= 64;
    }
    k = _mm_set_epi64x((long long)k128.hi, (long long)k128.lo);
    x0 = fold128(x0, k, x1);
    x0 = fold128(x0, k, x2);
    x0 = fold128(x0, k, x3);
    while (n >= 16) {
        __m128i d = _mm_loadu_si128((const __m128i *)p);
        if (dst) {
            _mm_storeu_si128((__m128i *)dst, d);
            dst += 16;
        }
        x0 = fold128(x0, k, d);
        p += 16;
        n -= 16;
    }
    c = fold_finish(x0);
    return dst ? crc_hw_copy(c, dst, p, n) : crc_hw_serial(c, p, n);
}

FOLD_ATTR static uint32_t crc_pclmul(uint32_t c, const uint8_t *p, size_t n)
{
    return n < 64 ? crc_hw(c, p, n) : crc_pclmul_body(c, NULL, p, n);
}

FOLD_ATTR static uint32_t crc_pclmul_copy(uint32_t c, uint8_t *dst, const uint8_t *p, size_t n)
{
    return n < 64 ? crc_hw_copy(c, dst, p, n) : crc_pclmul_body(c, dst, p, n);
}

/* Both bring the 64-byte accesses to a cache-line boundary: of the loads,
 * or of the stores for the copy (split stores cost more than split loads:
 * 37 against 56 GB/s on 1 MiB). */
FOLD512_ATTR static uint32_t crc_vpclmul(uint32_t c, const uint8_t *p, size_t n)
{
    size_t h = (size_t)(-(uintptr_t)p & 63);
    return n < h + 256 ? crc_pclmul(c, p, n) : crc_vpclmul_body(c, NULL, p, n, h);
}

FOLD512_ATTR static uint32_t crc_vpclmul_copy(uint32_t c, uint8_t *dst, const uint8_t *p, size_t n)
{
    size_t h = (size_t)(-(uintptr_t)dst & 63);
    return n < h + 256 ? crc_pclmul_copy(c, dst, p, n) : crc_vpclmul_body(c, dst, p, n, h);
}
#endif

#if defined(SHM_HAVE_X86_FOLD)
/* 3 * LONG_BLOCK (where the three streams get their long blocks) if they
 * beat 128-bit folding by a tenth over 256 KiB (in L2: the timing is the
 * arithmetic's, not memory's), best of 5 timings of 2 calls each; SIZE_MAX
 * if they do not. Below that length the two are
 * within noise of each other. Half a millisecond, once per process. */
static size_t handover(int copy)
{
    static uint8_t src[256 << 10], dst[256 << 10];   /* racing inits write the same bytes: timing only */
    volatile uint32_t sink = 0;
    int64_t best[2] = {INT64_MAX, INT64_MAX};
    memset(src, 0x5a, sizeof src);   /* pages of its own (the zero page's aliases time differently) */
    for (int r = 0; r < 5; r++)
        for (int insn = 0; insn < 2; insn++) {
            int64_t t0 = shm_monotonic_ns();
            for (int k = 0; k < 2; k++)
                sink ^= copy ? (insn ? crc_hw_copy(sink, dst, src, sizeof src) : crc_pclmul_copy(sink, dst, src, sizeof src))
                             : (insn ? crc_hw(sink, src, sizeof src) : crc_pclmul(sink, src, sizeof src));
            int64_t t = shm_monotonic_ns() - t0;
            if (t < best[insn])
                best[insn] = t;
        }
    return best[1] * 10 < best[0] * 9 ? 3 * LONG_BLOCK : SIZE_MAX;
}
#endif

static void crc_init_once(void)
{
    if (__atomic_load_n(&path, __ATOMIC_ACQUIRE) >= 0)
        return;
    init_tables();
    int best = SHM_CRC32C_PATH_TABLE;
#if defined(SHM_HAVE_X86_CRC)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        best = SHM_CRC32C_PATH_INSN;
#if defined(SHM_HAVE_X86_FOLD)
    if (best && __builtin_cpu_supports("pclmul")) {
        k2048 = fold_constants(2048);
        k512 = fold_constants(512);
        k128 = fold_constants(128);
        for (int m = 1; m <= 31; m++)
            fold_tail[31 - m] = fold_constants(128 * (uint64_t)m);
        best = SHM_CRC32C_PATH_PCLMUL;
        /* __builtin_cpu_supports checks XCR0: the OS saves zmm state */
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vpclmulqdq"))
            best = SHM_CRC32C_PATH_VPCLMUL;
        else {
            insn_from = insn_from_cpu = handover(0);
            insn_copy_from = insn_copy_from_cpu = handover(1);
        }
    }
#endif
#elif defined(SHM_HAVE_ARM_CRC)
    best = SHM_CRC32C_PATH_INSN;
#endif
    cpu_path = best;
    /* release: the tables and constants written above are visible to whoever
     * sees path >= 0 */
    __atomic_store_n(&path, best, __ATOMIC_RELEASE);
}

int shm_crc32c_hardware(void)
{
    crc_init_once();
    return cpu_path >= SHM_CRC32C_PATH_INSN;
}

/* Tests (and benchmarks) hold every path to the same answers: limit < 0 only
 * asks which path is in use; otherwise the path becomes the best this CPU has
 * up to limit. Not meant to race with checksums in other threads (each call
 * of shm_crc32c reads the path once, so one would still be right). */
int shm_crc32c_path(int limit)
{
    crc_init_once();
    if (limit >= 0) {
#if defined(SHM_HAVE_X86_FOLD)
        /* a path asked for by its number runs at every length; above every path, init's choice */
        int automatic = limit > SHM_CRC32C_PATH_VPCLMUL;
        __atomic_store_n(&insn_from, automatic ? insn_from_cpu : SIZE_MAX, __ATOMIC_RELAXED);
        __atomic_store_n(&insn_copy_from, automatic ? insn_copy_from_cpu : SIZE_MAX, __ATOMIC_RELAXED);
#endif
        __atomic_store_n(&path, limit < cpu_path ? limit : cpu_path, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&path, __ATOMIC_RELAXED);
}

/* The length from which the 128-bit folding path hands over to the crc32
 * instruction (SIZE_MAX: never), for shm_crc32c (copy 0) or shm_crc32c_copy */
uint64_t shm_crc32c_handover(int copy)
{
    crc_init_once();
#if defined(SHM_HAVE_X86_FOLD)
    return copy ? insn_copy_from : insn_from;
#else
    return UINT64_MAX;
#endif
}

uint32_t shm_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
    crc_init_once();
    uint32_t c = ~crc;
    int use = __atomic_load_n(&path, __ATOMIC_RELAXED);
#if defined(SHM_HAVE_X86_FOLD)
    if (len >= FOLD_MIN && use >= SHM_CRC32C_PATH_PCLMUL && (use == SHM_CRC32C_PATH_VPCLMUL || len < insn_from))
        return ~(use == SHM_CRC32C_PATH_VPCLMUL && len >= FOLD512_MIN ? crc_vpclmul(c, data, len)
                                                                       : crc_pclmul(c, data, len));
#endif
#if defined(SHM_HAVE_X86_CRC) || defined(SHM_HAVE_ARM_CRC)
    if (use)
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
    int use = __atomic_load_n(&path, __ATOMIC_RELAXED);
#if defined(SHM_HAVE_X86_FOLD)
    if (len >= FOLD_MIN && use >= SHM_CRC32C_PATH_PCLMUL &&
        (use == SHM_CRC32C_PATH_VPCLMUL || len < insn_copy_from))
        return ~(use == SHM_CRC32C_PATH_VPCLMUL && len >= FOLD512_COPY_MIN ? crc_vpclmul_copy(~crc, dst, src, len)
                                                                       : crc_pclmul_copy(~crc, dst, src, len));
#endif
#if defined(SHM_HAVE_X86_CRC) || defined(SHM_HAVE_ARM_CRC)
    if (use)
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
