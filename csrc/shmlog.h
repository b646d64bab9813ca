/* shmlog.h — the one definition of every shared-memory layout and of the C
 * core's API.
 *
 * Owns: the byte layout of the partition ring, the frame header, the control
 * segment and its tables, the status codes, and the prototypes of the csrc C files.
 * Must never: depend on Python, or be restated anywhere else. The cffi cdef
 * is cut out of this file between the CDEF markers (shmlog/_build.py), so
 * everything between them is plain C that cffi's parser accepts: fixed-size
 * types, explicit padding, no attributes. Sizes and field offsets are pinned
 * by _Static_assert below and checked again from Python (tests/test_layout.py).
 *
 * Vocabulary (docs/DESIGN.md): a *position* is an absolute byte position in a
 * partition's log since its creation, never reset; slot = position & (cap-1).
 * An *offset* is a Kafka record offset. A *frame* is a 16-byte frame header
 * followed by one Kafka RecordBatch v2 (DATA), or nothing useful (PAD), or a
 * gap record (GAP, an aborted reservation). Frames are 8-byte aligned and
 * never wrap. The on-disk segment bytes are the ring frame bytes.
 */
#ifndef SHMLOG_H
#define SHMLOG_H

#include <stdint.h>
#include <stddef.h>

/* CDEF-BEGIN */

/* ---------- versions and magics ---------- */
#define SHM_RING_MAGIC        0x474E4952474C4D53   /* "SMLGRING" little-endian */
#define SHM_CTL_MAGIC         0x4C5443474C4D5300   /* "\0SMLGCTL" */
#define SHM_LAYOUT_VERSION    7                   /* 2: group, member and offset tables; 3: topic ids, data dir identity; 4: ring offline (quarantine);
                                                      5: reader slots, overflow mode (overflow=block); 6: committed_bytes (rings commit memory as they fill);
                                                      7: cleanup policy and compaction settings in the topic config, the ring's open-transaction bound.
                                                      Headers hold SHM_LAYOUT_STAMP: this number folded with the build's facts (below) */
#define SHM_COMMIT_XOR        0x5A17C0DE9E3779B9   /* commit word = position ^ this */

#define SHM_FRAME_HEADER_BYTES 16
#define SHM_BATCH_HEADER_BYTES 61                  /* Kafka RecordBatch v2 header */

/* Kafka RecordBatch v2 header fields (byte offsets, big-endian) and attribute
 * bits: the one definition the C core and Python (through the cdef) decode by */
#define SHM_RB_BASE_OFFSET       0     /* int64 */
#define SHM_RB_LENGTH            8     /* int32: bytes after this field */
#define SHM_RB_LEADER_EPOCH      12    /* int32 */
#define SHM_RB_MAGIC             16    /* int8: 2 */
#define SHM_RB_CRC               17    /* uint32: CRC-32C of attributes..end */
#define SHM_RB_ATTRIBUTES        21    /* int16 */
#define SHM_RB_LAST_OFFSET_DELTA 23    /* int32 */
#define SHM_RB_BASE_TIMESTAMP    27    /* int64 */
#define SHM_RB_MAX_TIMESTAMP     35    /* int64 */
#define SHM_RB_PRODUCER_ID       43    /* int64 */
#define SHM_RB_PRODUCER_EPOCH    51    /* int16 */
#define SHM_RB_BASE_SEQUENCE     53    /* int32 */
#define SHM_RB_RECORDS_COUNT     57    /* int32; the records follow at SHM_BATCH_HEADER_BYTES */
#define SHM_RB_ATTR_CODEC_MASK   0x07  /* 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd */
#define SHM_RB_ATTR_LOG_APPEND_TIME 0x08
#define SHM_RB_ATTR_TRANSACTIONAL 0x10
#define SHM_RB_ATTR_CONTROL      0x20
#define SHM_FRAME_ALIGN        8
#define SHM_RING_HEADER_BYTES  16384               /* data area starts here */
#define SHM_RING_MIN_BYTES     65536               /* 2^16 */
#define SHM_RING_MAX_BYTES     68719476736         /* 2^36 */
#define SHM_PRODUCER_SLOTS     192
#define SHM_READER_SLOTS       48                  /* fill the header after the producer slots */
/* memory commit (ring.c, "Memory follows traffic"): a new ring commits its
 * header and the first SHM_RING_INITIAL_COMMIT data bytes; its first lap
 * commits more as producers reach it, doubling, at most SHM_RING_GROW_MAX
 * bytes a step */
#define SHM_RING_INITIAL_COMMIT 65536
#define SHM_RING_GROW_MAX      4194304
#define SHM_PAGE_BYTES         4096                /* commit granularity; SHM_RING_HEADER_BYTES is a multiple */

/* frame kinds */
#define SHM_FRAME_DATA 1
#define SHM_FRAME_PAD  2
#define SHM_FRAME_GAP  3

/* producer slot states */
#define SHM_SLOT_IDLE     0   /* owned, no reservation open */
#define SHM_SLOT_BUSY     1   /* a thread of the owner is in append, no intent published */
#define SHM_SLOT_INTENT   2   /* intent published, tail CAS not (yet) known to succeed */
#define SHM_SLOT_RESERVED 3   /* tail CAS succeeded: the reservation is this slot's */

/* persistence modes */
#define SHM_PERSIST_NONE 0    /* ephemeral: producers overwrite the oldest frames */
#define SHM_PERSIST_DISK 1    /* durable: producers never pass the persister */

/* overflow modes (ephemeral rings): what a producer does when the ring is full */
#define SHM_OVERFLOW_OVERWRITE 0  /* drop the oldest frames, read or not */
#define SHM_OVERFLOW_BLOCK     1  /* wait for the slowest live reader (ring.c, "overflow=block") */
#define SHM_CLEANUP_DELETE     1  /* cleanup.policy bits: retention deletes whole segments */
#define SHM_CLEANUP_COMPACT    2  /* the cleaner keeps the latest record per key */

/* topic states */
#define SHM_TOPIC_FREE     0
#define SHM_TOPIC_CREATING 1
#define SHM_TOPIC_LIVE     2

/* status codes: 0 ok, negative errors. Python maps them in shmlog/_native.py. */
#define SHM_OK                 0
#define SHM_E_SYS             -1   /* errno holds the cause */
#define SHM_E_AGAIN           -2   /* nothing available / would block */
#define SHM_E_TIMEOUT         -3
#define SHM_E_FULL            -4   /* ring full past the timeout (BufferFull) */
#define SHM_E_TOO_LARGE       -5   /* frame larger than the topic allows */
#define SHM_E_OUT_OF_RANGE    -6   /* offset no longer (or not yet) in the ring */
#define SHM_E_CORRUPT         -7   /* CRC / bounds / framing violated */
#define SHM_E_LAYOUT          -8   /* wrong magic, version or size */
#define SHM_E_NO_SLOT         -9   /* producer slot table full */
#define SHM_E_TOPIC_GONE      -10  /* topic deleted or recreated under a handle */
#define SHM_E_EXISTS          -11
#define SHM_E_NOT_FOUND       -12
#define SHM_E_TABLE_FULL      -13
#define SHM_E_INVALID         -14
#define SHM_E_NOSPACE         -15  /* /dev/shm (or disk) full */
#define SHM_E_PERM            -16
#define SHM_E_BUSY            -17  /* the blocking owner is alive: not sealed */
#define SHM_E_BUFFER_SMALL    -18  /* caller's buffer cannot hold one frame */
#define SHM_E_FENCED          -19  /* commit by a member that does not own the partition */
#define SHM_E_UNTRUSTED       -20  /* segment of an untrusted owner, world-accessible, or not a regular file */
#define SHM_E_OFFLINE         -21  /* the partition is quarantined (damaged files): writes refused */
#define SHM_E_TXN_STALE       -22  /* read_committed: the partition's abort index grew; reload it (shmx_txn_refresh) */

/* ---------- frame header (ring and disk) ----------
 * commit is release-stored LAST by the writer and equals position ^
 * SHM_COMMIT_XOR exactly when the frame at that position is complete. Any
 * other value (bytes of an older lap, a half-written frame) means "not
 * committed". A frame also says where it is: on disk the same word locates
 * it. length counts the header and the body, unaligned; the next frame
 * starts at position + align8(length). */
struct shm_frame_header {
    uint64_t commit;      /* position ^ SHM_COMMIT_XOR once complete */
    uint32_t length;      /* header + body bytes (unaligned) */
    uint16_t kind;        /* SHM_FRAME_DATA / PAD / GAP */
    uint16_t flags;       /* 0 */
};

/* body of a GAP frame: the offsets an aborted reservation had claimed */
struct shm_gap_body {
    int64_t  base_offset;
    uint32_t count;
    uint32_t _pad;
};

/* ---------- producer slot (one cache line) ----------
 * Written only by its owner, except by a sealer that has proven the owner
 * dead (under the ring's seal lock). owner_pid + owner_start identify the
 * process; its liveness token is a file it holds flock()ed. */
struct shm_producer_slot {
    uint64_t owner;        /* 0 = free; else (start_time << 32 | pid), claimed by CAS */
    uint32_t state;        /* SHM_SLOT_* */
    uint32_t pid;
    uint64_t start_time;   /* process start, clock ticks since boot (/proc/pid/stat) */
    uint64_t res_pos;      /* reservation start (a PAD may come first) */
    uint64_t frame_pos;    /* position of the frame itself */
    uint64_t res_end;      /* first position after the reservation */
    int64_t  base_offset;  /* first offset claimed */
    uint32_t count;        /* offsets claimed */
    uint32_t res_ms;       /* wall clock ms (low 32 bits) when the reservation was made: diagnostics */
};

/* ---------- reader slot (one cache line) ----------
 * One attached consumer's read position in one ring (ring.c, "overflow=block").
 * Written only by its owner, except freed (owner = 0) by whoever proves the
 * owner dead. pos is the first position the reader has not finished with. */
struct shm_reader_slot {
    uint64_t owner;        /* 0 = free; else the owner word of pid + start_time, claimed by CAS */
    uint32_t pid;
    uint32_t _pad;
    uint64_t start_time;   /* process start (/proc/pid/stat), with pid the liveness token */
    uint64_t pos;          /* consumed up to here: release-stored after the bytes are copied */
    int64_t  claimed_ms;   /* wall clock: diagnostics */
    uint8_t  _pad1[64 - 40];
};

/* ---------- partition ring header (SHM_RING_HEADER_BYTES) ----------
 * Every hot field sits in its own 128-byte span (two cache lines, so the
 * adjacent-line prefetcher does not make neighbours share). */
struct shm_ring_header {
    /* span 0: cold identity, written once at creation; version published last */
    uint64_t magic;
    uint32_t version;          /* 0 while being initialised */
    uint32_t header_bytes;
    uint64_t capacity;         /* data bytes, power of two */
    uint64_t total_bytes;      /* header_bytes + capacity */
    uint64_t topic_generation; /* ties the ring to one life of one topic */
    uint32_t partition;
    uint32_t persistence;      /* SHM_PERSIST_* */
    uint32_t max_frame_bytes;  /* the one span-0 field that changes (alter_topic; relaxed atomics) */
    uint32_t deleted;          /* set once when the topic is deleted (release) */
    int64_t  created_ms;
    int64_t  base_offset;      /* offset of the first frame ever (recovery may start > 0) */
    uint64_t base_position;    /* position of the first frame ever */
    /* quarantine (storage.py, recover_partition): set once by the restorer
     * after init and before the topic is published, never cleared (a ring
     * made anew at the next restore decides again). Not 0: the segment files
     * are damaged at position offline_pos (first affected offset
     * offline_offset); appends get SHM_E_OFFLINE. */
    uint32_t offline;          /* SHM_OFFLINE_* */
    uint32_t _pad0;
    uint64_t offline_pos;
    int64_t  offline_offset;
    uint32_t overflow;         /* SHM_OVERFLOW_*: alter_topic may change it (relaxed atomics) */
    uint32_t reader_hi;        /* reader slots [0, reader_hi) were ever claimed; only grows (CAS) */
    uint64_t committed_bytes;  /* data bytes [0, committed) have memory behind them; grows to capacity (CAS) */
    /* transactions (shmlog/control/transactions.py, its essay): 0 when no open
     * transaction holds this partition, else 1 + the lowest offset an open
     * transaction may have written here: the last stable offset. Written only
     * by the transaction coordinator under its lock (release); read_committed
     * readers acquire it and read no further. */
    uint64_t txn_bound;

    /* span 1: tail pair, moved together by one 16-byte CAS (producers) */
    uint64_t tail_pos;         /* next position to reserve */
    int64_t  tail_offset;      /* next offset to assign */
    uint8_t  _span1[128 - 16];

    /* span 2: head pair: oldest frame still intact in the ring and its
     * first offset. Advanced (16-byte CAS) by producers making room. */
    uint64_t head_pos;
    int64_t  head_offset;
    uint8_t  _span2[128 - 16];

    /* span 3: persister cursors (durable rings): frames below persisted are
     * copied to segment files; below fsynced they are on stable storage. */
    uint64_t persisted_pos;
    uint64_t fsynced_pos;
    int32_t  persist_errno;    /* last write/fsync failure of the persister, 0 = none */
    uint32_t _pad3;
    uint8_t  _span3[128 - 24];

    /* span 4: data wake-ups: consumers announce themselves in data_waiters,
     * producers bump data_seq and futex-wake only when it is non-zero. */
    uint32_t data_waiters;
    uint32_t data_seq;         /* futex word */
    uint8_t  _span4[128 - 8];

    /* span 5: space wake-ups: producers waiting for room (head/persisted) */
    uint32_t space_waiters;
    uint32_t space_seq;        /* futex word */
    uint32_t persist_waiters;  /* durable flush waiting on the persister */
    uint32_t persist_seq;      /* futex word the persister waits on */
    uint32_t durable_waiters;  /* flush(durable=True) callers waiting for fsynced */
    uint32_t durable_seq;      /* futex word they wait on; the persister bumps it */
    uint8_t  _span5[128 - 24];

    /* span 6: counters and the seal lock (cold, slow path) */
    uint64_t sealed_count;     /* reservations sealed as GAP after owner death */
    uint64_t overwritten_frames; /* ephemeral: frames dropped to make room */
    uint8_t  seal_lock[64];    /* robust process-shared pthread mutex */
    uint8_t  _span6[128 - 80];

    /* span 7: overflow=block counters (written by waiting producers, relaxed) */
    uint64_t blocked_ns;       /* time producers spent waiting on a reader */
    uint64_t blocked_waits;    /* reservations that had to wait on a reader */
    uint64_t readers_freed;    /* reader slots of dead owners freed */
    uint64_t txn_aborts;       /* entries the transaction coordinator appended to this partition's abort
                                  index (before it moves txn_bound; release): a read_committed reader whose
                                  copy is older reloads it */
    uint8_t  _span7[128 - 32];

    struct shm_producer_slot slots[SHM_PRODUCER_SLOTS];
    struct shm_reader_slot readers[SHM_READER_SLOTS];
    uint8_t  _tail_reserved[SHM_RING_HEADER_BYTES - 1024 - SHM_PRODUCER_SLOTS * 64 - SHM_READER_SLOTS * 64];
};

/* ---------- control segment ---------- */
#define SHM_TOPIC_NAME_MAX 249
#define SHM_DATA_DIR_MAX   2047        /* longest data dir path the control segment records */

/* a durable topic's fsync policy (topic config, fsync_mode) */
#define SHM_FSYNC_NEVER       0
#define SHM_FSYNC_INTERVAL    1
#define SHM_FSYNC_ALWAYS      2

struct shm_topic_config {
    uint32_t partitions;
    uint32_t persistence;      /* SHM_PERSIST_* */
    uint64_t ring_bytes;
    uint32_t max_message_bytes;
    uint32_t fsync_mode;       /* SHM_FSYNC_* */
    int64_t  fsync_interval_ms;
    int64_t  retention_ms;     /* -1 = forever */
    int64_t  retention_bytes;  /* -1 = unbounded */
    int64_t  segment_bytes;
    int64_t  segment_ms;
    uint32_t overflow;         /* SHM_OVERFLOW_* */
    uint32_t cleanup_policy;   /* SHM_CLEANUP_* bits (Kafka's cleanup.policy) */
    int64_t  delete_retention_ms;   /* compacted topics: how long a tombstone outlives compaction */
    int64_t  min_compaction_lag_ms; /* compacted topics: records younger than this are never compacted */
};

struct shm_topic_entry {      /* 512 bytes */
    uint32_t state;            /* SHM_TOPIC_*; published last (release) */
    uint32_t name_len;
    uint64_t generation;       /* unique per creation; names the rings */
    char     name[256];
    struct shm_topic_config config;   /* 88 bytes */
    int64_t  created_ms;
    uint64_t topic_id;         /* the topic's id on disk (catalog, directory name): one per creation, kept across reboots */
    uint8_t  _pad[512 - 16 - 256 - 88 - 16];
};

/* ---------- consumer groups (control segment tables) ----------
 * A group entry names a group; a member entry is one consumer process in
 * it; an offset entry is one (group, topic, partition): its committed offset
 * AND its owner, so the assignment lives where the commit is checked.
 *
 * Invariants (control.c states why they hold):
 *  G1 Structural fields (every entry's state, names, member fields other
 *     than heartbeat_ms/polled_ms, offset entries' owner/pending) change only
 *     under the control segment's lock.
 *  G2 committed and owner form one 16-byte pair changed only by CAS: a
 *     commit succeeds only if, at that instant, owner is the committer's
 *     token, so a member that lost a partition (a zombie) can never write
 *     its offset, whatever it believes about the generation.
 *  G3 A member's token is unique per join (next_member_token), never reused.
 *  G4 A partition moves from a live owner A to B in two steps: the rebalance
 *     sets pending = B (owner stays A); A commits and calls its revoke
 *     callback, then sets owner = B, pending = 0 under the lock. If A is
 *     removed (dead, timed out), the rebalance sets owner = B directly.
 *  G5 change_seq is release-stored after every structural change of a
 *     group (rebalance, handoff, removal): a member that loads it (acquire)
 *     and sees a new value re-reads its assignment; an unchanged value means
 *     its assignment is unchanged. Python reads it only through
 *     shmx_group_change_seq (an express call: the consumer's hot path).
 */
#define SHM_GROUP_NAME_MAX     249
#define SHM_MEMBER_ID_MAX      63
#define SHM_MEMBER_TOPICS      32
#define SHM_ENTRY_FREE         0
#define SHM_ENTRY_LIVE         2
#define SHM_MEMBER_STATIC      1       /* member flag: group_instance_id set */
#define SHM_OWNER_RELEASE      1       /* pending value: the owner gives it up, to nobody */
#define SHM_FIRST_MEMBER_TOKEN 2
#define SHM_CTL_RESTORED       1       /* shm_ctl_header.restored */
#define SHM_CTL_ABANDONED      2

struct shm_group_entry {       /* 512 bytes */
    uint32_t state;            /* SHM_ENTRY_*; published last (release) */
    uint32_t name_len;
    uint64_t change_seq;       /* G5: bumped (release) after every change of the group */
    uint64_t generation;       /* rebalance generation (Kafka's meaning) */
    uint64_t rebalances;       /* rebalances since the group was created */
    uint32_t assignor;         /* index into the assignor list of shmlog/groups.py */
    uint32_t dirty;            /* 1 while a rebalance is being written; a lock taker redoes it */
    int64_t  created_ms;
    int64_t  rebalanced_ms;
    char     name[256];
    uint8_t  _pad[512 - 56 - 256];
};

struct shm_member_topic {      /* one subscribed topic, as resolved at join */
    uint32_t index;            /* topic table index */
    uint32_t partitions;
    uint64_t generation;       /* topic generation: a recreated topic is another topic */
};

struct shm_member_entry {      /* 1024 bytes */
    uint32_t state;            /* SHM_ENTRY_*; published last (release) */
    uint32_t group;            /* group table index */
    uint64_t token;            /* G3 */
    uint32_t pid;
    uint32_t flags;            /* SHM_MEMBER_* */
    uint64_t start_time;       /* with pid: the liveness token (shm_process_alive) */
    int64_t  heartbeat_ms;     /* CLOCK_MONOTONIC ms; its owner's single atomic store */
    int64_t  polled_ms;        /* last poll, CLOCK_MONOTONIC ms; single atomic store */
    int64_t  joined_ms;        /* wall clock */
    int32_t  session_timeout_ms;
    int32_t  max_poll_interval_ms;
    uint32_t assignor;
    uint32_t n_topics;
    uint32_t member_id_len;
    uint32_t instance_id_len;
    char     member_id[64];
    char     instance_id[64];  /* group_instance_id (static membership) */
    char     client_id[64];
    struct shm_member_topic topics[SHM_MEMBER_TOPICS];
    uint8_t  _pad[1024 - 80 - 192 - SHM_MEMBER_TOPICS * 16];
};

struct shm_offset_entry {      /* 64 bytes: one (group, topic, partition) */
    uint32_t state;            /* SHM_ENTRY_*; published last (release) */
    uint32_t group;
    uint32_t topic;            /* topic table index */
    uint32_t partition;
    uint64_t topic_generation;
    uint64_t pending;          /* G4: token it moves to, SHM_OWNER_RELEASE, or 0 */
    int64_t  committed;        /* G2 pair, low half: next offset to read, -1 = none */
    uint64_t owner;            /* G2 pair, high half: owning member's token, 0 = none */
    int64_t  commit_ms;
    uint64_t commits;
};

struct shm_ctl_header {
    /* span 0: identity; version published last */
    uint64_t magic;
    uint32_t version;
    uint32_t header_bytes;
    uint64_t total_bytes;
    uint32_t max_topics;
    uint32_t _pad0;
    int64_t  created_ms;
    uint64_t topics_off;       /* byte offset of the topic table */
    uint32_t max_groups;
    uint32_t max_members;
    uint32_t max_offsets;
    uint32_t _pad1;
    uint64_t groups_off;       /* byte offsets of the group, member and offset tables */
    uint64_t members_off;
    uint64_t offsets_off;
    uint8_t  _span0[128 - 88];
    /* span 1: structural lock (robust, process-shared) */
    uint8_t  lock[64];
    uint8_t  _span1[64];
    /* span 2: metadata epoch, bumped on every topic-table change */
    uint64_t topics_epoch;
    uint64_t next_generation;
    uint32_t restored;         /* SHM_CTL_RESTORED once topics were restored from the data dir,
                                  SHM_CTL_ABANDONED when a failed restore gave the segment up (release) */
    uint32_t _pad2;
    uint64_t next_member_token; /* G3, under the lock */
    uint8_t  _span2[128 - 32];
    /* span 3: bumped by every offset commit (the snapshot writer's "anything new?") */
    uint64_t commit_seq;
    uint8_t  _span3[128 - 8];
    /* span 4: the instance's identity (written once by shm_ctl_init, before
     * version): one instance = one name + one data dir + one shm prefix. A
     * connect whose data dir is not this one (device and inode of its
     * realpath) is refused. data_dir is the realpath, for messages. */
    uint64_t data_dir_dev;
    uint64_t data_dir_ino;
    uint32_t data_dir_len;
    uint32_t _pad4;
    char     data_dir[SHM_DATA_DIR_MAX + 1];
    uint8_t  _reserved[4096 - 4 * 128 - 24 - SHM_DATA_DIR_MAX - 1];
};

struct shm_ctl_limits {
    uint32_t max_topics;
    uint32_t max_groups;
    uint32_t max_members;
    uint32_t max_offsets;
};

/* ---------- process-local handles (not shared memory) ---------- */
struct shm_map {
    void    *base;
    uint64_t size;
    int      writable;
    uint32_t st_uid;           /* owner, group and mode of the segment as opened (fstat) */
    uint32_t st_gid;
    uint32_t st_mode;
};

/* Who may own a segment this process maps (issue 11, defect 9: anyone can
 * create a name in /dev/shm first). A segment is trusted when it has no
 * world bits and is owned by this euid, by root or by uid, or (has_gid)
 * carries the instance's group gid: only root and the group's members can
 * give a file that group, so a squatter outside it can never pass. */
struct shm_trust {
    uint32_t uid;              /* the instance's owner: the data dir's owner */
    uint32_t gid;              /* the instance's group */
    uint32_t has_gid;          /* 0: no group set up yet (the creator's group) */
    uint32_t _pad;
};

/* A process-local handle on one mapped ring (issue 11, defect 11). The
 * geometry is read from the header ONCE, validated (shm_ring_open), and from
 * then on every index into the ring is computed from these copies, never
 * from shared memory: a process that rewrites capacity or base_position in
 * the header afterwards cannot make another process address outside its
 * mapping. magic tells a handle from a raw mapping passed by mistake. */
#define SHM_RING_HANDLE_MAGIC 0x4C444E48474C4D53   /* "SMLGHNDL" */
struct shm_ring {
    uint64_t magic;            /* SHM_RING_HANDLE_MAGIC once opened */
    struct shm_ring_header *hdr;   /* the mapping: header, then data */
    uint8_t *data;             /* hdr + SHM_RING_HEADER_BYTES */
    uint64_t capacity;         /* data bytes, a power of two, as validated at open */
    uint64_t mask;             /* capacity - 1 */
    uint64_t base_position;    /* position of the ring's first frame, 8-aligned */
    uint64_t mapped_bytes;
    uint32_t persistence;
    uint32_t max_frame_cap;    /* capacity / 2: the shared max_frame_bytes is clamped to it */
    int32_t  writable;
    uint32_t _pad;
};

/* what blocks producers of a full ring (shm_ring_blocker) */
#define SHM_BLOCK_NONE       0   /* room now, or nothing identifiable */
#define SHM_BLOCK_WRITER     1   /* the oldest frame is an uncommitted reservation of slot `slot` */
#define SHM_BLOCK_PERSISTER  2   /* durable: head reached persisted_pos */
#define SHM_BLOCK_READER     3   /* overflow=block: reader slot `slot` (pid) has not read the frame at head */
struct shm_blocker {
    uint32_t kind;             /* SHM_BLOCK_* */
    int32_t  slot;             /* -1 when no slot names the position */
    uint32_t pid;
    uint32_t state;            /* SHM_SLOT_* of that slot */
    uint64_t position;         /* the blocking frame's position */
    int64_t  base_offset;      /* offsets it claimed */
    uint32_t count;
    int32_t  alive;            /* 1 alive, 0 dead, -1 unknown */
    int64_t  held_ms;          /* how long the reservation has been open, -1 unknown */
    uint64_t persisted_pos;
};

/* one record batch to append; arrays are caller-owned */
struct shm_batch_in {
    uint32_t       count;
    const uint8_t *values;        /* concatenated values */
    const int64_t *value_lens;    /* count entries; -1 = null value */
    const uint8_t *keys;          /* concatenated keys, or NULL when no keys */
    const int64_t *key_lens;      /* count entries or NULL; -1 = null key */
    const uint8_t *headers;       /* encoded header sections (count varint + pairs) or NULL */
    const int64_t *header_lens;   /* count entries or NULL (NULL = no headers) */
    int64_t        timestamp_ms;  /* -1 = now; one timestamp for the batch */
};

/* what a producer needs to append to one partition; built once per
 * (producer, partition) so a send passes one pointer */
struct shm_send_ctx {
    const struct shm_ring *ring;   /* a handle on a writable mapping */
    int32_t     slot;          /* this process's producer slot in the ring */
    int32_t     stamped;       /* 1: batches carry the producer fields below (idempotent, transactional) */
    int64_t     timeout_ns;    /* max wait for room, then SHM_E_FULL */
    int64_t     unblock_ns;    /* seal a dead writer's reservation after this */
    const char *token_prefix;  /* liveness token path prefix */
    int64_t     producer_id;   /* stamped: Kafka's producerId */
    int16_t     producer_epoch;
    uint16_t    batch_attributes;  /* stamped: extra attribute bits (SHM_RB_ATTR_TRANSACTIONAL) */
    int32_t     next_sequence; /* stamped: baseSequence of the next batch; each append advances it by
                                  its record count (atomic, after the reservation) */
};

/* the producer fields a batch is encoded with (shm_batch_encode_sized) */
struct shm_batch_stamp {
    int64_t  producer_id;
    int32_t  base_sequence;    /* -1: none */
    int16_t  producer_epoch;
    uint16_t attributes;       /* SHM_RB_ATTR_TRANSACTIONAL | SHM_RB_ATTR_CONTROL */
};

/* one aborted transaction on one partition, as the transaction coordinator
 * appends it to the partition's abort index (shmlog/control/transactions.py)
 * and a read_committed reader consults it: a transactional batch of
 * producer_id with epoch <= max_epoch at an offset in [first_offset,
 * last_offset] is aborted. A fenced (or timed-out) producer's entry ends at
 * INT64_MAX: nothing its old epochs write afterwards is ever committed. */
struct shm_txn_abort {
    int64_t  producer_id;
    int64_t  first_offset;
    int64_t  last_offset;
    int32_t  max_epoch;
    int32_t  _pad;
};

/* control record types (key: int16 version 0, int16 type) */
#define SHM_CONTROL_ABORT  0
#define SHM_CONTROL_COMMIT 1

struct shm_append_out {
    uint64_t frame_pos;
    int64_t  base_offset;
    uint32_t count;
    uint32_t frame_bytes;
};

/* consumer cursor over one ring */
struct shm_cursor {
    uint64_t pos;              /* next frame position to read */
    int64_t  next_offset;      /* first offset the caller still wants */
    uint64_t stuck_pos;        /* position of an uncommitted frame we wait on, or ~0 */
    int64_t  stuck_since_ns;
    int64_t  expect_base;      /* first offset the next frame must carry; -1 after a seek */
    struct shm_ring_header *reader_hdr;  /* writable header holding this cursor's reader slot, or NULL */
    int32_t  reader;           /* reader slot index (shm_reader_claim), valid when reader_hdr is set */
    int32_t  read_committed;   /* 1: stop at stable_end, pass aborted transactional batches */
    int64_t  stable_end;       /* read_committed: no batch at or past this offset is read (the LSO) */
    const struct shm_txn_abort *aborted;  /* read_committed: the partition's aborted transactions */
    int64_t  n_aborted;
    uint64_t aborts_seen;      /* read_committed: the ring's txn_aborts when `aborted` was loaded */
};

/* decoded records of one read: one row of SHM_ROW_FIELDS int64 per record
 * (row-major, so Python fetches a whole batch in one call); starts index
 * into the read buffer. All caller-allocated, max_records rows. */
#define SHM_ROW_FIELDS 8
#define SHM_ROW_OFFSET 0
#define SHM_ROW_TIMESTAMP 1
#define SHM_ROW_KEY_START 2
#define SHM_ROW_KEY_LEN 3          /* -1 = null */
#define SHM_ROW_VALUE_START 4
#define SHM_ROW_VALUE_LEN 5        /* -1 = null */
#define SHM_ROW_HEADER_START 6     /* start of the headers section (count varint) */
#define SHM_ROW_HEADER_COUNT 7
struct shm_records_out {
    uint32_t  max_records;
    uint32_t  count;           /* records decoded */
    int64_t  *rows;            /* max_records * SHM_ROW_FIELDS */
    uint64_t  bytes_used;      /* bytes of the buffer filled with frames */
    uint32_t  frames;          /* frames copied */
    uint32_t  gaps;            /* GAP frames passed */
    uint32_t  compressed;      /* 1: one compressed batch, undecoded, at buf[batch_start:bytes_used];
                                  the cursor is still on its frame (the caller passes it) */
    uint32_t  batch_start;
};

/* ---------- shm.c: segments, futex, clocks, liveness ---------- */
int      shm_segment_create(const char *name, uint64_t size, uint64_t commit_bytes, uint32_t mode, int64_t gid,
                            struct shm_map *out);
int      shm_commit_pages(void *addr, uint64_t len);
int      shm_lazy_commit_supported(void);
void     shm_set_memory_reserve(uint64_t bytes);
uint64_t shm_memory_available(void);
int      shm_segment_create_hidden(uint64_t size, uint32_t mode, int64_t gid, struct shm_map *out, int *fd_out);
int      shm_segment_publish(int fd, const char *name);
int      shm_segment_map_range(const char *name, int writable, uint64_t offset, uint64_t size,
                               const struct shm_trust *trust, struct shm_map *out);
int      shm_segment_unlink(const char *name);
int      shm_robust_mutex_init(void *mutex);
int      shm_start_writeback(int fd, int64_t offset, int64_t nbytes);
void     shm_unmap(struct shm_map *m);
int64_t  shm_now_ms(void);
int64_t  shm_monotonic_ns(void);
int      shm_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
int      shm_futex_wake(uint32_t *word);
int      shm_futex_waitv(uint32_t *const *words, const uint32_t *vals, uint32_t n, int64_t timeout_ns);
int      shm_process_alive(const char *token_prefix, uint32_t pid, uint64_t start_time);

/* ---------- crc32c.c ---------- */
uint32_t shm_crc32c(uint32_t crc, const uint8_t *data, size_t len);
uint32_t shm_crc32c_copy(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len);
int      shm_crc32c_hardware(void);
uint32_t shm_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len);
/* paths of shm_crc32c / shm_crc32c_copy: slicing-by-8 table, the crc32c
 * instruction (3 streams), 128-bit pclmulqdq folding, 512-bit vpclmulqdq folding */
#define SHM_CRC32C_PATH_TABLE   0
#define SHM_CRC32C_PATH_INSN    1
#define SHM_CRC32C_PATH_PCLMUL  2
#define SHM_CRC32C_PATH_VPCLMUL 3
int      shm_crc32c_path(int limit);   /* limit above every path: the automatic choice, handover included */
uint64_t shm_crc32c_handover(int copy); /* where 128-bit folding hands over to the instruction (~0: never) */

/* ---------- batch.c: Kafka RecordBatch v2 codec ---------- */
int64_t  shm_batch_encoded_size(const struct shm_batch_in *in);
int64_t  shm_batch_encode(uint8_t *dst, uint64_t dst_cap, const struct shm_batch_in *in,
                          int64_t base_offset, int64_t timestamp_ms);
void     shm_batch_encode_sized(uint8_t *dst, const struct shm_batch_in *in, int64_t size,
                                int64_t base_offset, int64_t timestamp_ms, const struct shm_batch_stamp *stamp);
int      shm_batch_validate(const uint8_t *batch, uint64_t len);
int      shm_batch_decode(const uint8_t *batch, uint64_t len, int64_t buf_base,
                          int64_t min_offset, struct shm_records_out *out);
int      shm_headers_decode(const uint8_t *sec, uint64_t len, uint32_t max, int64_t *key_starts,
                            int64_t *key_lens, int64_t *val_starts, int64_t *val_lens);
int32_t  shm_murmur2(const uint8_t *data, uint64_t len);
int64_t  shm_batch_base_offset(const uint8_t *batch);
int32_t  shm_batch_last_delta(const uint8_t *batch);
int64_t  shm_batch_max_timestamp(const uint8_t *batch);
void     shm_batch_set_base_offset(uint8_t *batch, int64_t off);
void     shm_batch_set_leader_epoch(uint8_t *batch, int32_t epoch);
/* compaction (shmlog/storage/compact.py): the uncompressed batch[0:len] with
 * only the records i whose keep[i] is set (count entries), into dst (cap
 * bytes): header unchanged but recordsCount, batchLength and the CRC
 * (baseOffset, lastOffsetDelta and the timestamps kept, so offsets never
 * move). Returns its length, SHM_E_BUFFER_SMALL or SHM_E_CORRUPT. */
int64_t  shm_batch_filter(const uint8_t *batch, uint64_t len, const uint8_t *keep, uint32_t count,
                          uint8_t *dst, uint64_t cap);
/* the index of the first record of a records section (count records) whose
 * key is null, -1 when every record has a key, SHM_E_INVALID when one does
 * not parse (a compacted topic refuses keyless records: Kafka's rule) */
int32_t  shm_records_first_keyless(const uint8_t *recs, uint64_t len, int32_t count);
/* sets batchLength and the CRC of batch[0:len] from its bytes */
void     shm_batch_seal(uint8_t *batch, uint64_t len);
int64_t  shm_batch_check_foreign(const uint8_t *batch, uint64_t len);
int      shm_records_check(const uint8_t *recs, uint64_t len, int32_t count, int64_t base_ts,
                          int64_t *max_ts, int32_t *bad_record);
int      shm_packed_check(const int64_t *lens, uint64_t n, uint64_t total);
int64_t  shm_headers_encode(uint8_t *dst, uint64_t cap, uint32_t n,
                            const uint8_t *const *keys, const int64_t *key_lens,
                            const uint8_t *const *vals, const int64_t *val_lens);

/* ---------- ring.c: reserve / commit / read / seal ---------- */
int      shm_ring_init(void *base, uint64_t capacity, uint64_t topic_generation, uint32_t partition,
                       uint32_t persistence, uint32_t max_frame_bytes, int64_t base_offset,
                       uint64_t base_position);
int      shm_ring_check(const void *base, uint64_t mapped_bytes);
int      shm_ring_open(struct shm_ring *r, void *base, uint64_t mapped_bytes, int writable);
int      shm_ring_blocker(const struct shm_ring *r, const char *token_prefix, struct shm_blocker *out);
int      shm_ring_claim_slot(const struct shm_ring *r, uint32_t pid, uint64_t start_time, const char *token_prefix);
void     shm_ring_release_slot(void *base, int slot);
int      shm_send_batch(const struct shm_send_ctx *ctx, const struct shm_batch_in *in,
                        struct shm_append_out *out);
/* express tier (shmx_*): never block, keep the GIL (see shmlog/_build.py);
 * SHM_E_AGAIN means "would wait": call the blocking form instead */
int64_t  shmx_send(const struct shm_send_ctx *ctx, const uint8_t *value, int64_t value_len);
int      shmx_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                   int verify_crc, int64_t unblock_ns, struct shm_records_out *out);
int      shmx_large_peek(const struct shm_ring *r, const struct shm_cursor *cur, uint64_t min_bytes,
                         int verify_crc, int64_t *out);
int      shmx_large_confirm(const struct shm_ring *r, struct shm_cursor *cur, const int64_t *peeked, int publish);
int      shmx_large_copy(const struct shm_ring *r, const struct shm_cursor *cur, const int64_t *peeked,
                         uint8_t *dst, int verify_crc);
void     shmx_reader_publish(const struct shm_cursor *cur);
/* a batch encoded elsewhere (Kafka listener): checked, stored unchanged apart
 * from baseOffset and partitionLeaderEpoch (both outside the CRC) */
int      shm_send_raw(const struct shm_send_ctx *ctx, const uint8_t *batch, uint64_t len,
                      int32_t leader_epoch, struct shm_append_out *out);
/* a transaction marker: one control batch (attributes TRANSACTIONAL|CONTROL)
 * of producer_id/epoch holding one control record, key (0, SHM_CONTROL_*),
 * value (0, coordinator_epoch) -- Kafka's EndTxnMarker */
int      shm_send_control(const struct shm_send_ctx *ctx, int64_t producer_id, int16_t producer_epoch,
                          int32_t type, int32_t coordinator_epoch, struct shm_append_out *out);
/* producer loans (ring.c, "Producer loans", L1-L4): one record written in
 * place. struct shm_loan is process memory, filled by shm_loan_begin and
 * read by commit/abort; the caller writes value_len bytes at value and
 * nothing else. */
#define SHM_LOAN_OPEN      1
#define SHM_LOAN_COMMITTED 2
#define SHM_LOAN_ABORTED   3
struct shm_loan {
    uint8_t *value;            /* the value area, inside the ring's frame */
    uint64_t value_len;
    uint64_t frame_pos;        /* the frame's position */
    uint64_t res_end;          /* first position after the reservation */
    int64_t  base_offset;      /* the record's offset */
    uint32_t frame_len;        /* header + batch bytes (unaligned) */
    int32_t  slot;             /* the loan's producer slot (never ctx->slot) */
    uint32_t state;            /* SHM_LOAN_*; 0 before begin */
    uint32_t pid;              /* the process that began it */
    int64_t  timestamp_ms;     /* the record's (batch) timestamp */
};
/* reserves a one-record frame of value_len value bytes (key_len/headers_len -1:
 * none) with the producer slot loan_slot of this process (L1) and encodes all
 * but the value and the CRC. Waits for room like shm_send_batch (ctx's
 * timeout_ns, then SHM_E_FULL). SHM_E_TOO_LARGE, SHM_E_TOPIC_GONE,
 * SHM_E_OFFLINE, SHM_E_BUSY (loan_slot not idle), SHM_E_INVALID as send. */
int      shm_loan_begin(const struct shm_send_ctx *ctx, int32_t loan_slot, int64_t value_len,
                        const uint8_t *key, int64_t key_len, const uint8_t *headers, int64_t headers_len,
                        int64_t timestamp_ms, struct shm_loan *out);
/* sums the CRC-32C and publishes the loan's frame (L4); SHM_E_INVALID when
 * the loan is not open, not this process's, or its slot no longer holds it */
int      shm_loan_commit(const struct shm_ring *r, struct shm_loan *l);
/* publishes a GAP over the loan's reservation (L3): its offset is a gap */
int      shm_loan_abort(const struct shm_ring *r, struct shm_loan *l);
/* batch.c: a one-record batch of in (in->values unused) encoded into dst
 * (size bytes, from shm_batch_encoded_size) but for the value bytes and the
 * CRC field; returns the value's byte offset in the batch */
int64_t  shm_batch_encode_loan(uint8_t *dst, const struct shm_batch_in *in, int64_t size, int64_t base_offset,
                               int64_t timestamp_ms, const struct shm_batch_stamp *stamp);
/* the transaction coordinator's bound (struct shm_ring_header txn_bound), a release store
 * (readers: shm_ring_counter SHM_COUNTER_TXN_BOUND, acquire) */
void     shm_ring_set_txn_bound(void *base, uint64_t bound);
/* read_committed: sets cur->stable_end from the ring's txn_bound (the last
 * stable offset; INT64_MAX with no open transaction) when the cursor's abort
 * list is current and returns -1; else returns the ring's txn_aborts (reload
 * the abort index, set aborts_seen to it, call again). */
int64_t  shmx_txn_refresh(const struct shm_ring *r, struct shm_cursor *cur);
/* the coordinator appended n entries to the partition's abort index (release) */
void     shm_ring_note_aborts(void *base, uint64_t n);
/* the batches themselves, without decoding: DATA frame bodies back to back */
int      shm_ring_read_batches(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                               int64_t unblock_ns, struct shm_records_out *out);
int64_t  shm_send(const struct shm_send_ctx *ctx, const uint8_t *value, int64_t value_len,
                  const uint8_t *key, int64_t key_len, const uint8_t *headers, int64_t headers_len,
                  int64_t timestamp_ms);
int      shm_ring_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                       int verify_crc, int64_t unblock_ns, struct shm_records_out *out);
/* A park-mode consumer's adaptive spin (shm_wait_any): process-local, one per
 * consumer, never in shared memory; zero-initialised = start at spin_ns. */
struct shm_spin_state {
    int64_t  budget_ns;        /* the next wait's spin, in [floor, spin_ns]; <= 0: spin_ns */
    uint64_t waits;            /* shm_wait_any calls with this state */
    uint64_t parks;            /* of those, how many announced themselves and parked */
    uint64_t desched_exits;    /* spins cut short because the spinner had been descheduled */
};
int      shm_wait_any(void *const *hdrs, const struct shm_ring *const *rings, struct shm_cursor *const *curs,
                      uint32_t n, int64_t timeout_ns, int64_t spin_ns, int64_t unblock_ns,
                      struct shm_spin_state *spin);
int      shm_ring_seek(const struct shm_ring *r, struct shm_cursor *cur, int64_t offset);
int      shm_ring_seal_stuck(const struct shm_ring *r, uint64_t pos, const char *token_prefix);
int      shm_ring_seal_dead(const struct shm_ring *r, const char *token_prefix, int free_slots);
int      shm_ring_set_max_frame_bytes(void *base, uint32_t max_frame_bytes);
int      shm_ring_set_overflow(void *base, uint32_t overflow);
/* reader slots (overflow=block): hdr is a WRITABLE mapping of the ring's header */
int      shm_reader_claim(void *hdr, uint32_t pid, uint64_t start_time, const char *token_prefix,
                          struct shm_cursor *cur);
void     shm_reader_release(struct shm_cursor *cur);
int      shm_ring_slowest_reader(const void *base, uint32_t *pid, uint64_t *pos);
void     shm_ring_ends(const void *base, int64_t *head_offset, int64_t *tail_offset,
                       uint64_t *head_pos, uint64_t *tail_pos);
/* what shm_ring_counter reads (one atomic load each) */
#define SHM_COUNTER_SEALED        0   /* reservations sealed as gaps */
#define SHM_COUNTER_OVERWRITTEN   1   /* ephemeral frames dropped to make room */
#define SHM_COUNTER_PERSISTED     2   /* persisted_pos */
#define SHM_COUNTER_FSYNCED       3   /* fsynced_pos */
#define SHM_COUNTER_DELETED       4   /* the topic was deleted */
#define SHM_COUNTER_DURABLE_WAITERS 5 /* flush(durable=True) callers waiting */
#define SHM_COUNTER_PERSIST_ERRNO 6   /* the persister's last write/fsync errno */
#define SHM_COUNTER_BASE_POSITION 7   /* position of the ring's first frame */
#define SHM_COUNTER_BASE_OFFSET   8   /* offset of the ring's first frame */
#define SHM_COUNTER_OFFLINE       9   /* SHM_OFFLINE_* (0: online) */
#define SHM_COUNTER_OFFLINE_POS   10  /* position of the damage */
#define SHM_COUNTER_OFFLINE_OFFSET 11 /* first offset the damage affects */
#define SHM_COUNTER_OVERFLOW      12  /* SHM_OVERFLOW_* */
#define SHM_COUNTER_BLOCKED_NS    13  /* overflow=block: ns producers waited on a reader */
#define SHM_COUNTER_BLOCKED_WAITS 14  /* overflow=block: reservations that waited on a reader */
#define SHM_COUNTER_READERS_FREED 15  /* reader slots of dead owners freed */
#define SHM_COUNTER_COMMITTED     16  /* data bytes with memory behind them (committed_bytes) */
#define SHM_COUNTER_TXN_BOUND     17  /* 0, or 1 + the last stable offset (txn_bound, acquire) */
#define SHM_OFFLINE_NONE          0
#define SHM_OFFLINE_FRAME         1   /* a damaged frame with intact ones after it */
#define SHM_OFFLINE_GAP           2   /* a hole in the segment chain nobody recorded */
/* quarantines a ring (before its topic is published): SHM_E_INVALID for kind 0 */
int      shm_ring_set_offline(void *base, uint32_t kind, uint64_t pos, int64_t offset);
uint64_t shm_ring_counter(const void *base, int which);
void     shm_ring_mark_deleted(void *base);
void     shm_test_set_hold_ns(int64_t ns);

/* asyncio consumers (shmlog/aio.py): shm_wait_any's park split in two, for
 * one waiter thread that parks for many consumers at once in futex_waitv.
 * arm announces itself on every ring (data_waiters), loads each data_seq
 * into vals, then re-checks the cursors: a cursor index >= 0 means ready
 * (nothing stays announced), -1 means armed (the caller must disarm after
 * its wait); *stuck_deadline_ns (monotonic, or -1) is when a stuck frame is
 * due for sealing. */
int      shm_wait_arm(void *const *hdrs, const struct shm_ring *const *rings, struct shm_cursor *const *curs,
                      uint32_t n, int64_t unblock_ns, uint32_t *vals, int64_t *stuck_deadline_ns);
void     shm_wait_disarm(void *const *hdrs, uint32_t n);
/* indices i < n whose *words[i] != vals[i] (acquire loads) into changed; returns how many */
uint32_t shm_words_changed(uint32_t *const *words, const uint32_t *vals, uint32_t n, uint32_t *changed);
/* a process-private control futex: bump it and wake its waiter */
void     shm_word_bump(uint32_t *word);

/* ---------- accum.c: the asynchronous producer's batch being filled (process memory) ---------- */
struct shm_accum {
    uint32_t  count;           /* records in the batch */
    uint32_t  max_count;       /* batch_num_messages */
    uint64_t  bytes;           /* upper bound of the encoded records section */
    uint64_t  max_bytes;       /* batch_size, at most one frame */
    uint32_t  sealed;          /* 1: no add succeeds (being written) */
    uint32_t  rows_cap;
    uint8_t  *vals;  uint64_t vlen, vcap;  int64_t *vlens;
    uint8_t  *keys;  uint64_t klen, kcap;  int64_t *klens;    /* NULL until a record has a key */
    uint8_t  *hdrs;  uint64_t hlen, hcap;  int64_t *hlens;    /* NULL until a record has headers */
};
struct shm_accum *shm_accum_new(uint32_t max_count, uint64_t max_bytes);
void     shm_accum_free(struct shm_accum *a);
/* index of the record in the batch, or SHM_E_AGAIN (sealed or full: take the
 * slow path), SHM_E_FULL (full), SHM_E_TOO_LARGE (alone over max_bytes),
 * SHM_E_INVALID, SHM_E_NOSPACE (malloc) */
int64_t  shmx_accum_add(struct shm_accum *a, const uint8_t *v, int64_t vlen);
int64_t  shmx_accum_add_full(struct shm_accum *a, const uint8_t *v, int64_t vlen, const uint8_t *k,
                             int64_t klen, const uint8_t *h, int64_t hlen);
uint32_t shmx_accum_seal(struct shm_accum *a);
void     shm_accum_batch_in(const struct shm_accum *a, struct shm_batch_in *in, int64_t timestamp_ms);

/* ---------- log.c: frames in a linear buffer (segment files), persister scan ---------- */
/* what shm_persist_scan found: a contiguous run of complete frames */
struct shm_persist_out {
    uint64_t end_pos;          /* position after the last complete frame taken */
    uint64_t slot;             /* ring slot of the run's first byte */
    int64_t  end_offset;       /* next offset after the run */
    int64_t  max_timestamp;    /* largest batch timestamp of the segment so far, or -1 */
    uint32_t frames;
    uint32_t index_count;      /* index rows written */
};
/* index row: offset O of a frame, its position, and the largest timestamp of
 * the segment's records below O (-1: none). .index holds (O, position),
 * .timeindex (timestamp, O); both are monotonic. */
#define SHM_INDEX_FIELDS 3
/* a segment's index-building state, carried from one scan (a copy run, a
 * recovery chunk) to the next of the same segment, so the timestamp of a
 * row covers the whole segment before it, not one run */
struct shm_index_state {
    uint64_t next_pos;         /* the next row goes at the first frame at or after this position */
    int64_t  max_timestamp;    /* largest batch max timestamp of the segment so far, or -1 */
};
int      shm_persist_scan(const struct shm_ring *r, uint64_t from_pos, int64_t from_offset,
                          uint64_t max_bytes, uint64_t index_every, struct shm_index_state *ix,
                          int64_t *index_rows, uint32_t max_index, struct shm_persist_out *out);
void     shm_ring_publish_persisted(void *base, uint64_t pos);
void     shm_ring_publish_fsynced(void *base, uint64_t pos, int32_t err);
int      shm_ring_persist_wait(void *const *hdrs, uint32_t n, int64_t timeout_ns);
int      shm_ring_durable_wait(void *hdr, uint64_t pos, int64_t timeout_ns);

/* walks frames in buf (bytes of a segment file starting at position buf_pos);
 * the read functions return what shm_ring_read / shm_ring_read_batches do
 * (a count >= 0, or an SHM_E_*), and SHM_E_AGAIN when buf holds no whole frame */
int      shm_frames_read(const uint8_t *buf, uint64_t len, uint64_t buf_pos, struct shm_cursor *cur,
                         int verify_crc, struct shm_records_out *out);
int      shm_frames_read_batches(uint8_t *buf, uint64_t len, uint64_t buf_pos, struct shm_cursor *cur,
                                 struct shm_records_out *out);
int      shm_frames_seek(const uint8_t *buf, uint64_t len, uint64_t buf_pos, int64_t offset,
                         struct shm_cursor *cur);
/* recovery: validates frames from buf_pos; stops at the first bad or partial one */
/* why a segment scan stopped (struct below, stop_reason) */
#define SHM_SCAN_END          0    /* end of data */
#define SHM_SCAN_TORN         1    /* a partial frame: a torn tail */
#define SHM_SCAN_BAD_HEADER   2
#define SHM_SCAN_BAD_BODY     3    /* CRC or record checks failed */
#define SHM_SCAN_OFFSET_JUMP  4    /* the offsets do not continue */

struct shm_scan_out {
    uint64_t end_pos;          /* position after the last valid frame */
    int64_t  end_offset;       /* next offset after it */
    int64_t  max_timestamp;    /* largest batch timestamp of the segment so far, or -1 */
    uint64_t frames;
    int32_t  stop_reason;      /* SHM_SCAN_* */
    uint32_t _pad;
    uint64_t bad_frame_len;    /* length field of the frame that stopped the scan (if its header was sane) */
};
int      shm_frames_validate(const uint8_t *buf, uint64_t len, uint64_t buf_pos, int64_t expect_offset,
                             uint64_t index_every, struct shm_index_state *ix, int64_t *index_rows,
                             uint32_t max_index, uint32_t *index_count, struct shm_scan_out *out);

/* ---------- control.c: control segment ---------- */
uint64_t shm_ctl_size(const struct shm_ctl_limits *lim);
int      shm_ctl_init(void *base, uint64_t size, const struct shm_ctl_limits *lim,
                      const char *data_dir, uint32_t data_dir_len, uint64_t dev, uint64_t ino);
const char *shm_ctl_data_dir(const void *base, uint32_t *len, uint64_t *dev, uint64_t *ino);
int      shm_ctl_check(const void *base, uint64_t mapped_bytes);
int      shm_ctl_lock(void *base, int64_t timeout_ns);
void     shm_ctl_unlock(void *base);
struct shm_topic_entry *shm_ctl_topic(void *base, uint32_t index);
uint32_t shm_ctl_max_topics(const void *base);
int      shm_ctl_topic_find(const void *base, const char *name, uint32_t name_len);
int      shm_ctl_topic_reserve(void *base, const char *name, uint32_t name_len,
                               const struct shm_topic_config *cfg, uint64_t topic_id, uint64_t *generation);
uint64_t shm_ctl_topic_id(const void *base, int index);
void     shm_ctl_topic_publish(void *base, int index);
void     shm_ctl_topic_free(void *base, int index);
int      shm_ctl_topic_update(void *base, int index, const struct shm_topic_config *cfg);
uint32_t shm_ctl_topic_state(const void *base, int index, uint64_t *generation);
uint32_t shm_ctl_restored(const void *base);
void     shm_ctl_set_restored(void *base);
void     shm_ctl_set_abandoned(void *base);

/* groups: tables are reached through these; every write to them is one of
 * these functions, structural ones under the lock (G1) */
struct shm_group_entry  *shm_ctl_group(void *base, uint32_t index);
struct shm_member_entry *shm_ctl_member(void *base, uint32_t index);
struct shm_offset_entry *shm_ctl_offset(void *base, uint32_t index);
void     shm_entry_publish(uint32_t *state, uint32_t value);
uint64_t shm_ctl_new_member_token(void *base);
int      shm_group_init(struct shm_group_entry *g, const char *name, uint32_t name_len, uint32_t assignor);
void     shm_group_rebalance_begin(struct shm_group_entry *g, int64_t assignor);
void     shm_group_changed(struct shm_group_entry *g, int rebalanced);
int      shm_member_fill(struct shm_member_entry *m, uint32_t group, uint64_t token, uint32_t pid,
                         uint64_t start_time, uint32_t flags, int64_t now_ms, int32_t session_timeout_ms,
                         int32_t max_poll_interval_ms, uint32_t assignor, const char *member_id,
                         uint32_t member_id_len, const char *instance_id, uint32_t instance_id_len,
                         const char *client_id, uint32_t client_id_len);
int      shm_member_set_topics(struct shm_member_entry *m, const struct shm_member_topic *topics, uint32_t n);
void     shm_offset_init(struct shm_offset_entry *e, uint32_t group, uint32_t topic, uint64_t topic_generation,
                         uint32_t partition, int64_t committed);
void     shm_offset_set_pending(struct shm_offset_entry *e, uint64_t pending);
void     shm_offset_restore(struct shm_offset_entry *e, int64_t committed, int64_t commit_ms);
uint64_t shmx_group_change_seq(const struct shm_group_entry *g);   /* express tier */
uint64_t shmx_ctl_epoch(const void *base);                         /* express tier: topics_epoch, acquire */
void     shm_member_beat(struct shm_member_entry *m, int64_t heartbeat_ms, int64_t polled_ms);
int      shm_offset_commit(void *base, struct shm_offset_entry *e, uint64_t token, int64_t offset);
#define SHM_OFFSET_KEEP      -2   /* shm_offset_set_owner: leave the committed offset as it is */
void     shm_offset_set_owner(struct shm_offset_entry *e, uint64_t owner, int64_t committed_or_keep);
uint64_t shm_ctl_commit_seq(const void *base);

/* ---------- layout table for the Python-side check ---------- */
struct shm_layout_field {
    const char *name;
    uint64_t    offset;
    uint64_t    size;
};
extern const struct shm_layout_field shm_layout_fields[];
extern const uint32_t shm_layout_field_count;
uint32_t shm_layout_stamp(void);   /* SHM_LAYOUT_STAMP of this build (layout.c) */

/* CDEF-END */

/* ---------- the layout stamp (C only) ----------
 * What a segment's header `version` word holds: SHM_LAYOUT_VERSION (the
 * human-readable number, bits 0-7) folded with the facts of the build that
 * change the bytes without changing this header, as LMDB's lock format does:
 * the architecture (bits 8-11), the pointer size (bits 12-15) and
 * sizeof(pthread_mutex_t), whose bytes sit in the segments (bits 16-23).
 * A segment made by an incompatible build then fails shm_ctl_check /
 * shm_ring_check (LayoutMismatch) instead of being misread. Never 0 (0 means
 * "not yet initialised"). Python reads it through shm_layout_stamp(). */
#include <pthread.h>
#if defined(__x86_64__)
#define SHM_ARCH_ID 1
#elif defined(__aarch64__)
#define SHM_ARCH_ID 2
#elif defined(__i386__)
#define SHM_ARCH_ID 3
#elif defined(__arm__)
#define SHM_ARCH_ID 4
#elif defined(__powerpc64__)
#define SHM_ARCH_ID 5
#elif defined(__riscv)
#define SHM_ARCH_ID 6
#else
#define SHM_ARCH_ID 15
#endif
#define SHM_LAYOUT_STAMP                                                                   \
    ((uint32_t)SHM_LAYOUT_VERSION | (uint32_t)SHM_ARCH_ID << 8 | (uint32_t)sizeof(void *) << 12 | \
     (uint32_t)sizeof(pthread_mutex_t) << 16)
_Static_assert(SHM_LAYOUT_VERSION > 0 && SHM_LAYOUT_VERSION < 256, "layout version fits its byte");
_Static_assert(sizeof(void *) < 16, "pointer size fits its nibble");
_Static_assert(sizeof(pthread_mutex_t) < 256, "mutex size fits its byte");

/* ---------- layout pins (C only) ---------- */
_Static_assert(sizeof(struct shm_frame_header) == SHM_FRAME_HEADER_BYTES, "frame header");
_Static_assert(sizeof(struct shm_gap_body) == 16, "gap body");
_Static_assert(sizeof(struct shm_producer_slot) == 64, "slot is one cache line");
_Static_assert(sizeof(struct shm_ring_header) == SHM_RING_HEADER_BYTES, "ring header");
_Static_assert(offsetof(struct shm_ring_header, tail_pos) == 128, "tail span");
_Static_assert(offsetof(struct shm_ring_header, tail_pos) % 16 == 0, "tail pair 16-aligned for cmpxchg16b");
_Static_assert(offsetof(struct shm_ring_header, head_pos) == 256, "head span");
_Static_assert(offsetof(struct shm_ring_header, persisted_pos) == 384, "persist span");
_Static_assert(offsetof(struct shm_ring_header, data_waiters) == 512, "data wake span");
_Static_assert(offsetof(struct shm_ring_header, space_waiters) == 640, "space wake span");
_Static_assert(offsetof(struct shm_ring_header, sealed_count) == 768, "counter span");
_Static_assert(offsetof(struct shm_ring_header, blocked_ns) == 896, "block counter span");
_Static_assert(offsetof(struct shm_ring_header, slots) == 1024, "slots");
_Static_assert(sizeof(struct shm_reader_slot) == 64, "reader slot is one cache line");
_Static_assert(sizeof(struct shm_topic_config) == 88, "topic config");
_Static_assert(sizeof(struct shm_topic_entry) == 512, "topic entry");
_Static_assert(sizeof(struct shm_ctl_header) == 4096, "ctl header");
_Static_assert(offsetof(struct shm_ctl_header, lock) == 128, "ctl lock span");
_Static_assert(offsetof(struct shm_ctl_header, commit_seq) == 384, "ctl commit span");
_Static_assert(offsetof(struct shm_ctl_header, data_dir_dev) == 512, "ctl identity span");
_Static_assert(sizeof(struct shm_group_entry) == 512, "group entry");
_Static_assert(sizeof(struct shm_member_entry) == 1024, "member entry");
_Static_assert(sizeof(struct shm_offset_entry) == 64, "offset entry");
_Static_assert(offsetof(struct shm_offset_entry, committed) % 16 == 0, "commit pair 16-aligned for cmpxchg16b");
_Static_assert(offsetof(struct shm_offset_entry, owner) == offsetof(struct shm_offset_entry, committed) + 8, "pair");

static inline uint64_t shm_align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

#endif
