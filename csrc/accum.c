/* accum.c — the asynchronous producer's batch being filled, in process memory.
 *
 * Owns: struct shm_accum: the columns (values, keys, header sections and
 * their lengths) of the records produce() has queued for one partition,
 * grown by realloc, and the bound that keeps them ONE frame: a record that
 * would take the batch past max_count records or max_bytes (an upper bound
 * of its encoded records section) is refused, and so is any record once
 * the batch is sealed. Must never: touch shared memory (the batch goes to a
 * ring through shm_send_batch / shm_send_raw, ring.c), block, or use errno.
 *
 * Thread safety comes from the caller: the shmx_* functions run with the
 * GIL held (the express tier of shmlog/_build.py), so an add and a seal are
 * each atomic for Python threads. A thread holding a stale pointer to a
 * sealed batch gets SHM_E_AGAIN and takes the slow path.
 *
 * Memory: shm_accum_new mallocs; shm_accum_free (cffi's ffi.gc) frees. A
 * failed realloc leaves the batch as it was and returns SHM_E_NOSPACE.
 */
#include "shmlog.h"

#include <stdlib.h>
#include <string.h>

#define REC_BOUND 32   /* a record's framing in a v2 batch is at most this (varints, attributes) */

struct shm_accum *shm_accum_new(uint32_t max_count, uint64_t max_bytes)
{
    struct shm_accum *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->max_count = max_count ? max_count : 1;
    a->max_bytes = max_bytes;
    return a;
}

void shm_accum_free(struct shm_accum *a)
{
    if (!a)
        return;
    free(a->vals); free(a->vlens); free(a->keys); free(a->klens); free(a->hdrs); free(a->hlens);
    free(a);
}

static int grow_bytes(uint8_t **p, uint64_t *cap, uint64_t need)
{
    if (need <= *cap)
        return 0;
    uint64_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *q = realloc(*p, n);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* Makes room for one more row in every lens array in use. */
static int grow_rows(struct shm_accum *a)
{
    if (a->count < a->rows_cap)
        return 0;
    uint32_t n = a->rows_cap ? a->rows_cap * 2 : 256;
    int64_t *v = realloc(a->vlens, n * sizeof *v);
    if (!v)
        return -1;
    a->vlens = v;
    if (a->klens) {
        int64_t *k = realloc(a->klens, n * sizeof *k);
        if (!k)
            return -1;
        a->klens = k;
    }
    if (a->hlens) {
        int64_t *h = realloc(a->hlens, n * sizeof *h);
        if (!h)
            return -1;
        a->hlens = h;
    }
    a->rows_cap = n;
    return 0;
}

/* A lens array started at the first record that needs it: the rows before get fill. */
static int start_column(struct shm_accum *a, int64_t **lens, int64_t fill)
{
    int64_t *l = malloc((a->rows_cap ? a->rows_cap : 1) * sizeof *l);
    if (!l)
        return -1;
    for (uint32_t i = 0; i < a->count; i++)
        l[i] = fill;
    *lens = l;
    return 0;
}

int64_t shmx_accum_add_full(struct shm_accum *a, const uint8_t *v, int64_t vlen, const uint8_t *k,
                            int64_t klen, const uint8_t *h, int64_t hlen)
{
    if (a->sealed)
        return SHM_E_AGAIN;
    if (vlen < -1 || klen < -1 || (h && hlen < 1))
        return SHM_E_INVALID;
    uint64_t size = REC_BOUND + (uint64_t)(vlen > 0 ? vlen : 0) + (uint64_t)(klen > 0 ? klen : 0) +
                    (uint64_t)(h ? hlen : 1);
    if (a->count >= a->max_count || a->bytes + size > a->max_bytes)
        return a->count ? SHM_E_FULL : SHM_E_TOO_LARGE;
    if (grow_rows(a) != 0)
        return SHM_E_NOSPACE;
    if (klen >= 0 && !a->klens && start_column(a, &a->klens, -1) != 0)
        return SHM_E_NOSPACE;
    if (h && !a->hlens) {
        if (start_column(a, &a->hlens, 1) != 0 || grow_bytes(&a->hdrs, &a->hcap, a->count + 1) != 0)
            return SHM_E_NOSPACE;
        memset(a->hdrs, 0, a->count);           /* one empty headers section (count 0) each */
        a->hlen = a->count;
    }
    if (vlen > 0 && grow_bytes(&a->vals, &a->vcap, a->vlen + (uint64_t)vlen) != 0)
        return SHM_E_NOSPACE;
    if (klen > 0 && grow_bytes(&a->keys, &a->kcap, a->klen + (uint64_t)klen) != 0)
        return SHM_E_NOSPACE;
    if (a->hlens && grow_bytes(&a->hdrs, &a->hcap, a->hlen + (uint64_t)(h ? hlen : 1)) != 0)
        return SHM_E_NOSPACE;
    /* every allocation succeeded: nothing below can fail */
    uint32_t i = a->count;
    if (vlen > 0) {
        memcpy(a->vals + a->vlen, v, (size_t)vlen);
        a->vlen += (uint64_t)vlen;
    }
    a->vlens[i] = vlen;
    if (a->klens) {
        if (klen > 0) {
            memcpy(a->keys + a->klen, k, (size_t)klen);
            a->klen += (uint64_t)klen;
        }
        a->klens[i] = klen;
    }
    if (a->hlens) {
        if (h) {
            memcpy(a->hdrs + a->hlen, h, (size_t)hlen);
            a->hlen += (uint64_t)hlen;
            a->hlens[i] = hlen;
        } else {
            a->hdrs[a->hlen++] = 0;
            a->hlens[i] = 1;
        }
    }
    a->bytes += size;
    a->count = i + 1;
    return i;
}

/* The express path: a value without key or headers. Returns its index in the batch. */
int64_t shmx_accum_add(struct shm_accum *a, const uint8_t *v, int64_t vlen)
{
    uint64_t size = REC_BOUND + 1 + (uint64_t)vlen;
    if (a->sealed || vlen < 0 || a->count + 1 >= a->max_count || a->bytes + size >= a->max_bytes)
        return SHM_E_AGAIN;    /* the last record of a batch goes the slow way (it closes the batch) */
    uint32_t i = a->count;
    if (i >= a->rows_cap || a->klens || a->hlens || a->vlen + (uint64_t)vlen > a->vcap)
        return shmx_accum_add_full(a, v, vlen, NULL, -1, NULL, -1);
    /* the common case: room in every array, no key or header column to fill */
    memcpy(a->vals + a->vlen, v, (size_t)vlen);
    a->vlen += (uint64_t)vlen;
    a->vlens[i] = vlen;
    a->bytes += size;
    a->count = i + 1;
    return i;
}

/* Seals the batch (no add succeeds after this); returns its record count. */
uint32_t shmx_accum_seal(struct shm_accum *a)
{
    a->sealed = 1;
    return a->count;
}

/* Points in at the sealed batch's columns. */
void shm_accum_batch_in(const struct shm_accum *a, struct shm_batch_in *in, int64_t timestamp_ms)
{
    in->count = a->count;
    in->values = a->vals;
    in->value_lens = a->vlens;
    in->keys = a->klens ? a->keys : NULL;
    in->key_lens = a->klens;
    in->headers = a->hlens ? a->hdrs : NULL;
    in->header_lens = a->hlens;
    in->timestamp_ms = timestamp_ms;
}
