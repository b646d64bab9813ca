/* frame.h — helpers shared by ring.c (frames in the ring) and log.c (the same
 * frames in a linear buffer: a segment file). Internal to csrc/.
 * Owns: slot arithmetic and "where does this frame end, which offset follows".
 * Must never: read past the room it is given. */
#ifndef SHMLOG_FRAME_H
#define SHMLOG_FRAME_H

#include "shmlog.h"
#include "atomics.h"
#include <string.h>

#define HDR(b) ((struct shm_ring_header *)(b))
#define DATA(b) ((uint8_t *)(b) + SHM_RING_HEADER_BYTES)

static inline uint64_t commit_word(uint64_t pos) { return pos ^ (uint64_t)SHM_COMMIT_XOR; }

/* Slots count from the ring's base position, so every ring (a recovered one
 * too) starts a lap at slot 0. Reservations never leave exactly 8 bytes before
 * the end (I6), so every frame start has room for a frame header and every
 * byte of the log lies inside a self-describing frame, in the ring and on disk. */
/* Every index comes from the process-local handle (struct shm_ring), never
 * from the shared header: slot_of is < capacity whatever p is, so a frame
 * header at FRAME(r, p) is always inside the mapping (I6 keeps 16 bytes
 * before the end for a sane writer; readers check lengths against room_of). */
static inline uint64_t slot_of(const struct shm_ring *r, uint64_t p)
{
    return (p - r->base_position) & r->mask;
}
static inline uint64_t room_of(const struct shm_ring *r, uint64_t p)
{
    return r->capacity - slot_of(r, p);
}
/* The frame header for position p: at slot_of(r, p) for every position a
 * sane ring holds (8-aligned, at least 16 bytes before the end, I6). A
 * crafted position (unaligned, or 8 bytes before the end) is moved down to
 * an aligned slot with room for a header, so even then a header access stays
 * inside the mapping; its commit word (or its length against room_of) then
 * fails every check. Moving down never adds room: anything up to room_of(r, p)
 * bytes from the header is still inside the mapping. */
static inline uint64_t frame_slot(const struct shm_ring *r, uint64_t p)
{
    uint64_t s = slot_of(r, p) & ~(uint64_t)(SHM_FRAME_ALIGN - 1);
    uint64_t last = r->capacity - SHM_FRAME_HEADER_BYTES;
    return s <= last ? s : last;
}
#define FRAME(r, p) ((struct shm_frame_header *)((r)->data + frame_slot((r), (p))))

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
/* Is this RecordBatch's records section compressed? (the codec bits sit in the
 * low byte of the big-endian attributes) */
static inline int batch_compressed(const uint8_t *batch)
{
    return (batch[SHM_RB_ATTRIBUTES + 1] & SHM_RB_ATTR_CODEC_MASK) != 0;
}

static inline int64_t frame_first_offset(const struct shm_frame_header *fh, int64_t cur_offset)
{
    const uint8_t *body = (const uint8_t *)(fh + 1);
    if (fh->kind == SHM_FRAME_DATA)
        return shm_batch_base_offset(body);
    if (fh->kind == SHM_FRAME_GAP)
        return ((const struct shm_gap_body *)body)->base_offset;
    return cur_offset;
}

/* The decoding readers' step for one complete DATA frame, shared by
 * shm_ring_read (ring.c) and shm_frames_read (log.c): batch[0:blen] is its
 * RecordBatch, at byte `at` of the caller's buffer, and next_pos is where
 * the frame ends. Checks the CRC (verify_crc) and that the batch continues
 * the log, then:
 *   READ_PASSED     all its records are below cur->next_offset: passed;
 *   READ_TAKEN      its records decoded into out from cur->next_offset, passed;
 *   READ_PARTIAL    more records than out has room for: those that fit are
 *                   decoded, the cursor stays on the frame with next_offset
 *                   after the last one taken (end the walk);
 *   READ_STOP       left whole for the next read (out too full for it, or
 *                   compressed after records): end the walk;
 *   READ_COMPRESSED a compressed batch handed over alone, undecoded, at
 *                   buf[batch_start:bytes_used], the cursor ON its frame (the
 *                   caller inflates it, decodes from cur->next_offset and
 *                   passes the frame once it took the last record: a caller
 *                   that ignores it reads the same frame again);
 *   SHM_E_CORRUPT   nothing of it is in out, the cursor on it. */
/* read_committed: is this transactional batch (first offset `first`) one of
 * an aborted transaction? (struct shm_txn_abort says when) */
static inline int txn_aborted(const uint8_t *batch, int64_t first, const struct shm_cursor *cur)
{
    uint64_t pid_be;
    uint16_t epoch_be;
    memcpy(&pid_be, batch + SHM_RB_PRODUCER_ID, 8);
    memcpy(&epoch_be, batch + SHM_RB_PRODUCER_EPOCH, 2);
    int64_t pid = (int64_t)__builtin_bswap64(pid_be);
    int32_t epoch = (int16_t)__builtin_bswap16(epoch_be);
    for (int64_t i = 0; i < cur->n_aborted; i++) {
        const struct shm_txn_abort *a = &cur->aborted[i];
        if (a->producer_id == pid && a->first_offset <= first && first <= a->last_offset && epoch <= a->max_epoch)
            return 1;
    }
    return 0;
}

/* decode_frame's verify: nothing, the whole RecordBatch check (magic, length,
 * CRC-32C: shm_batch_validate), or its shape only (the caller's copy summed
 * and matched the CRC in the same pass: ring.c take_frame) */
#define VERIFY_NONE 0
#define VERIFY_CRC 1
#define VERIFY_SHAPE 2
static inline int batch_shape_ok(const uint8_t *batch, uint64_t blen)
{
    uint32_t len_be;
    memcpy(&len_be, batch + SHM_RB_LENGTH, 4);
    return batch[SHM_RB_MAGIC] == 2 && (uint64_t)__builtin_bswap32(len_be) + 12 == blen;
}

#define READ_PASSED 0
#define READ_TAKEN 1
#define READ_PARTIAL 2
#define READ_STOP 3
#define READ_COMPRESSED 4
static inline int decode_frame(const uint8_t *batch, uint64_t blen, uint64_t at, uint64_t next_pos,
                               int verify_crc, struct shm_cursor *cur, struct shm_records_out *out)
{
    if (blen < SHM_BATCH_HEADER_BYTES ||
        (verify_crc == VERIFY_CRC && shm_batch_validate(batch, blen) != SHM_OK) ||
        (verify_crc == VERIFY_SHAPE && !batch_shape_ok(batch, blen)))
        return SHM_E_CORRUPT;
    int64_t first = shm_batch_base_offset(batch);
    int64_t last = first + shm_batch_last_delta(batch);
    /* baseOffset is outside Kafka's CRC: it must continue the previous frame */
    if ((cur->expect_base >= 0 && first != cur->expect_base) || last < first)
        return SHM_E_CORRUPT;
    if (last < cur->next_offset) {
        cur->expect_base = last + 1;
        cur->pos = next_pos;
        return READ_PASSED;
    }
    uint8_t attrs = batch[SHM_RB_ATTRIBUTES + 1];
    if (cur->read_committed && first >= cur->stable_end)
        return READ_STOP;                        /* past the last stable offset: not yet */
    if ((attrs & SHM_RB_ATTR_CONTROL) ||
        (cur->read_committed && (attrs & SHM_RB_ATTR_TRANSACTIONAL) && txn_aborted(batch, first, cur))) {
        /* a transaction marker is never a record a reader sees; an aborted
         * transaction's batch is not, for read_committed: passed whole */
        cur->next_offset = last + 1;
        cur->expect_base = last + 1;
        cur->pos = next_pos;
        return READ_PASSED;
    }
    if (batch_compressed(batch)) {
        if (out->count)
            return READ_STOP;
        out->compressed = 1;
        out->frames = 1;
        out->batch_start = (uint32_t)at;
        out->bytes_used = at + blen;
        return READ_COMPRESSED;
    }
    if (last - first >= (int64_t)(out->max_records - out->count) && out->count)
        return READ_STOP;                        /* take it whole next time */
    uint32_t before = out->count;
    int n = shm_batch_decode(batch, blen, (int64_t)at, cur->next_offset, out);
    if (n == SHM_E_BUFFER_SMALL) {
        cur->next_offset = out->rows[(uint64_t)(out->count - 1) * SHM_ROW_FIELDS + SHM_ROW_OFFSET] + 1;
        out->frames++;
        return READ_PARTIAL;
    }
    if (n < 0) {
        out->count = before;
        return SHM_E_CORRUPT;
    }
    out->frames++;
    cur->next_offset = last + 1;
    cur->expect_base = last + 1;
    cur->pos = next_pos;
    return READ_TAKEN;
}

#endif
