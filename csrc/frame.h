/* frame.h — helpers shared by ring.c (frames in the ring) and log.c (the same
 * frames in a linear buffer: a segment file). Internal to csrc/.
 * Owns: slot arithmetic and "where does this frame end, which offset follows".
 * Must never: read past the room it is given. */
#ifndef SHMLOG_FRAME_H
#define SHMLOG_FRAME_H

#include "shmlog.h"
#include "atomics.h"

#define HDR(b) ((struct shm_ring_header *)(b))
#define DATA(b) ((uint8_t *)(b) + SHM_RING_HEADER_BYTES)

static inline uint64_t commit_word(uint64_t pos) { return pos ^ (uint64_t)SHM_COMMIT_XOR; }

/* Slots count from the ring's base position, so every ring (a recovered one
 * too) starts a lap at slot 0. Reservations never leave exactly 8 bytes before
 * the end (I6), so every frame start has room for a frame header and every
 * byte of the log lies inside a self-describing frame, in the ring and on disk. */
static inline uint64_t slot_of(const struct shm_ring_header *h, uint64_t p)
{
    return (p - h->base_position) & (h->capacity - 1);
}
static inline uint64_t room_of(const struct shm_ring_header *h, uint64_t p)
{
    return h->capacity - slot_of(h, p);
}
#define FRAME(h, p) ((struct shm_frame_header *)(DATA(h) + slot_of((h), (p))))

/* For the complete frame fh at p with `room` bytes available from p: the
 * position and offset that follow it. SHM_E_CORRUPT when its length or kind
 * is impossible. cur_offset is the offset expected at p (PAD keeps it). */
static inline int frame_next(const struct shm_frame_header *fh, uint64_t p, uint64_t room,
                             int64_t cur_offset, uint64_t *next_pos, int64_t *next_offset)
{
    uint32_t len = fh->length;
    if (len < SHM_FRAME_HEADER_BYTES || shm_align8(len) > room)
        return SHM_E_CORRUPT;
    *next_pos = p + shm_align8(len);
    const uint8_t *body = (const uint8_t *)(fh + 1);
    switch (fh->kind) {
    case SHM_FRAME_PAD:
        *next_offset = cur_offset;
        return SHM_OK;
    case SHM_FRAME_GAP:
        if (len < SHM_FRAME_HEADER_BYTES + sizeof(struct shm_gap_body))
            return SHM_E_CORRUPT;
        *next_offset = ((const struct shm_gap_body *)body)->base_offset +
                       ((const struct shm_gap_body *)body)->count;
        return SHM_OK;
    case SHM_FRAME_DATA:
        if (len < SHM_FRAME_HEADER_BYTES + SHM_BATCH_HEADER_BYTES)
            return SHM_E_CORRUPT;
        *next_offset = shm_batch_base_offset(body) + shm_batch_last_delta(body) + 1;
        return SHM_OK;
    }
    return SHM_E_CORRUPT;
}

/* Bumps a futex word and wakes every process sleeping on it. */
static inline void wake(uint32_t *seq)
{
    shm_fetch_add(seq, 1);
    shm_futex_wake(seq);
}

/* first offset a complete frame carries (PAD: none, returns cur_offset) */
static inline int64_t frame_first_offset(const struct shm_frame_header *fh, int64_t cur_offset)
{
    const uint8_t *body = (const uint8_t *)(fh + 1);
    if (fh->kind == SHM_FRAME_DATA)
        return shm_batch_base_offset(body);
    if (fh->kind == SHM_FRAME_GAP)
        return ((const struct shm_gap_body *)body)->base_offset;
    return cur_offset;
}

#endif
