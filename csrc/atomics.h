/* atomics.h — the only place shmlog spells a memory order.
 *
 * Owns: thin wrappers over GCC __atomic builtins for fields that live in
 * shared memory, plus the 16-byte pair CAS. Must never: be bypassed by a plain
 * load or store of a cross-process field elsewhere in csrc/.
 * Every caller says, in one sentence at the call site, what its barrier orders.
 */
#ifndef SHMLOG_ATOMICS_H
#define SHMLOG_ATOMICS_H

#include <stdint.h>

#define shm_load_relaxed(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#define shm_load_acquire(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define shm_store_relaxed(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define shm_store_release(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define shm_store_seq_cst(p, v)  __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define shm_fetch_add(p, v)      __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define shm_fetch_sub(p, v)      __atomic_fetch_sub((p), (v), __ATOMIC_SEQ_CST)
#define shm_fence_acquire()      __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define shm_fence_seq_cst()      __atomic_thread_fence(__ATOMIC_SEQ_CST)

static inline int shm_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

static inline int shm_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

/* A (position, offset) pair that moves as one: 16 bytes, 16-aligned.
 * __sync_bool_compare_and_swap on unsigned __int128 compiles to
 * `lock cmpxchg16b` with -mcx16 (a full barrier) and is lock-free; the
 * __atomic_* 16-byte forms would route through libatomic instead. */
typedef unsigned __int128 shm_u128;

static inline shm_u128 shm_pair(uint64_t lo, uint64_t hi)
{
    return ((shm_u128)hi << 64) | lo;
}

static inline int shm_cas_pair(uint64_t *pair, uint64_t exp_lo, uint64_t exp_hi,
                               uint64_t new_lo, uint64_t new_hi)
{
    return __sync_bool_compare_and_swap((shm_u128 *)pair, shm_pair(exp_lo, exp_hi),
                                        shm_pair(new_lo, new_hi));
}

/* A consistent snapshot of a pair without writing (read-only mappings).
 * The offset half never decreases, so two equal reads of it around the read
 * of the position mean every pair stored in between carried that same
 * offset; the position read belongs to one of them, so (position, offset)
 * is a pair that really existed. Acquire on each load keeps the three loads
 * in program order. */
static inline void shm_pair_snapshot(const uint64_t *pair, uint64_t *lo, uint64_t *hi)
{
    for (;;) {
        uint64_t h1 = __atomic_load_n(&pair[1], __ATOMIC_ACQUIRE);
        uint64_t l = __atomic_load_n(&pair[0], __ATOMIC_ACQUIRE);
        uint64_t h2 = __atomic_load_n(&pair[1], __ATOMIC_ACQUIRE);
        if (h1 == h2) { *lo = l; *hi = h1; return; }
    }
}

static inline void shm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif
