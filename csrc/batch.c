/* batch.c — Kafka RecordBatch v2: encode, validate, decode; murmur2.
 *
 * Owns: the byte format every shmlog frame body uses in the ring, on disk and
 * on the wire (Kafka's RecordBatch v2: big-endian 61-byte header, CRC-32C over
 * attributes..end, zig-zag varint records with keys, values and headers), and
 * Kafka's murmur2 key hash. Must never: read outside [batch, batch+len) —
 * every length read from the input is bounds-checked before use, because the
 * input may be a torn, corrupted or hostile frame — or touch shared-memory
 * cursors (ring.c does that).
 *
 *   offset  field                  size
 *        0  baseOffset             int64
 *        8  batchLength            int32   bytes after this field
 *       12  partitionLeaderEpoch   int32
 *       16  magic                  int8    = 2
 *       17  crc                    uint32  CRC-32C of bytes 21..end
 *       21  attributes             int16   bits 0-2 compression, 3 timestamp
 *                                          type, 4 transactional, 5 control
 *       23  lastOffsetDelta        int32
 *       27  baseTimestamp          int64
 *       35  maxTimestamp           int64
 *       43  producerId             int64
 *       51  producerEpoch          int16
 *       53  baseSequence           int32
 *       57  recordCount            int32
 *       61  records...
 */
#include "shmlog.h"

#include <string.h>

/* field offsets and attribute bits: SHM_RB_* in shmlog.h */

static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(uint8_t *p, uint32_t v) { v = __builtin_bswap32(v); memcpy(p, &v, 4); }
static inline void put_be64(uint8_t *p, uint64_t v) { v = __builtin_bswap64(v); memcpy(p, &v, 8); }
static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get_be32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
static inline uint64_t get_be64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v); }

static inline uint32_t varint_size(int64_t n)
{
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    uint32_t s = 1;
    while (z >= 0x80) { z >>= 7; s++; }
    return s;
}

static inline uint8_t *put_varint(uint8_t *p, int64_t n)
{
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    while (z >= 0x80) { *p++ = (uint8_t)(z | 0x80); z >>= 7; }
    *p++ = (uint8_t)z;
    return p;
}

/* Reads a zig-zag varint of at most 10 bytes from [*pp, end). 0 on success. */
static inline int get_varint(const uint8_t **pp, const uint8_t *end, int64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t z = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end)
            return -1;
        uint8_t b = *p++;
        z |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
            return 0;
        }
    }
    return -1;
}

static inline int64_t rec_len(const int64_t *lens, uint32_t i) { return lens ? lens[i] : -1; }

/* body of record i without its leading length varint */
static inline int64_t record_body_size(const struct shm_batch_in *in, uint32_t i)
{
    int64_t k = rec_len(in->key_lens, i), v = in->value_lens[i];
    int64_t h = in->header_lens ? in->header_lens[i] : 1;
    return 1 + 1 + varint_size(i) + varint_size(k) + (k > 0 ? k : 0) + varint_size(v) +
           (v > 0 ? v : 0) + h;
}

int64_t shm_batch_encoded_size(const struct shm_batch_in *in)
{
    if (in->count == 0)
        return SHM_E_INVALID;
    int64_t total = SHM_BATCH_HEADER_BYTES;
    for (uint32_t i = 0; i < in->count; i++) {
        if (in->value_lens[i] < -1 || rec_len(in->key_lens, i) < -1 ||
            (in->header_lens && in->header_lens[i] < 1))
            return SHM_E_INVALID;
        /* bound each part first: the sums below then cannot overflow */
        if (in->value_lens[i] > (int64_t)UINT32_MAX || rec_len(in->key_lens, i) > (int64_t)UINT32_MAX ||
            (in->header_lens && in->header_lens[i] > (int64_t)UINT32_MAX))
            return SHM_E_TOO_LARGE;
        int64_t body = record_body_size(in, i);
        total += varint_size(body) + body;
        if (total > (int64_t)UINT32_MAX)
            return SHM_E_TOO_LARGE;
    }
    return total;
}

int64_t shm_batch_encode(uint8_t *dst, uint64_t dst_cap, const struct shm_batch_in *in,
                         int64_t base_offset, int64_t timestamp_ms)
{
    int64_t size = shm_batch_encoded_size(in);
    if (size < 0)
        return size;
    if ((uint64_t)size > dst_cap)
        return SHM_E_BUFFER_SMALL;
    shm_batch_encode_sized(dst, in, size, base_offset, timestamp_ms, NULL);
    return size;
}

#define FUSED_COPY_MIN 4096   /* values this large are copied and summed in one pass */

/* shm_batch_encode for a size already computed by shm_batch_encoded_size */
/* the 61-byte header of a batch of in->count records, all but the CRC */
static void put_header(uint8_t *dst, const struct shm_batch_in *in, int64_t size, int64_t base_offset,
                       int64_t timestamp_ms, const struct shm_batch_stamp *stamp)
{
    put_be64(dst + SHM_RB_BASE_OFFSET, (uint64_t)base_offset);
    put_be32(dst + SHM_RB_LENGTH, (uint32_t)(size - 12));
    put_be32(dst + SHM_RB_LEADER_EPOCH, 0);
    dst[SHM_RB_MAGIC] = 2;
    put_be16(dst + SHM_RB_ATTRIBUTES, stamp ? stamp->attributes : 0);
    put_be32(dst + SHM_RB_LAST_OFFSET_DELTA, in->count - 1);
    put_be64(dst + SHM_RB_BASE_TIMESTAMP, (uint64_t)timestamp_ms);
    put_be64(dst + SHM_RB_MAX_TIMESTAMP, (uint64_t)timestamp_ms);
    put_be64(dst + SHM_RB_PRODUCER_ID, stamp ? (uint64_t)stamp->producer_id : (uint64_t)-1);
    put_be16(dst + SHM_RB_PRODUCER_EPOCH, stamp ? (uint16_t)stamp->producer_epoch : 0xFFFF);
    put_be32(dst + SHM_RB_BASE_SEQUENCE, stamp ? (uint32_t)stamp->base_sequence : 0xFFFFFFFFu);
    put_be32(dst + SHM_RB_RECORDS_COUNT, in->count);
}

void shm_batch_encode_sized(uint8_t *dst, const struct shm_batch_in *in, int64_t size,
                            int64_t base_offset, int64_t timestamp_ms, const struct shm_batch_stamp *stamp)
{
    put_header(dst, in, size, base_offset, timestamp_ms, stamp);

    /* The CRC covers attributes..end. It runs behind the writes: what was
     * written since `from` is summed before each large value, which is
     * copied and summed in one pass (shm_crc32c_copy), so a large record's
     * bytes are read once, not once to copy and once to sum. */
    uint8_t *p = dst + SHM_BATCH_HEADER_BYTES, *from = dst + SHM_RB_ATTRIBUTES;
    uint32_t crc = 0;
    const uint8_t *vals = in->values, *keys = in->keys, *hdrs = in->headers;
    for (uint32_t i = 0; i < in->count; i++) {
        int64_t k = rec_len(in->key_lens, i), v = in->value_lens[i];
        p = put_varint(p, record_body_size(in, i));
        *p++ = 0;                      /* record attributes */
        *p++ = 0;                      /* timestampDelta = 0 (varint) */
        p = put_varint(p, i);          /* offsetDelta */
        p = put_varint(p, k);
        if (k > 0) { memcpy(p, keys, (size_t)k); p += k; keys += k; }
        p = put_varint(p, v);
        if (v >= FUSED_COPY_MIN) {
            crc = shm_crc32c(crc, from, (size_t)(p - from));
            crc = shm_crc32c_copy(crc, p, vals, (size_t)v);
            p += v;
            vals += v;
            from = p;
        } else if (v > 0) {
            memcpy(p, vals, (size_t)v);
            p += v;
            vals += v;
        }
        if (in->header_lens) {
            memcpy(p, hdrs, (size_t)in->header_lens[i]);
            p += in->header_lens[i];
            hdrs += in->header_lens[i];
        } else {
            *p++ = 0;                  /* no headers */
        }
    }
    crc = shm_crc32c(crc, from, (size_t)(dst + size - from));
    put_be32(dst + SHM_RB_CRC, crc);
}

/* A loan's batch (ring.c, "Producer loans"): record 0 of in laid out as
 * shm_batch_encode_sized lays it out, its value area left for the caller and
 * the CRC for shm_loan_commit (shm_batch_seal sums it). */
int64_t shm_batch_encode_loan(uint8_t *dst, const struct shm_batch_in *in, int64_t size, int64_t base_offset,
                              int64_t timestamp_ms, const struct shm_batch_stamp *stamp)
{
    put_header(dst, in, size, base_offset, timestamp_ms, stamp);
    int64_t k = rec_len(in->key_lens, 0), v = in->value_lens[0];
    uint8_t *p = dst + SHM_BATCH_HEADER_BYTES;
    p = put_varint(p, record_body_size(in, 0));
    *p++ = 0;                          /* record attributes */
    *p++ = 0;                          /* timestampDelta */
    p = put_varint(p, 0);              /* offsetDelta */
    p = put_varint(p, k);
    if (k > 0) { memcpy(p, in->keys, (size_t)k); p += k; }
    p = put_varint(p, v);
    int64_t value_at = p - dst;
    p += v > 0 ? v : 0;
    if (in->header_lens)
        memcpy(p, in->headers, (size_t)in->header_lens[0]);
    else
        *p = 0;                        /* no headers */
    return value_at;
}

/* Structure and CRC of one batch of exactly len bytes. */
int shm_batch_validate(const uint8_t *batch, uint64_t len)
{
    if (len < SHM_BATCH_HEADER_BYTES || batch[SHM_RB_MAGIC] != 2)
        return SHM_E_CORRUPT;
    if ((uint64_t)get_be32(batch + SHM_RB_LENGTH) + 12 != len)
        return SHM_E_CORRUPT;
    if (shm_crc32c(0, batch + SHM_RB_ATTRIBUTES, len - SHM_RB_ATTRIBUTES) != get_be32(batch + SHM_RB_CRC))
        return SHM_E_CORRUPT;
    return SHM_OK;
}

/* Walks a headers section (count varint + pairs) inside [p, end). */
static int skip_headers(const uint8_t **pp, const uint8_t *end, int64_t *count)
{
    if (get_varint(pp, end, count) || *count < 0 || *count > end - *pp)
        return -1;
    for (int64_t h = 0; h < *count; h++) {
        int64_t kl, vl;
        if (get_varint(pp, end, &kl) || kl < 0 || kl > end - *pp)
            return -1;
        *pp += kl;
        if (get_varint(pp, end, &vl) || vl < -1 || vl > end - *pp)
            return -1;
        if (vl > 0)
            *pp += vl;
    }
    return 0;
}

/* One record of a records section, as parse_record found it. */
struct rec {
    int64_t ts_delta, off_delta, key_len, value_len, header_count;
    const uint8_t *key, *value, *headers;
};

/* Parses the record at *pp inside [*pp, end) and moves *pp past it: length
 * varint in bounds, attributes byte, timestamp and offset deltas, key and
 * value lengths (>= -1) inside the record, a headers section whose keys are
 * not null, and nothing left over inside the record's declared length.
 * 0 on success, -1 for any violation (nothing is read outside the range). */
static int parse_record(const uint8_t **pp, const uint8_t *end, struct rec *r)
{
    const uint8_t *p = *pp;
    int64_t rlen;
    if (get_varint(&p, end, &rlen) || rlen < 1 || rlen > end - p)
        return -1;
    const uint8_t *rend = p + rlen;
    p++;                                  /* record attributes (unused by Kafka) */
    if (get_varint(&p, rend, &r->ts_delta) || get_varint(&p, rend, &r->off_delta))
        return -1;
    if (get_varint(&p, rend, &r->key_len) || r->key_len < -1 || r->key_len > rend - p)
        return -1;
    r->key = p;
    if (r->key_len > 0)
        p += r->key_len;
    if (get_varint(&p, rend, &r->value_len) || r->value_len < -1 || r->value_len > rend - p)
        return -1;
    r->value = p;
    if (r->value_len > 0)
        p += r->value_len;
    r->headers = p;
    if (skip_headers(&p, rend, &r->header_count) || p != rend)
        return -1;
    *pp = p;
    return 0;
}

/* Decodes the records of one batch (already validated by the caller, or not:
 * every bound is checked here too) into out, skipping records whose offset
 * is below min_offset. buf_base is the batch's position in the caller's
 * buffer; starts are reported relative to that buffer. Compressed and
 * control batches are not decoded here (out->compressed counts the former;
 * Python decompresses). Returns records appended, or SHM_E_CORRUPT. */
int shm_batch_decode(const uint8_t *batch, uint64_t len, int64_t buf_base, int64_t min_offset,
                     struct shm_records_out *out)
{
    if (len < SHM_BATCH_HEADER_BYTES || batch[SHM_RB_MAGIC] != 2)
        return SHM_E_CORRUPT;
    uint16_t attr = get_be16(batch + SHM_RB_ATTRIBUTES);
    int64_t base_offset = (int64_t)get_be64(batch + SHM_RB_BASE_OFFSET);
    int64_t base_ts = (int64_t)get_be64(batch + SHM_RB_BASE_TIMESTAMP);
    int64_t max_ts = (int64_t)get_be64(batch + SHM_RB_MAX_TIMESTAMP);
    int32_t count = (int32_t)get_be32(batch + SHM_RB_RECORDS_COUNT);
    if (count < 0 || (uint64_t)count > len)
        return SHM_E_CORRUPT;
    if (attr & SHM_RB_ATTR_CONTROL)                      /* control batch: no user records */
        return 0;
    if (attr & SHM_RB_ATTR_CODEC_MASK) {                    /* compressed: Python's job */
        out->compressed++;
        return 0;
    }
    int log_append_time = (attr & SHM_RB_ATTR_LOG_APPEND_TIME) != 0;
    const uint8_t *p = batch + SHM_BATCH_HEADER_BYTES, *end = batch + len;
    int appended = 0;
    for (int32_t i = 0; i < count; i++) {
        struct rec r;
        if (parse_record(&p, end, &r))
            return SHM_E_CORRUPT;
        int64_t offset = base_offset + r.off_delta;
        if (offset < min_offset)
            continue;
        if (out->count >= out->max_records)
            return SHM_E_BUFFER_SMALL;
        int64_t *row = out->rows + (uint64_t)out->count++ * SHM_ROW_FIELDS;
        row[SHM_ROW_OFFSET] = offset;
        row[SHM_ROW_TIMESTAMP] = log_append_time ? max_ts : base_ts + r.ts_delta;
        row[SHM_ROW_KEY_START] = buf_base + (r.key - batch);
        row[SHM_ROW_KEY_LEN] = r.key_len;
        row[SHM_ROW_VALUE_START] = buf_base + (r.value - batch);
        row[SHM_ROW_VALUE_LEN] = r.value_len;
        row[SHM_ROW_HEADER_START] = buf_base + (r.headers - batch);
        row[SHM_ROW_HEADER_COUNT] = r.header_count;
        appended++;
    }
    return appended;
}

/* Every record of a records section of count records (a batch's bytes after
 * its 61-byte header, or the inflated bytes of a compressed batch), the
 * checks Kafka's broker makes before it appends (DefaultRecord.readFrom and
 * LogValidator): each record parses inside its declared length (see
 * parse_record), offsetDelta of record i is exactly i (count is
 * lastOffsetDelta + 1, so the deltas run 0..count-1 in order), each
 * timestamp baseTimestamp + timestampDelta neither overflows nor is below -1
 * (NO_TIMESTAMP), and the section holds exactly count records, no byte more.
 * *max_ts gets the largest record timestamp, *bad_record the index of the
 * first record that fails (count when the count or the tail is wrong).
 * SHM_OK or SHM_E_INVALID (Kafka's INVALID_RECORD). */
int shm_records_check(const uint8_t *recs, uint64_t len, int32_t count, int64_t base_ts,
                      int64_t *max_ts, int32_t *bad_record)
{
    const uint8_t *p = recs, *end = recs + len;
    int64_t mx = -1;
    *bad_record = -1;
    if (count <= 0) {
        *bad_record = 0;
        return SHM_E_INVALID;
    }
    for (int32_t i = 0; i < count; i++) {
        struct rec r;
        int64_t ts;
        if (parse_record(&p, end, &r) || r.off_delta != i ||
            __builtin_add_overflow(base_ts, r.ts_delta, &ts) || ts < -1) {
            *bad_record = i;
            return SHM_E_INVALID;
        }
        if (ts > mx)
            mx = ts;
    }
    if (p != end) {
        *bad_record = count;
        return SHM_E_INVALID;
    }
    *max_ts = mx;
    return SHM_OK;
}

/* Decodes a headers section into parallel arrays (max n pairs); returns the
 * pair count or SHM_E_CORRUPT. Starts are relative to sec. */
int shm_headers_decode(const uint8_t *sec, uint64_t len, uint32_t max, int64_t *key_starts,
                       int64_t *key_lens, int64_t *val_starts, int64_t *val_lens)
{
    const uint8_t *p = sec, *end = sec + len;
    int64_t count;
    if (get_varint(&p, end, &count) || count < 0 || count > (int64_t)max)
        return SHM_E_CORRUPT;
    for (int64_t h = 0; h < count; h++) {
        int64_t kl, vl;
        if (get_varint(&p, end, &kl) || kl < 0 || kl > end - p)
            return SHM_E_CORRUPT;
        key_starts[h] = p - sec;
        key_lens[h] = kl;
        p += kl;
        if (get_varint(&p, end, &vl) || vl < -1 || vl > end - p)
            return SHM_E_CORRUPT;
        val_starts[h] = p - sec;
        val_lens[h] = vl;
        if (vl > 0)
            p += vl;
    }
    return (int)count;
}

int64_t shm_headers_encode(uint8_t *dst, uint64_t cap, uint32_t n, const uint8_t *const *keys,
                           const int64_t *key_lens, const uint8_t *const *vals,
                           const int64_t *val_lens)
{
    uint64_t need = varint_size(n);
    for (uint32_t i = 0; i < n; i++) {
        if (key_lens[i] < 0 || val_lens[i] < -1)
            return SHM_E_INVALID;
        need += varint_size(key_lens[i]) + (uint64_t)key_lens[i] + varint_size(val_lens[i]) +
                (uint64_t)(val_lens[i] > 0 ? val_lens[i] : 0);
    }
    if (need > cap)
        return SHM_E_BUFFER_SMALL;
    uint8_t *p = put_varint(dst, n);
    for (uint32_t i = 0; i < n; i++) {
        p = put_varint(p, key_lens[i]);
        memcpy(p, keys[i], (size_t)key_lens[i]);
        p += key_lens[i];
        p = put_varint(p, val_lens[i]);
        if (val_lens[i] > 0) {
            memcpy(p, vals[i], (size_t)val_lens[i]);
            p += val_lens[i];
        }
    }
    return p - dst;
}

/* Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2). */
int32_t shm_murmur2(const uint8_t *data, uint64_t len)
{
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = 0x9747b28cu ^ (uint32_t)len;
    uint64_t n4 = len / 4;
    for (uint64_t i = 0; i < n4; i++) {
        uint32_t k = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                     (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const uint8_t *t = data + (len & ~(uint64_t)3);
    switch (len & 3) {
    case 3: h ^= (uint32_t)t[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)t[1] << 8;  /* fall through */
    case 1: h ^= t[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

/* Batch header fields other modules need (ring.c, Python storage code). */
int64_t shm_batch_base_offset(const uint8_t *batch) { return (int64_t)get_be64(batch + SHM_RB_BASE_OFFSET); }
int64_t shm_batch_max_timestamp(const uint8_t *batch) { return (int64_t)get_be64(batch + SHM_RB_MAX_TIMESTAMP); }
int32_t shm_batch_last_delta(const uint8_t *batch) { return (int32_t)get_be32(batch + SHM_RB_LAST_OFFSET_DELTA); }
void    shm_batch_set_base_offset(uint8_t *batch, int64_t off) { put_be64(batch + SHM_RB_BASE_OFFSET, (uint64_t)off); }
void    shm_batch_set_leader_epoch(uint8_t *batch, int32_t epoch) { put_be32(batch + SHM_RB_LEADER_EPOCH, (uint32_t)epoch); }

/* Compaction's rewrite of one uncompressed batch (see shmlog.h). Each kept
 * record is copied byte for byte: its offsetDelta and timestampDelta are
 * relative to the batch's base, which is unchanged, so every kept record
 * keeps its offset and timestamp. */
int64_t shm_batch_filter(const uint8_t *batch, uint64_t len, const uint8_t *keep, uint32_t count,
                         uint8_t *dst, uint64_t cap)
{
    if (len < SHM_BATCH_HEADER_BYTES || batch[SHM_RB_MAGIC] != 2 ||
        (get_be16(batch + SHM_RB_ATTRIBUTES) & SHM_RB_ATTR_CODEC_MASK) ||
        get_be32(batch + SHM_RB_RECORDS_COUNT) != count)
        return SHM_E_CORRUPT;
    if (cap < SHM_BATCH_HEADER_BYTES)
        return SHM_E_BUFFER_SMALL;
    memcpy(dst, batch, SHM_BATCH_HEADER_BYTES);
    const uint8_t *p = batch + SHM_BATCH_HEADER_BYTES, *end = batch + len;
    uint64_t used = SHM_BATCH_HEADER_BYTES;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < count; i++) {
        struct rec r;
        const uint8_t *start = p;
        if (parse_record(&p, end, &r))
            return SHM_E_CORRUPT;
        if (!keep[i])
            continue;
        uint64_t n = (uint64_t)(p - start);
        if (n > cap - used)
            return SHM_E_BUFFER_SMALL;
        memcpy(dst + used, start, n);
        used += n;
        kept++;
    }
    if (p != end)
        return SHM_E_CORRUPT;
    put_be32(dst + SHM_RB_RECORDS_COUNT, kept);
    shm_batch_seal(dst, used);
    return (int64_t)used;
}

int32_t shm_records_first_keyless(const uint8_t *recs, uint64_t len, int32_t count)
{
    const uint8_t *p = recs, *end = recs + len;
    for (int32_t i = 0; i < count; i++) {
        struct rec r;
        if (parse_record(&p, end, &r))
            return SHM_E_INVALID;
        if (r.key_len < 0)
            return i;
    }
    return -1;
}

void shm_batch_seal(uint8_t *batch, uint64_t len)
{
    put_be32(batch + SHM_RB_LENGTH, (uint32_t)(len - 12));
    put_be32(batch + SHM_RB_CRC, shm_crc32c(0, batch + SHM_RB_ATTRIBUTES, len - SHM_RB_ATTRIBUTES));
}

/* A batch written by someone else (a Kafka client) that shmlog is asked to
 * store unchanged: the checks Kafka's broker makes. On the header: magic 2,
 * batchLength, CRC-32C (SHM_E_CORRUPT: Kafka's CORRUPT_MESSAGE), then
 * recordsCount == lastOffsetDelta + 1 > 0 and no control batch
 * (SHM_E_INVALID: INVALID_RECORD). An uncompressed batch's records are then
 * walked one by one (shm_records_check: SHM_E_INVALID) and its
 * maxTimestamp must be the largest record timestamp (CreateTime; Kafka's
 * broker rewrites it, the listener does so before calling here), so that
 * time indexes and retention built on it cannot be lied to. A compressed
 * batch's records cannot be walked here: the caller inflates them (bounded)
 * and checks them with shm_records_check first (the Kafka listener does).
 * Returns the record count or a negative status. */
int64_t shm_batch_check_foreign(const uint8_t *batch, uint64_t len)
{
    if (shm_batch_validate(batch, len) != SHM_OK)
        return SHM_E_CORRUPT;
    uint16_t attr = get_be16(batch + SHM_RB_ATTRIBUTES);
    int32_t last = (int32_t)get_be32(batch + SHM_RB_LAST_OFFSET_DELTA);
    int32_t count = (int32_t)get_be32(batch + SHM_RB_RECORDS_COUNT);
    if (count <= 0 || last < 0 || (int64_t)last + 1 != count || (attr & SHM_RB_ATTR_CONTROL))
        return SHM_E_INVALID;
    if (!(attr & SHM_RB_ATTR_CODEC_MASK)) {
        int64_t max_ts;
        int32_t bad;
        if (shm_records_check(batch + SHM_BATCH_HEADER_BYTES, len - SHM_BATCH_HEADER_BYTES, count,
                              (int64_t)get_be64(batch + SHM_RB_BASE_TIMESTAMP), &max_ts, &bad) != SHM_OK)
            return SHM_E_INVALID;
        if (!(attr & SHM_RB_ATTR_LOG_APPEND_TIME) && max_ts != (int64_t)get_be64(batch + SHM_RB_MAX_TIMESTAMP))
            return SHM_E_INVALID;
    }
    return count;
}

/* 0 when n lengths (each >= -1) add up to exactly total bytes. */
int shm_packed_check(const int64_t *lens, uint64_t n, uint64_t total)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (lens[i] < -1)
            return -1;
        if (lens[i] > 0) {
            if ((uint64_t)lens[i] > total - sum)   /* no wrap: the sum may never pass total */
                return -1;
            sum += (uint64_t)lens[i];
        }
    }
    return sum == total ? 0 : -1;
}
