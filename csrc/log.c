/* log.c — the durable side of frames: what the persister takes from a ring,
 * and frames read back from segment files.
 *
 * Owns: scanning a ring's committed prefix for the persister (without
 * copying: the persister writes the ring bytes straight to the file), the
 * persisted/fsynced cursors and their wake-ups, and walking frames in a
 * linear buffer (bytes pread from a segment file) to read, seek and validate.
 * Must never: move a ring's head or tail, or trust a length it has not
 * bounded: segment bytes may be torn or corrupted.
 *
 * A segment file holds ring frames byte for byte, so a frame's commit word
 * (position ^ SHM_COMMIT_XOR) says where it belongs: file position =
 * position - segment base position, and a frame that does not name its own
 * position is torn or corrupt.
 *
 * Persister protocol (durable rings): the persister alone writes
 * persisted_pos and fsynced_pos. It copies only complete frames, so
 * persisted_pos is always a frame boundary <= the first uncommitted frame;
 * producers' make_room passes only frames below it (I1), so the bytes the
 * persister is writing out cannot change under it.
 */
#define _GNU_SOURCE
#include "shmlog.h"
#include "atomics.h"
#include "frame.h"

#include <string.h>

/* ------------------------------------------------------------ persister */

/* Index rows. Invariant (what readers and retention rely on): a row
 * (O, position, T) names a frame that starts at `position` and carries first
 * offset O, and T is the largest batch timestamp of every record of the
 * segment below O; rows are in increasing position, O and T never decrease.
 * T is carried across copy runs and recovery chunks in shm_index_state, so
 * it is the segment's maximum so far, never one run's (issue 11, defect 5:
 * a row holding one run's maximum let retention delete fresh records and
 * offsets_for_times start past the answer). A crash between two runs loses
 * nothing: the state is in the persister's memory and recovery recomputes it
 * from the last verified row (its T) and the frames after it. */
static void index_row(int64_t *rows, uint32_t *n, uint32_t max, int64_t offset, uint64_t pos,
                      int64_t ts, uint64_t every, struct shm_index_state *ix)
{
    if (pos < ix->next_pos || *n >= max)
        return;
    int64_t *r = rows + (uint64_t)(*n)++ * SHM_INDEX_FIELDS;
    r[0] = offset;
    r[1] = (int64_t)pos;
    r[2] = ts;
    ix->next_pos = pos + every;
}

/* a DATA frame raises the segment's maximum after its row is written */
static void note_timestamp(const struct shm_frame_header *fh, struct shm_index_state *ix)
{
    if (fh->kind != SHM_FRAME_DATA)
        return;
    int64_t ts = shm_batch_max_timestamp((const uint8_t *)(fh + 1));
    if (ts > ix->max_timestamp)
        ix->max_timestamp = ts;
}

int shm_persist_scan(const struct shm_ring *r, uint64_t from_pos, int64_t from_offset, uint64_t max_bytes,
                     uint64_t index_every, struct shm_index_state *ix, int64_t *index_rows,
                     uint32_t max_index, struct shm_persist_out *out)
{
    if (!r || r->magic != SHM_RING_HANDLE_MAGIC)
        return SHM_E_INVALID;
    const struct shm_ring_header *h = r->hdr;
    uint64_t p = from_pos, lap_end = from_pos + room_of(r, from_pos);
    /* acquire: frames below the tail we read are reserved; commits checked per frame */
    uint64_t tail = shm_load_acquire(&h->tail_pos);
    int64_t off = from_offset;
    out->frames = out->index_count = 0;
    out->slot = slot_of(r, from_pos);
    while (p < tail && p < lap_end) {
        const struct shm_frame_header *fh = FRAME(r, p);
        /* acquire: a matching commit makes the frame's bytes visible */
        if (shm_load_acquire(&fh->commit) != commit_word(p))
            break;
        uint64_t next;
        int64_t noff;
        if (frame_next(fh, p, room_of(r, p), off, &next, &noff) != SHM_OK) {
            if (out->frames == 0)
                return SHM_E_CORRUPT;
            break;
        }
        if (next - from_pos > max_bytes && out->frames > 0)
            break;
        if (fh->kind != SHM_FRAME_PAD) {
            index_row(index_rows, &out->index_count, max_index, frame_first_offset(fh, off), p,
                      ix->max_timestamp, index_every, ix);
            note_timestamp(fh, ix);
        }
        off = noff;
        p = next;
        out->frames++;
    }
    out->end_pos = p;
    out->end_offset = off;
    out->max_timestamp = ix->max_timestamp;
    return SHM_OK;
}

void shm_ring_publish_persisted(void *base, uint64_t pos)
{
    struct shm_ring_header *h = HDR(base);
    /* release: the file write happened before producers may reuse the space */
    shm_store_release(&h->persisted_pos, pos);
    shm_fence_seq_cst();   /* the store above precedes the waiter load (Dekker with wait_for_space) */
    if (shm_load_relaxed(&h->space_waiters))
        wake(&h->space_seq);
}

void shm_ring_publish_fsynced(void *base, uint64_t pos, int32_t err)
{
    struct shm_ring_header *h = HDR(base);
    shm_store_relaxed(&h->persist_errno, err);
    /* release: the fsync completed before anyone reads the new position */
    shm_store_release(&h->fsynced_pos, pos);
    shm_fence_seq_cst();   /* the store above precedes the waiter load */
    if (shm_load_relaxed(&h->durable_waiters))
        wake(&h->durable_seq);
}

/* The persister sleeps until a producer or a durable flush needs it, or
 * timeout_ns passes. hdrs: writable ring headers. */
int shm_ring_persist_wait(void *const *hdrs, uint32_t n, int64_t timeout_ns)
{
    uint32_t m = n < 128 ? n : 128;
    uint32_t *words[128] = {0}, vals[128] = {0};
    for (uint32_t i = 0; i < m; i++) {
        struct shm_ring_header *h = HDR(hdrs[i]);
        shm_fetch_add(&h->persist_waiters, 1);
        words[i] = &h->persist_seq;
        vals[i] = shm_load_acquire(&h->persist_seq);
    }
    int rc = shm_futex_waitv(words, vals, m, n > 128 && (timeout_ns < 0 || timeout_ns > 1000000)
                                                ? 1000000 : timeout_ns);
    for (uint32_t i = 0; i < m; i++)
        shm_fetch_sub(&HDR(hdrs[i])->persist_waiters, 1);
    return rc;
}

/* flush(durable=True): waits until fsynced_pos >= pos, waking the persister
 * so it fsyncs now rather than at its interval. SHM_E_TIMEOUT. */
int shm_ring_durable_wait(void *hdr, uint64_t pos, int64_t timeout_ns)
{
    struct shm_ring_header *h = HDR(hdr);
    int64_t deadline = timeout_ns >= 0 ? shm_monotonic_ns() + timeout_ns : -1;
    for (;;) {
        if (shm_load_acquire(&h->fsynced_pos) >= pos)
            return SHM_OK;
        if (shm_load_acquire(&h->deleted))
            return SHM_E_TOPIC_GONE;
        if (shm_load_acquire(&h->offline))     /* quarantined: the persister copies nothing more */
            return SHM_E_OFFLINE;
        shm_fetch_add(&h->durable_waiters, 1);
        uint32_t seq = shm_load_acquire(&h->durable_seq);
        wake(&h->persist_seq);
        int64_t slice = 100000000;   /* re-check every 100 ms (a persister may have died) */
        if (deadline >= 0) {
            int64_t left = deadline - shm_monotonic_ns();
            if (left <= 0) {
                shm_fetch_sub(&h->durable_waiters, 1);
                return shm_load_acquire(&h->fsynced_pos) >= pos ? SHM_OK : SHM_E_TIMEOUT;
            }
            if (left < slice)
                slice = left;
        }
        if (shm_load_acquire(&h->fsynced_pos) < pos)
            shm_futex_wait(&h->durable_seq, seq, slice);
        shm_fetch_sub(&h->durable_waiters, 1);
    }
}

/* ------------------------------------------------------------ linear buffers */

/* The frame at position p in buf, if its header is all there and names p. */
static const struct shm_frame_header *linear_frame(const uint8_t *buf, uint64_t len,
                                                   uint64_t buf_pos, uint64_t p, int *status)
{
    uint64_t o = p - buf_pos;
    if (p < buf_pos || o + SHM_FRAME_HEADER_BYTES > len) {
        *status = SHM_E_AGAIN;
        return NULL;
    }
    const struct shm_frame_header *fh = (const struct shm_frame_header *)(buf + o);
    if (fh->commit != commit_word(p)) {
        *status = SHM_E_CORRUPT;
        return NULL;
    }
    *status = SHM_OK;
    return fh;
}

/* The complete frame at cur->pos inside buf, checked to continue the log
 * (baseOffset is outside the CRC): SHM_OK with *fhp, *next and *noff; 1 for a
 * PAD (cur moved past it); SHM_E_AGAIN when buf has no complete frame there;
 * SHM_E_CORRUPT. */
static int linear_take(const uint8_t *buf, uint64_t len, uint64_t buf_pos, struct shm_cursor *cur,
                       const struct shm_frame_header **fhp, uint64_t *next, int64_t *noff)
{
    uint64_t p = cur->pos;
    int st;
    const struct shm_frame_header *fh = linear_frame(buf, len, buf_pos, p, &st);
    if (!fh)
        return st;
    uint64_t room = len - (p - buf_pos);
    if (shm_align8(fh->length) > room)
        return SHM_E_AGAIN;
    if (frame_next(fh, p, room, cur->next_offset, next, noff) != SHM_OK)
        return SHM_E_CORRUPT;
    if (fh->kind == SHM_FRAME_PAD) {
        cur->pos = *next;
        return 1;
    }
    int64_t first = frame_first_offset(fh, cur->next_offset);
    if ((cur->expect_base >= 0 && first != cur->expect_base) || *noff <= first)
        return SHM_E_CORRUPT;
    *fhp = fh;
    return SHM_OK;
}

/* Decodes frames from cur->pos (inside buf) into out, like shm_ring_read
 * but from bytes of a segment file, with the same step for each DATA frame
 * (frame.h decode_frame) and the same return convention: the number of
 * records decoded (maybe 0: only gaps/pads, or a compressed batch handed
 * over alone: out->compressed), SHM_E_AGAIN (no complete frame at cur->pos:
 * read a larger chunk), SHM_E_CORRUPT (cur->pos stays on the bad frame; an
 * error after records were decoded ends the read early instead). */
int shm_frames_read(const uint8_t *buf, uint64_t len, uint64_t buf_pos, struct shm_cursor *cur,
                    int verify_crc, struct shm_records_out *out)
{
    out->count = out->frames = out->gaps = out->compressed = 0;
    out->bytes_used = len;         /* decoded rows point into buf[0:len], whatever ends the walk */
    int progressed = 0;
    while (out->count < out->max_records) {
        const struct shm_frame_header *fh;
        uint64_t next;
        int64_t noff;
        int st = linear_take(buf, len, buf_pos, cur, &fh, &next, &noff);
        if (st == SHM_E_AGAIN)
            break;                                   /* partial: needs more bytes */
        if (st < 0)
            return out->count ? (int)out->count : st;
        if (st == 1) {
            progressed = 1;
            continue;
        }
        if (fh->kind == SHM_FRAME_GAP) {
            if (noff > cur->next_offset)
                cur->next_offset = noff;
            cur->expect_base = noff;
            out->gaps++;
            cur->pos = next;
            progressed = 1;
            continue;
        }
        const uint8_t *batch = (const uint8_t *)(fh + 1);
        int rc = decode_frame(batch, fh->length - SHM_FRAME_HEADER_BYTES, (uint64_t)(batch - buf), next,
                              verify_crc, cur, out);
        if (rc < 0)
            return out->count ? (int)out->count : rc;
        if (rc == READ_COMPRESSED)
            return 0;
        if (rc == READ_PARTIAL || rc == READ_STOP)
            break;
        progressed = 1;
    }
    return (out->count || progressed) ? (int)out->count : SHM_E_AGAIN;
}

/* shm_ring_read_batches for bytes of a segment file: from cur->pos (inside
 * buf), moves the bodies of complete DATA frames (whole batches) to the front
 * of buf, back to back, dropping frame headers, PAD and GAP frames and
 * batches wholly below cur->next_offset. Only bytes already walked are
 * overwritten. Returns, as shm_ring_read_batches does, the number of batches
 * (out->frames; out->bytes_used bytes; maybe 0: only gaps or pads),
 * SHM_E_AGAIN (no complete frame at cur->pos: read a larger chunk),
 * SHM_E_CORRUPT (nothing taken; cur->pos stays on the bad frame). */
int shm_frames_read_batches(uint8_t *buf, uint64_t len, uint64_t buf_pos, struct shm_cursor *cur,
                            struct shm_records_out *out)
{
    uint64_t used = 0;
    int progressed = 0;
    out->count = out->frames = out->gaps = out->compressed = out->batch_start = 0;
    for (;;) {
        const struct shm_frame_header *fh;
        uint64_t next;
        int64_t noff;
        int st = linear_take(buf, len, buf_pos, cur, &fh, &next, &noff);
        if (st == SHM_E_AGAIN)
            break;                                   /* partial: needs more bytes */
        if (st < 0)
            goto corrupt;
        if (st == 1) {
            progressed = 1;
            continue;
        }
        cur->expect_base = noff;
        cur->pos = next;
        progressed = 1;
        if (fh->kind == SHM_FRAME_GAP) {
            if (noff > cur->next_offset)
                cur->next_offset = noff;
            out->gaps++;
            continue;
        }
        if (noff - 1 < cur->next_offset)
            continue;                                /* all below what the caller wants */
        uint64_t blen = fh->length - SHM_FRAME_HEADER_BYTES;
        memmove(buf + used, fh + 1, blen);           /* used <= p - buf_pos: walked bytes only */
        used += blen;
        out->frames++;
        cur->next_offset = noff;
    }
    out->bytes_used = used;
    return progressed ? (int)out->frames : SHM_E_AGAIN;
corrupt:
    out->bytes_used = used;
    return progressed ? (int)out->frames : SHM_E_CORRUPT;
}

/* From cur->pos (a frame start inside buf), moves cur to the frame holding
 * offset (or the first frame after it). Every frame walked must carry the
 * offset that follows the one before it, the first one cur->expect_base
 * (when >= 0: the offset of the index row the walk starts from), so a
 * damaged index row or a damaged baseOffset (outside the CRC) is
 * SHM_E_CORRUPT, never a seek that lands past the offset asked for. SHM_OK:
 * found (cur->expect_base: the verified first offset of that frame);
 * SHM_E_AGAIN: reached the end of buf (cur->pos is where to continue);
 * SHM_E_CORRUPT (cur->pos: the bad frame). */
int shm_frames_seek(const uint8_t *buf, uint64_t len, uint64_t buf_pos, int64_t offset,
                    struct shm_cursor *cur)
{
    for (;;) {
        uint64_t p = cur->pos;
        int st;
        const struct shm_frame_header *fh = linear_frame(buf, len, buf_pos, p, &st);
        if (!fh)
            return st;
        uint64_t next;
        int64_t noff;
        uint64_t room = len - (p - buf_pos);
        if (shm_align8(fh->length) > room)
            return SHM_E_AGAIN;
        if (frame_next(fh, p, room, cur->next_offset, &next, &noff) != SHM_OK)
            return SHM_E_CORRUPT;
        if (fh->kind != SHM_FRAME_PAD) {
            int64_t first = frame_first_offset(fh, cur->next_offset);
            if ((cur->expect_base >= 0 && first != cur->expect_base) || noff < first ||
                (fh->kind == SHM_FRAME_DATA && noff == first))
                return SHM_E_CORRUPT;
            if (noff > offset) {
                cur->next_offset = offset;
                cur->expect_base = first;
                return SHM_OK;
            }
            cur->expect_base = noff;
        }
        cur->pos = next;
        cur->next_offset = noff;
    }
}

/* Recovery: validates frames from buf_pos (a frame start): each names its
 * position, has a sane length, a valid CRC (DATA) and the offsets that
 * follow the previous frame. Stops at the first frame that fails, and says
 * why; builds index rows on the way. */
int shm_frames_validate(const uint8_t *buf, uint64_t len, uint64_t buf_pos, int64_t expect_offset,
                        uint64_t index_every, struct shm_index_state *ix, int64_t *index_rows,
                        uint32_t max_index, uint32_t *index_count, struct shm_scan_out *out)
{
    uint64_t p = buf_pos;
    int64_t off = expect_offset;
    out->frames = 0;
    out->stop_reason = SHM_SCAN_END;
    out->bad_frame_len = 0;
    for (;;) {
        uint64_t o = p - buf_pos;
        if (o == len)
            break;
        if (o + SHM_FRAME_HEADER_BYTES > len) {
            out->stop_reason = SHM_SCAN_TORN;
            break;
        }
        const struct shm_frame_header *fh = (const struct shm_frame_header *)(buf + o);
        uint64_t room = len - o;
        if (fh->commit != commit_word(p) || fh->length < SHM_FRAME_HEADER_BYTES ||
            (fh->kind != SHM_FRAME_DATA && fh->kind != SHM_FRAME_PAD && fh->kind != SHM_FRAME_GAP)) {
            out->stop_reason = SHM_SCAN_BAD_HEADER;
            break;
        }
        out->bad_frame_len = fh->length;
        if (shm_align8(fh->length) > room) {
            out->stop_reason = SHM_SCAN_TORN;
            break;
        }
        uint64_t next;
        int64_t noff;
        if (frame_next(fh, p, room, off, &next, &noff) != SHM_OK) {
            out->stop_reason = SHM_SCAN_BAD_BODY;
            break;
        }
        const uint8_t *body = (const uint8_t *)(fh + 1);
        if (fh->kind == SHM_FRAME_DATA &&
            shm_batch_validate(body, fh->length - SHM_FRAME_HEADER_BYTES) != SHM_OK) {
            out->stop_reason = SHM_SCAN_BAD_BODY;
            break;
        }
        if (fh->kind != SHM_FRAME_PAD) {
            int64_t first = frame_first_offset(fh, off);
            if ((off >= 0 && first != off) || noff < first) {
                out->stop_reason = SHM_SCAN_OFFSET_JUMP;
                break;
            }
            index_row(index_rows, index_count, max_index, first, p, ix->max_timestamp, index_every, ix);
            note_timestamp(fh, ix);
        }
        off = noff;
        p = next;
        out->frames++;
        out->bad_frame_len = 0;
    }
    out->end_pos = p;
    out->end_offset = off;
    out->max_timestamp = ix->max_timestamp;
    return SHM_OK;
}
