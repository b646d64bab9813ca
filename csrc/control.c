/* control.c — the instance's control segment: header and topic table.
 *
 * Owns: the control segment's layout and every structural change to it,
 * made under the robust process-shared mutex in the header.
 * Must never: touch a ring, or leave an entry half-visible: an entry's
 * fields are written while its state is FREE or CREATING and its state is
 * release-stored last, so a lock-free reader that sees LIVE (acquire) sees
 * the whole entry. A process that dies holding the lock leaves at worst a
 * CREATING entry, which the next creator of that name reclaims (its rings
 * are recreated from scratch by the caller).
 *
 * Layout: [shm_ctl_header (4 KiB)][max_topics x shm_topic_entry (512 B)]
 * [max_groups x shm_group_entry (512 B)][max_members x shm_member_entry (1 KiB)]
 * [max_offsets x shm_offset_entry (64 B)], each table located by an *_off
 * field of the header; a new table is a layout version bump.
 *
 * Groups (invariants G1-G5 in shmlog.h): the group logic (membership,
 * assignors, rebalances) is Python (shmlog/groups.py) and runs under the
 * lock; this file makes every write to those tables (Python never writes a
 * shared struct): initialising and publishing an entry, filling a member,
 * the commit CAS, the owner and pending changes, the change counter and
 * the heartbeat stores. Why G2 holds: the rebalance changes
 * owner only through shm_offset_set_owner, itself a pair CAS, so a commit's
 * CAS that compared (committed, owner=token) succeeded at an instant when
 * token owned the partition, and no later owner's commit can be overwritten
 * by it: the later owner's commits all happen after the owner change, and a
 * commit never changes owner.
 */
#define _GNU_SOURCE
#include "shmlog.h"
#include "atomics.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define CTL(b) ((struct shm_ctl_header *)(b))

/* table offsets for these limits; returns the total size, page-rounded */
static uint64_t ctl_layout(const struct shm_ctl_limits *lim, uint64_t *groups_off,
                           uint64_t *members_off, uint64_t *offsets_off)
{
    uint64_t s = sizeof(struct shm_ctl_header) + (uint64_t)lim->max_topics * sizeof(struct shm_topic_entry);
    *groups_off = s;
    s += (uint64_t)lim->max_groups * sizeof(struct shm_group_entry);
    *members_off = s;
    s += (uint64_t)lim->max_members * sizeof(struct shm_member_entry);
    *offsets_off = s;
    s += (uint64_t)lim->max_offsets * sizeof(struct shm_offset_entry);
    return (s + 4095) & ~(uint64_t)4095;
}

uint64_t shm_ctl_size(const struct shm_ctl_limits *lim)
{
    uint64_t g, m, o;
    return ctl_layout(lim, &g, &m, &o);
}

static int limits_ok(const struct shm_ctl_limits *lim)
{
    return lim->max_topics > 0 && lim->max_groups > 0 && lim->max_members > 0 &&
           lim->max_offsets > 0 && lim->max_topics <= 1u << 20 && lim->max_groups <= 1u << 20 &&
           lim->max_members <= 1u << 20 && lim->max_offsets <= 1u << 24;
}

int shm_ctl_init(void *base, uint64_t size, const struct shm_ctl_limits *lim,
                 const char *data_dir, uint32_t data_dir_len, uint64_t dev, uint64_t ino)
{
    struct shm_ctl_header *c = CTL(base);
    if (!limits_ok(lim) || size < shm_ctl_size(lim) || data_dir_len > SHM_DATA_DIR_MAX)
        return SHM_E_INVALID;
    c->data_dir_dev = dev;
    c->data_dir_ino = ino;
    memcpy(c->data_dir, data_dir, data_dir_len);
    c->data_dir[data_dir_len] = 0;
    c->data_dir_len = data_dir_len;
    c->magic = SHM_CTL_MAGIC;
    c->header_bytes = sizeof(struct shm_ctl_header);
    c->total_bytes = size;
    c->max_topics = lim->max_topics;
    c->max_groups = lim->max_groups;
    c->max_members = lim->max_members;
    c->max_offsets = lim->max_offsets;
    c->created_ms = shm_now_ms();
    c->topics_off = sizeof(struct shm_ctl_header);
    ctl_layout(lim, &c->groups_off, &c->members_off, &c->offsets_off);
    c->topics_epoch = 1;
    /* generations name the rings: unique across lives of the control segment
     * too, so a ring left by an earlier life (a failed restore, a control
     * segment removed by hand) never collides with a new one */
    c->next_generation = (uint64_t)c->created_ms * 1000 + 1;
    c->next_member_token = SHM_FIRST_MEMBER_TOKEN;
    if (shm_robust_mutex_init(c->lock) != SHM_OK)
        return SHM_E_SYS;
    /* release: the whole header is visible to whoever reads version != 0 */
    shm_store_release(&c->version, SHM_LAYOUT_STAMP);
    return SHM_OK;
}

int shm_ctl_check(const void *base, uint64_t mapped_bytes)
{
    const struct shm_ctl_header *c = CTL(base);
    if (mapped_bytes < sizeof(struct shm_ctl_header) || c->magic != SHM_CTL_MAGIC)
        return SHM_E_LAYOUT;
    /* acquire: pairs with shm_ctl_init's release of version */
    uint32_t v = shm_load_acquire(&c->version);
    if (v == 0)
        return SHM_E_AGAIN;
    if (v != SHM_LAYOUT_STAMP || c->header_bytes != sizeof(struct shm_ctl_header) ||
        c->total_bytes != mapped_bytes || c->topics_off != sizeof(struct shm_ctl_header))
        return SHM_E_LAYOUT;
    struct shm_ctl_limits lim = {c->max_topics, c->max_groups, c->max_members, c->max_offsets};
    uint64_t g, m, o;
    if (!limits_ok(&lim) || ctl_layout(&lim, &g, &m, &o) > mapped_bytes ||
        g != c->groups_off || m != c->members_off || o != c->offsets_off)
        return SHM_E_LAYOUT;
    return SHM_OK;
}

/* Takes the structural lock, waiting at most timeout_ns (< 0: forever). */
int shm_ctl_lock(void *base, int64_t timeout_ns)
{
    pthread_mutex_t *m = (pthread_mutex_t *)CTL(base)->lock;
    int rc;
    if (timeout_ns < 0) {
        rc = pthread_mutex_lock(m);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + timeout_ns;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        rc = pthread_mutex_timedlock(m, &ts);
    }
    if (rc == EOWNERDEAD) {
        /* the holder died mid-change; entries are published last, so the
         * table is consistent apart from CREATING entries, handled by callers */
        pthread_mutex_consistent(m);
        rc = 0;
    }
    if (rc == ETIMEDOUT)
        return SHM_E_TIMEOUT;
    return rc == 0 ? SHM_OK : SHM_E_SYS;
}

void shm_ctl_unlock(void *base)
{
    pthread_mutex_unlock((pthread_mutex_t *)CTL(base)->lock);
}

uint32_t shm_ctl_max_topics(const void *base) { return CTL(base)->max_topics; }

/* the identity shm_ctl_init recorded (immutable after it published version) */
const char *shm_ctl_data_dir(const void *base, uint32_t *len, uint64_t *dev, uint64_t *ino)
{
    const struct shm_ctl_header *c = CTL(base);
    *len = c->data_dir_len <= SHM_DATA_DIR_MAX ? c->data_dir_len : SHM_DATA_DIR_MAX;
    *dev = c->data_dir_dev;
    *ino = c->data_dir_ino;
    return c->data_dir;
}

struct shm_topic_entry *shm_ctl_topic(void *base, uint32_t index)
{
    struct shm_ctl_header *c = CTL(base);
    if (index >= c->max_topics)
        return NULL;
    return (struct shm_topic_entry *)((uint8_t *)base + c->topics_off) + index;
}

uint32_t shm_ctl_restored(const void *base)
{
    /* acquire: a restorer's topic entries are visible once this reads 1 */
    return shm_load_acquire(&CTL(base)->restored);
}

void shm_ctl_set_restored(void *base)
{
    shm_store_release(&CTL(base)->restored, SHM_CTL_RESTORED);
}

/* A creator whose restore failed gives the segment up (it unlinks it next):
 * whoever attached it meanwhile and waits for the lock must attach again,
 * not finish the restore in a segment nobody else will see. */
void shm_ctl_set_abandoned(void *base)
{
    shm_store_release(&CTL(base)->restored, SHM_CTL_ABANDONED);
}

uint32_t shm_ctl_topic_state(const void *base, int index, uint64_t *generation)
{
    struct shm_topic_entry *e = shm_ctl_topic((void *)base, (uint32_t)index);
    if (!e)
        return SHM_TOPIC_FREE;
    /* acquire: a LIVE state makes the entry's fields (and generation) visible */
    uint32_t st = shm_load_acquire(&e->state);
    if (generation)
        *generation = shm_load_relaxed(&e->generation);
    return st;
}

/* Index of the LIVE or CREATING entry with this name, or SHM_E_NOT_FOUND. */
int shm_ctl_topic_find(const void *base, const char *name, uint32_t name_len)
{
    const struct shm_ctl_header *c = CTL(base);
    for (uint32_t i = 0; i < c->max_topics; i++) {
        struct shm_topic_entry *e = shm_ctl_topic((void *)base, i);
        uint32_t st = shm_load_acquire(&e->state);
        if (st != SHM_TOPIC_FREE && e->name_len == name_len && memcmp(e->name, name, name_len) == 0)
            return (int)i;
    }
    return SHM_E_NOT_FOUND;
}

static void bump_epoch(struct shm_ctl_header *c)
{
    shm_fetch_add(&c->topics_epoch, 1);
}

/* Under the lock: claims an entry in state CREATING with a fresh generation.
 * SHM_E_EXISTS when a LIVE entry has the name; a CREATING one left by a dead
 * creator is taken over (its generation changes, so its rings are new). */
int shm_ctl_topic_reserve(void *base, const char *name, uint32_t name_len,
                          const struct shm_topic_config *cfg, uint64_t topic_id, uint64_t *generation)
{
    struct shm_ctl_header *c = CTL(base);
    if (name_len == 0 || name_len > SHM_TOPIC_NAME_MAX)
        return SHM_E_INVALID;
    int idx = shm_ctl_topic_find(base, name, name_len);
    if (idx >= 0 && shm_ctl_topic_state(base, idx, NULL) == SHM_TOPIC_LIVE)
        return SHM_E_EXISTS;
    if (idx < 0) {
        for (uint32_t i = 0; i < c->max_topics; i++)
            if (shm_ctl_topic_state(base, (int)i, NULL) == SHM_TOPIC_FREE) {
                idx = (int)i;
                break;
            }
        if (idx < 0)
            return SHM_E_TABLE_FULL;
    }
    struct shm_topic_entry *e = shm_ctl_topic(base, (uint32_t)idx);
    memset(e->name, 0, sizeof e->name);
    memcpy(e->name, name, name_len);
    e->name_len = name_len;
    e->config = *cfg;
    e->created_ms = shm_now_ms();
    e->topic_id = topic_id;
    uint64_t gen = c->next_generation++;
    shm_store_relaxed(&e->generation, gen);
    /* release: name and config are complete before the entry reads CREATING */
    shm_store_release(&e->state, SHM_TOPIC_CREATING);
    *generation = gen;
    return idx;
}

uint64_t shm_ctl_topic_id(const void *base, int index)
{
    struct shm_topic_entry *e = shm_ctl_topic((void *)base, (uint32_t)index);
    return e ? e->topic_id : 0;    /* written before the entry's state was published */
}

void shm_ctl_topic_publish(void *base, int index)
{
    struct shm_topic_entry *e = shm_ctl_topic(base, (uint32_t)index);
    /* release: rings exist and the entry is complete before it reads LIVE */
    shm_store_release(&e->state, SHM_TOPIC_LIVE);
    bump_epoch(CTL(base));
}

void shm_ctl_topic_free(void *base, int index)
{
    struct shm_topic_entry *e = shm_ctl_topic(base, (uint32_t)index);
    /* release: handles that re-check state see FREE before the rings vanish */
    shm_store_release(&e->state, SHM_TOPIC_FREE);
    bump_epoch(CTL(base));
}

/* alter_topic: a LIVE entry's config changes in place (caller holds the
 * lock). Lock-free readers may see the old or the new value of each field;
 * the caller makes every field's new value safe on its own (new rings exist
 * before partitions grows). The epoch bump tells the persister to re-read. */
int shm_ctl_topic_update(void *base, int index, const struct shm_topic_config *cfg)
{
    struct shm_topic_entry *e = shm_ctl_topic(base, (uint32_t)index);
    if (shm_load_acquire(&e->state) != SHM_TOPIC_LIVE)
        return SHM_E_NOT_FOUND;
    struct shm_topic_config *c = &e->config;
    shm_store_relaxed(&c->retention_ms, cfg->retention_ms);
    shm_store_relaxed(&c->retention_bytes, cfg->retention_bytes);
    shm_store_relaxed(&c->segment_bytes, cfg->segment_bytes);
    shm_store_relaxed(&c->segment_ms, cfg->segment_ms);
    shm_store_relaxed(&c->fsync_interval_ms, cfg->fsync_interval_ms);
    shm_store_relaxed(&c->fsync_mode, cfg->fsync_mode);
    shm_store_relaxed(&c->max_message_bytes, cfg->max_message_bytes);
    shm_store_relaxed(&c->overflow, cfg->overflow);
    shm_store_relaxed(&c->cleanup_policy, cfg->cleanup_policy);
    shm_store_relaxed(&c->delete_retention_ms, cfg->delete_retention_ms);
    shm_store_relaxed(&c->min_compaction_lag_ms, cfg->min_compaction_lag_ms);
    /* release: the rings of new partitions exist before readers see the count */
    shm_store_release(&c->partitions, cfg->partitions);
    bump_epoch(CTL(base));
    return SHM_OK;
}

/* ------------------------------------------------------------------ groups */

struct shm_group_entry *shm_ctl_group(void *base, uint32_t index)
{
    struct shm_ctl_header *c = CTL(base);
    return index < c->max_groups ? (struct shm_group_entry *)((uint8_t *)base + c->groups_off) + index : NULL;
}

struct shm_member_entry *shm_ctl_member(void *base, uint32_t index)
{
    struct shm_ctl_header *c = CTL(base);
    return index < c->max_members ? (struct shm_member_entry *)((uint8_t *)base + c->members_off) + index : NULL;
}

struct shm_offset_entry *shm_ctl_offset(void *base, uint32_t index)
{
    struct shm_ctl_header *c = CTL(base);
    return index < c->max_offsets ? (struct shm_offset_entry *)((uint8_t *)base + c->offsets_off) + index : NULL;
}

void shm_entry_publish(uint32_t *state, uint32_t value)
{
    /* release: an entry's fields, written before, are visible to whoever reads its state */
    shm_store_release(state, value);
}

uint64_t shm_ctl_new_member_token(void *base)
{
    /* under the lock (G3); the atomic add also keeps a lock-less caller honest */
    return shm_fetch_add(&CTL(base)->next_member_token, 1);
}

/* Under the lock (G1), on a FREE entry: names it, resets its counters and
 * publishes it LIVE (release, last). change_seq keeps counting from the
 * entry's earlier life, so it never repeats for a member holding the entry. */
int shm_group_init(struct shm_group_entry *g, const char *name, uint32_t name_len, uint32_t assignor)
{
    if (name_len == 0 || name_len > SHM_GROUP_NAME_MAX)
        return SHM_E_INVALID;
    memset(g->name, 0, sizeof g->name);
    memcpy(g->name, name, name_len);
    g->name_len = name_len;
    g->generation = g->rebalances = 0;
    g->dirty = 0;
    g->assignor = assignor;
    g->created_ms = shm_now_ms();
    g->rebalanced_ms = 0;
    shm_entry_publish(&g->state, SHM_ENTRY_LIVE);
    return SHM_OK;
}

/* Under the lock: a rebalance of g starts writing (dirty = 1: a lock taker
 * that finds it set redoes the rebalance) with this assignor (< 0: keep).
 * shm_group_changed(g, 1) ends it. */
void shm_group_rebalance_begin(struct shm_group_entry *g, int64_t assignor)
{
    shm_store_relaxed(&g->dirty, 1);
    if (assignor >= 0)
        shm_store_relaxed(&g->assignor, (uint32_t)assignor);
}

void shm_group_changed(struct shm_group_entry *g, int rebalanced)
{
    if (rebalanced) {
        shm_store_relaxed(&g->generation, g->generation + 1);
        shm_store_relaxed(&g->rebalances, g->rebalances + 1);
        shm_store_relaxed(&g->rebalanced_ms, shm_now_ms());
    }
    /* release (G5): owners, pendings and members written under the lock are
     * visible to a member whose acquire load sees the new change_seq */
    shm_store_release(&g->change_seq, g->change_seq + 1);
    if (rebalanced)
        shm_store_relaxed(&g->dirty, 0);   /* the rebalance is complete */
}

static void put_name(char *dst, uint32_t cap, const char *src, uint32_t len)
{
    memset(dst, 0, cap);
    memcpy(dst, src, len);
}

/* Under the lock (G1): writes every field of member entry m but its state
 * and topics (shm_member_set_topics); the caller publishes a FREE entry
 * afterwards (shm_entry_publish), or refills its own LIVE one (a static
 * member's rejoin: lock-free readers then see old or new values per field,
 * as they do for heartbeats). heartbeat_ms/polled_ms start at now_ms
 * (CLOCK_MONOTONIC); joined_ms is the wall clock. */
int shm_member_fill(struct shm_member_entry *m, uint32_t group, uint64_t token, uint32_t pid, uint64_t start_time,
                    uint32_t flags, int64_t now_ms, int32_t session_timeout_ms, int32_t max_poll_interval_ms,
                    uint32_t assignor, const char *member_id, uint32_t member_id_len, const char *instance_id,
                    uint32_t instance_id_len, const char *client_id, uint32_t client_id_len)
{
    if (member_id_len > SHM_MEMBER_ID_MAX || instance_id_len > SHM_MEMBER_ID_MAX ||
        client_id_len >= sizeof m->client_id)
        return SHM_E_INVALID;
    m->group = group;
    m->token = token;
    m->pid = pid;
    m->start_time = start_time;
    m->flags = flags;
    shm_member_beat(m, now_ms, now_ms);
    m->joined_ms = shm_now_ms();
    m->session_timeout_ms = session_timeout_ms;
    m->max_poll_interval_ms = max_poll_interval_ms;
    m->assignor = assignor;
    put_name(m->member_id, sizeof m->member_id, member_id, member_id_len);
    m->member_id_len = member_id_len;
    put_name(m->instance_id, sizeof m->instance_id, instance_id, instance_id_len);
    m->instance_id_len = instance_id_len;
    put_name(m->client_id, sizeof m->client_id, client_id, client_id_len);
    return SHM_OK;
}

/* Under the lock (G1): the member's subscription, as resolved now. A
 * rebalance (by the caller, same lock hold) reads it. */
int shm_member_set_topics(struct shm_member_entry *m, const struct shm_member_topic *topics, uint32_t n)
{
    if (n > SHM_MEMBER_TOPICS)
        return SHM_E_INVALID;
    memcpy(m->topics, topics, n * sizeof *topics);
    m->n_topics = n;
    return SHM_OK;
}

/* Under the lock (G1), on a FREE entry: (group, topic, generation,
 * partition) with no owner, no pending move and committed offset committed
 * (-1: none), published LIVE last (release). */
void shm_offset_init(struct shm_offset_entry *e, uint32_t group, uint32_t topic, uint64_t topic_generation,
                     uint32_t partition, int64_t committed)
{
    e->group = group;
    e->topic = topic;
    e->topic_generation = topic_generation;
    e->partition = partition;
    e->pending = 0;
    e->commit_ms = 0;
    e->commits = 0;
    shm_offset_set_owner(e, 0, committed);
    shm_entry_publish(&e->state, SHM_ENTRY_LIVE);
}

/* Under the lock (G1, G4): the token the partition moves to,
 * SHM_OWNER_RELEASE, or 0. Relaxed: a member acts on it after the acquire
 * load of change_seq that shm_group_changed releases after it, and
 * re-checks it under the lock before it hands over. */
void shm_offset_set_pending(struct shm_offset_entry *e, uint64_t pending)
{
    shm_store_relaxed(&e->pending, pending);
}

/* Under the lock, restoring the snapshot into a new control segment: no
 * owner, committed offset and its time as the snapshot holds them. */
void shm_offset_restore(struct shm_offset_entry *e, int64_t committed, int64_t commit_ms)
{
    shm_offset_set_owner(e, 0, committed);
    shm_store_relaxed(&e->commit_ms, commit_ms);
}

/* the topic table's epoch (every reader: a consumer's poll, handles, the
 * persister). Express tier: never blocks, no errno. Acquire pairs with the
 * release that bumps it. */
uint64_t shmx_ctl_epoch(const void *base)
{
    return shm_load_acquire(&CTL(base)->topics_epoch);
}

/* express tier (never blocks, no errno): the consumer's poll calls it once */
uint64_t shmx_group_change_seq(const struct shm_group_entry *g)
{
    /* acquire (G5): pairs with shm_group_changed */
    return shm_load_acquire(&g->change_seq);
}

void shm_member_beat(struct shm_member_entry *m, int64_t heartbeat_ms, int64_t polled_ms)
{
    /* relaxed: each is one self-contained fact read by reapers, nothing depends on its order */
    shm_store_relaxed(&m->heartbeat_ms, heartbeat_ms);
    if (polled_ms >= 0)
        shm_store_relaxed(&m->polled_ms, polled_ms);
}

/* G2: stores offset as the committed offset if token owns the entry now.
 * token 0 is an unfenced commit (no membership: Kafka assign mode, admin
 * tools): it succeeds only while nobody owns the partition. */
int shm_offset_commit(void *base, struct shm_offset_entry *e, uint64_t token, int64_t offset)
{
    uint64_t *pair = (uint64_t *)&e->committed;
    for (;;) {
        uint64_t lo, hi;
        shm_pair_snapshot(pair, &lo, &hi);
        if (hi != token)
            return SHM_E_FENCED;
        /* the CAS (a full barrier) fails if owner changed since the snapshot */
        if (shm_cas_pair(pair, lo, hi, (uint64_t)offset, token))
            break;
    }
    shm_store_relaxed(&e->commit_ms, shm_now_ms());
    shm_fetch_add(&e->commits, 1);
    /* seq_cst add: a snapshot writer that reads the new commit_seq reads this commit */
    shm_fetch_add(&CTL(base)->commit_seq, 1);
    return SHM_OK;
}

/* Under the lock: changes the owner, keeping the committed offset when
 * committed_or_keep is SHM_OFFSET_KEEP (any value below -1); restore and
 * reset write one (>= -1). A pair CAS, so a
 * concurrent commit either lands before (and is kept) or fails (G2). */
void shm_offset_set_owner(struct shm_offset_entry *e, uint64_t owner, int64_t committed_or_keep)
{
    uint64_t *pair = (uint64_t *)&e->committed;
    for (;;) {
        uint64_t lo, hi;
        shm_pair_snapshot(pair, &lo, &hi);
        uint64_t nlo = committed_or_keep >= -1 ? (uint64_t)committed_or_keep : lo;
        if (shm_cas_pair(pair, lo, hi, nlo, owner))
            return;
    }
}

uint64_t shm_ctl_commit_seq(const void *base)
{
    return shm_load_acquire(&CTL(base)->commit_seq);
}
