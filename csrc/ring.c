/* ring.c — a partition ring in shared memory: reserve, commit, read, seal.
 *
 * Owns: every access to a ring's header cursors, producer slots and frames.
 * Must never: block a reader on a writer, block a writer on a reader (except
 * on an overflow=block ring, and then only on a live reader), let a
 * producer overwrite a frame that is not yet committed (or, on a durable
 * ring, not yet persisted), or hand a caller bytes that a later lap may have
 * torn.
 *
 * Layout: [shm_ring_header (16 KiB)][data: capacity bytes, a power of two].
 * A frame at position p lives at data[(p - base_position) & (cap-1)] and
 * never wraps: when the space left before the end is too small, the
 * reservation covers it with a PAD frame.
 *
 * Invariants
 *  I1 head <= persisted (durable) <= tail, and tail - head <= capacity: the
 *     bytes of every frame in [head, tail) are intact in the ring.
 *  I2 tail = (pos, offset) moves by one 16-byte CAS per reservation, so the
 *     byte order of frames is their offset order; every reservation claims
 *     at least one offset.
 *  I3 A frame is complete iff its commit word equals pos ^ SHM_COMMIT_XOR.
 *     The commit store is the writer's last store to the frame (release, and
 *     seq_cst so the waiter check after it cannot be hoisted above it).
 *     Bytes of an older lap hold other positions and never match.
 *  I4 A producer writes only inside its own reservation, and only after
 *     head has passed every frame the reservation overlaps from the lap
 *     before (make_room), so an overwritten frame was always complete.
 *  I5 Readers copy, then re-check head (seqlock): if head passed the frame's
 *     position during the copy, the copy is discarded.
 *  I6 Every frame starts with at least 16 bytes before the ring's end: a
 *     reservation that would leave exactly 8 pads to the end instead.
 *
 * Who writes what: tail — producers (CAS). head — producers making room
 * (CAS). persisted/fsynced — the persister. data_waiters — consumers;
 * data_seq — producers and sealers. Slots — their owner; a sealer only after
 * proving the owner dead, under seal_lock.
 *
 * A producer dying at each step:
 *  - before publishing INTENT: nothing reserved; its slot is reclaimed once
 *    its liveness token is found dead.
 *  - INTENT published, CAS not done or failed: tail did not move for it (or
 *    moved for someone else, whose slot also names the position).
 *  - CAS done (INTENT or RESERVED): readers wait at that position; after the
 *    unblock timeout a reader or producer calls shm_ring_seal_stuck, which
 *    finds the dead owner's slot and commits a GAP frame over exactly its
 *    reservation (and the PAD before it). The offsets become a gap.
 *  - frame written, not committed: same as above; the bytes are discarded.
 *  - committed, slot not yet IDLE: the frame is complete; the stale slot is
 *    ignored (its position is committed) and reclaimed later.
 *
 * overflow=block (ephemeral rings, issue 13)
 * On a ring whose overflow is SHM_OVERFLOW_BLOCK a producer never moves head
 * past a frame that a live attached reader has not finished copying; it
 * waits instead (bounded by its timeout, then SHM_E_FULL: BufferFull).
 *  B1 Every attached reader (a consumer's cursor on one partition it reads)
 *     owns one reader slot: owner is claimed by CAS with the owner word of
 *     pid + start_time (as producer slots), then pos, pid and, last, with a
 *     release store, start_time. A scanner that loads owner, then start_time
 *     (acquire) and finds owner == owner_word(pid, start_time) reads a pos at
 *     least as new as the claim's. Anything else is "free or being filled":
 *     ignored.
 *  B2 pos is the first position the reader has not finished with. The reader
 *     stores it (seq_cst, so release) only after its copy of the frames below
 *     it passed the lap check (I5): the bytes below pos are never needed by it
 *     again. pos grows, except by the owner's own seek.
 *  B3 make_room on a BLOCK ring passes the frame at hp only if every
 *     identified slot in [0, reader_hi) with pos >= hp has pos > hp (the
 *     floor, scanned once per make_room call with acquire loads, before the
 *     head CAS and the overwrite: the reader's copy happens-before our
 *     overwrite). A stale floor is lower than the truth, so only more
 *     cautious. A slot with pos < hp was lapped before it was protected (B4)
 *     and is ignored (its reader gets SHM_E_OUT_OF_RANGE and seeks).
 *  B4 Protection starts with the first floor scan that sees the claim; a
 *     reservation already inside make_room may still pass the frames its
 *     older floor allowed (at most what it needed). A backward seek is the
 *     same: protected from the next scan. The claim stores the cursor's pos
 *     as it is; a pos below head is a lap the next read reports.
 *  B5 Wake-ups: a blocked producer announces itself in space_waiters
 *     (seq_cst RMW), then re-loads the blocking slot's pos before sleeping on
 *     space_seq; a reader stores pos (seq_cst), then loads space_waiters and,
 *     when not 0, bumps space_seq and futex-wakes. One of the two sees the
 *     other (Dekker); the sleep is also sliced at 2 ms.
 *  B6 A slot whose owner is dead (liveness token) is freed (CAS owner -> 0,
 *     readers_freed++) by whoever proves it: a producer blocked on that slot
 *     for unblock_ns, shm_ring_seal_dead (the supervisor's tick), a claimer
 *     finding the table full. The freer never writes pos: a new claimer may
 *     already own the slot. A live owner releases its own slot: pos = DONE
 *     (blocks nobody), then owner = 0 (release), then wakes space waiters.
 *
 * Who writes what: a reader slot's owner, pid, start_time and pos — its
 * owner (a freer only CASes owner to 0 after proving it dead); reader_hi —
 * claimers (CAS, grows only); overflow — alter_topic (relaxed); blocked_ns,
 * blocked_waits — producers that waited on a reader (relaxed adds).
 *
 * A reader dying at each step:
 *  - after the owner CAS, before start_time: the slot never becomes
 *    identified: ignored by every floor, but never freed (one slot leaks, as
 *    a producer slot claimed and not filled in does).
 *  - identified, reading or stopped: its pos stays where it was; producers
 *    block on it. A producer blocked on it for unblock_ns checks its
 *    liveness token and, dead, frees it (B6); so does the supervisor's tick.
 *    kill -9 of a slow consumer releases its producers within unblock_ns.
 *  - after a copy, before the pos store: pos is older than what it read:
 *    more cautious; freed as above.
 *  - releasing, after pos = DONE, before owner = 0: blocks nobody; freed by
 *    the next sweep that finds it dead.
 *  B7 Zero-copy views (Consumer(copy=False)): a reader that hands out a view
 *     of a frame in the ring moves its cursor past the frame without
 *     publishing (shmx_large_confirm with publish 0): its slot's pos stays at
 *     the frame, so by B3 no producer overwrites it, until the reader's next
 *     poll releases the views and publishes (shmx_reader_publish). Only on a
 *     BLOCK ring and only with a claimed slot; else the reader copies.
 * A producer dying while it waits on a reader holds no reservation (tail did
 * not move for it); its space_waiters increment stays (readers then wake on
 * every advance: a cost, not a fault), its producer slot is reclaimed as any.
 * A reader that is alive but never reads (SIGSTOP, not polling, a paused
 * partition: pause keeps the position, as Kafka's does) blocks producers up
 * to their timeout: that is the point of the mode.
 *
 * Memory follows traffic (issue 13.6)
 * A ring's data area is `capacity` bytes of address space, but only the part
 * its first lap has reached has memory behind it: an idle partition holds its
 * 16 KiB header and SHM_RING_INITIAL_COMMIT (64 KiB) of data, not 64 MiB.
 *  M1 committed_bytes (span 0) says data bytes [0, committed) have pages in
 *     the segment (tmpfs) whoever committed them; it starts at
 *     SHM_RING_INITIAL_COMMIT (shm_ring_init commits them) and only grows,
 *     to capacity. Where the kernel cannot populate on request the creator
 *     committed everything and committed_bytes = capacity from the start.
 *  M2 A producer never writes a byte at or past committed: before its tail
 *     CAS, a reservation whose end (relative to base_position) lies past
 *     committed first commits up to it (commit_more: the memory-reserve
 *     check, then MADV_POPULATE_WRITE; doubling, at most SHM_RING_GROW_MAX a
 *     step), then re-reads the tail. Positions of later laps map below
 *     capacity, all committed after the first. A commit the host cannot
 *     afford is SHM_E_NOSPACE (NoSpace): the producer gets an error, the
 *     ring keeps every frame it has, and no process ever takes SIGBUS or
 *     the OOM killer for it.
 *  M3 committed is published (CAS, release) only after the pages were
 *     populated, so a producer that sees it (acquire) writes into pages the
 *     segment already has. Readers read only below tail, so only committed
 *     bytes. Nothing un-commits: a ring that once filled keeps its memory
 *     until the topic is deleted (as Kafka keeps a segment file).
 *  M4 Mapping never populates (a read fault on a hole of a shared tmpfs
 *     mapping would commit it); shm_ring_open populates the page tables of
 *     the header and of the data committed at that moment, and later commits
 *     fault in once per page per process.
 * Who writes what: committed_bytes — producers (CAS to a larger value).
 * A producer dying at each step: before or during the populate — the pages
 * it populated stay (they are the segment's; the next producer re-populates
 * them for free) and committed did not move; after the CAS — the commit
 * stands, nothing reserved; in every case no reservation exists yet (M2
 * comes before the tail CAS), so the death analysis above is unchanged.
 *
 * Producer loans (issue 13.3: Producer.reserve, writing a record in place)
 * A loan is an ordinary reservation whose frame is finished by the caller:
 * shm_loan_begin reserves one DATA frame for one record of value_len bytes
 * (the bytes shm_send would write: RecordBatch v2 header, the record's
 * prefix, the value area, the headers), writes everything but the value and
 * the CRC, and returns where the value goes; the caller fills it in place;
 * shm_loan_commit sums the CRC-32C over the batch and publishes the frame
 * (I3), or shm_loan_abort publishes a GAP over exactly the reservation.
 *  L1 A loan holds its OWN producer slot (the caller's loan slot, claimed
 *     like any producer slot and never the partition's send slot) in
 *     RESERVED from the tail CAS to its commit or abort. The send slot is
 *     held (BUSY) only across the reservation itself, so that a stamped
 *     (idempotent) producer's sequence numbers follow its offsets; it is
 *     IDLE again before shm_loan_begin returns. So a send, a batch or a
 *     transaction marker of the same thread to the same partition while the
 *     loan is open never waits on the loan's slot: it reserves after it and
 *     commits on its own. Readers of the partition stop at the open loan
 *     (frames commit in any order, are read in position order), exactly as
 *     behind a slow send.
 *  L2 Only the frame's value area is handed out, and only while the loan is
 *     open: the binding releases its view (a stale view raises ValueError)
 *     before it calls commit or abort, and refuses to commit when anything
 *     derived from the view still holds the bytes (aborted as a gap
 *     instead). commit and abort check that the loan slot is still the
 *     caller's own (pid) and RESERVED on this very frame, so a loan
 *     committed twice, or a child's copy of its parent's loan after fork(),
 *     writes nothing.
 *  L3 An aborted loan is a GAP frame (the same body shm_ring_seal_stuck
 *     writes for a dead writer): its offset is consumed, never reused;
 *     readers and the persister pass it; on a durable topic it is copied to
 *     the segment files as any frame.
 *  L4 The CRC is summed at commit over the bytes then in the frame: what the
 *     caller wrote is what readers verify. A frame is never published with a
 *     CRC of bytes that may still change (L2).
 * Who writes what: the loan's frame — its owner only, between begin and
 * commit/abort (I4); a sealer only after proving the owner dead.
 * A loan holder dying at each step:
 *  - inside begin (reserving): as any producer above; the send slot it held
 *    BUSY is reclaimed with the process's other slots.
 *  - loan open (value half written): its slot is RESERVED with a dead owner:
 *    after unblock_ns a blocked reader or producer, or the supervisor's
 *    sweep (shm_ring_seal_dead), seals exactly its reservation as a GAP.
 *    Everything committed before it stays; frames reserved after it (other
 *    producers) commit and are read after the gap. The half-written bytes
 *    are never read: a GAP body says only which offsets were lost.
 *  - inside commit, before the commit store: the same; after it: the frame
 *    is complete and the stale RESERVED slot is settled (slot_settled).
 * A LIVE holder that keeps a loan open (slow, SIGSTOPped, a bug) is never
 * sealed over: readers of the partition wait at its frame (unblock_ns only
 * makes them check its liveness, shm_ring_seal_stuck answers SHM_E_BUSY);
 * producers that need the frame's space a lap later wait up to their
 * max_block_ms, then BufferFull names the holder (shm_ring_blocker). That is
 * the cost of writing in place, and why a loan should be short.
 */
#define _GNU_SOURCE
#include "shmlog.h"
#include "atomics.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"

static int64_t test_hold_ns;   /* test hook: sleep between reserve and commit */

void shm_test_set_hold_ns(int64_t ns) { test_hold_ns = ns; }

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------ init/check */

int shm_ring_init(void *base, uint64_t capacity, uint64_t topic_generation, uint32_t partition,
                  uint32_t persistence, uint32_t max_frame_bytes, int64_t base_offset,
                  uint64_t base_position)
{
    struct shm_ring_header *h = HDR(base);
    if (capacity < SHM_RING_MIN_BYTES || capacity > (uint64_t)SHM_RING_MAX_BYTES ||
        (capacity & (capacity - 1)) || base_position % SHM_FRAME_ALIGN || base_offset < 0 ||
        max_frame_bytes < SHM_FRAME_HEADER_BYTES + SHM_BATCH_HEADER_BYTES + 8 ||
        max_frame_bytes > capacity / 2)
        return SHM_E_INVALID;
    h->magic = SHM_RING_MAGIC;
    h->header_bytes = SHM_RING_HEADER_BYTES;
    h->capacity = capacity;
    h->total_bytes = SHM_RING_HEADER_BYTES + capacity;
    h->topic_generation = topic_generation;
    h->partition = partition;
    h->persistence = persistence;
    h->max_frame_bytes = max_frame_bytes;
    h->created_ms = shm_now_ms();
    h->base_offset = base_offset;
    h->base_position = base_position;
    h->tail_pos = h->head_pos = h->persisted_pos = h->fsynced_pos = base_position;
    h->tail_offset = h->head_offset = base_offset;
    /* M1: the first SHM_RING_INITIAL_COMMIT data bytes get memory now;
     * where the kernel cannot commit later the creator committed it all */
    uint64_t initial = SHM_RING_INITIAL_COMMIT < capacity ? SHM_RING_INITIAL_COMMIT : capacity;
    if (!shm_lazy_commit_supported())
        initial = capacity;
    else if (shm_commit_pages(DATA(base), initial) != SHM_OK)
        return SHM_E_NOSPACE;
    h->committed_bytes = initial;

    if (shm_robust_mutex_init(h->seal_lock) != SHM_OK)
        return SHM_E_SYS;
    /* release: every field above is visible to whoever reads version != 0 */
    shm_store_release(&h->version, SHM_LAYOUT_STAMP);
    return SHM_OK;
}

_Static_assert(sizeof(pthread_mutex_t) <= 64, "robust mutex fits its slot");

int shm_ring_check(const void *base, uint64_t mapped_bytes)
{
    const struct shm_ring_header *h = HDR(base);
    if (mapped_bytes < SHM_RING_HEADER_BYTES || h->magic != SHM_RING_MAGIC)
        return SHM_E_LAYOUT;
    /* acquire: pairs with the creator's release of version */
    uint32_t v = shm_load_acquire(&h->version);
    if (v == 0)
        return SHM_E_AGAIN;
    if (v != SHM_LAYOUT_STAMP || h->header_bytes != SHM_RING_HEADER_BYTES ||
        h->total_bytes != mapped_bytes || h->capacity + SHM_RING_HEADER_BYTES != mapped_bytes ||
        (h->capacity & (h->capacity - 1)))
        return SHM_E_LAYOUT;
    return SHM_OK;
}

/* Fills the process-local handle r from a mapping of mapped_bytes that
 * shm_ring_check accepted: the geometry is copied here once, and every later
 * access indexes with these copies (frame.h), so a header rewritten after
 * this (a crafted capacity or base_position) cannot move an access outside
 * the mapping. SHM_E_LAYOUT / SHM_E_AGAIN as shm_ring_check. */
int shm_ring_open(struct shm_ring *r, void *base, uint64_t mapped_bytes, int writable)
{
    memset(r, 0, sizeof *r);
    int rc = shm_ring_check(base, mapped_bytes);
    if (rc != SHM_OK)
        return rc;
    const struct shm_ring_header *h = HDR(base);
    /* one read of each field into a local: what was checked is what is kept */
    uint64_t cap = __atomic_load_n(&h->capacity, __ATOMIC_RELAXED);
    uint64_t bp = __atomic_load_n(&h->base_position, __ATOMIC_RELAXED);
    uint32_t persistence = __atomic_load_n(&h->persistence, __ATOMIC_RELAXED);
    if (cap < SHM_RING_MIN_BYTES || cap > (uint64_t)SHM_RING_MAX_BYTES || (cap & (cap - 1)) ||
        cap + SHM_RING_HEADER_BYTES != mapped_bytes || bp % SHM_FRAME_ALIGN ||
        (persistence != SHM_PERSIST_NONE && persistence != SHM_PERSIST_DISK))
        return SHM_E_LAYOUT;
    r->hdr = HDR(base);
    r->data = DATA(base);
    r->capacity = cap;
    r->mask = cap - 1;
    r->base_position = bp;
    r->mapped_bytes = mapped_bytes;
    r->persistence = persistence;
    r->max_frame_cap = (uint32_t)(cap / 2 < UINT32_MAX ? cap / 2 : UINT32_MAX);
    r->writable = writable;
    r->magic = SHM_RING_HANDLE_MAGIC;
    /* M4: page tables for the header and the committed data now, not a
     * fault per page on the hot path (the data committed later faults in) */
    uint64_t committed = shm_load_acquire(&h->committed_bytes);
    if (committed > cap)
        committed = cap;
    (void)madvise(base, SHM_RING_HEADER_BYTES + committed, writable ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
    return SHM_OK;
}

/* M2: commits data pages past `have` so that [0, need) is committed:
 * doubling, at most SHM_RING_GROW_MAX a step, page-aligned, never past the
 * capacity. Any number of producers may race here: populating a page twice
 * is harmless and committed_bytes only grows (CAS to the larger value). */
static int commit_more(const struct shm_ring *r, uint64_t need, uint64_t have)
{
    uint64_t step = have < SHM_RING_GROW_MAX ? have : SHM_RING_GROW_MAX;
    if (step < SHM_RING_INITIAL_COMMIT)
        step = SHM_RING_INITIAL_COMMIT;
    uint64_t want = have + step > need ? have + step : need;
    want = (want + SHM_PAGE_BYTES - 1) & ~(uint64_t)(SHM_PAGE_BYTES - 1);
    if (want > r->capacity)
        want = r->capacity;
    int rc = shm_commit_pages(r->data + have, want - have);
    if (rc != SHM_OK)
        return rc;
    uint64_t *cb = &r->hdr->committed_bytes;
    uint64_t cur = shm_load_relaxed(cb);
    /* release: pairs with the acquire in reserve and open (M3) */
    while (cur < want && !shm_cas_u64(cb, cur, want))
        cur = shm_load_relaxed(cb);
    return SHM_OK;
}

/* a handle shm_ring_open filled (not a raw mapping passed by mistake) */
static inline int handle_ok(const struct shm_ring *r)
{
    return r && r->magic == SHM_RING_HANDLE_MAGIC;
}

/* ------------------------------------------------------------ seal lock */

static int seal_lock(struct shm_ring_header *h)
{
    int rc = pthread_mutex_lock((pthread_mutex_t *)h->seal_lock);
    if (rc == EOWNERDEAD) {
        /* a sealer died holding it; every sealing step is idempotent */
        pthread_mutex_consistent((pthread_mutex_t *)h->seal_lock);
        rc = 0;
    }
    return rc == 0 ? SHM_OK : SHM_E_SYS;
}

static void seal_unlock(struct shm_ring_header *h)
{
    pthread_mutex_unlock((pthread_mutex_t *)h->seal_lock);
}

/* ------------------------------------------------------------ slots */

static inline uint64_t owner_word(uint32_t pid, uint64_t start_time)
{
    return (start_time << 32) | pid | ((uint64_t)1 << 63);
}

static int slot_owner_dead(const struct shm_producer_slot *s, const char *token_prefix)
{
    uint64_t ow = shm_load_acquire(&s->owner);
    uint32_t pid = shm_load_relaxed(&s->pid);
    uint64_t st = shm_load_relaxed(&s->start_time);
    if (ow == 0 || ow != owner_word(pid, st))
        return 0;   /* free, or a claim still being filled in */
    return !shm_process_alive(token_prefix, pid, st);
}

/* Has the slot no reservation that still blocks the ring? IDLE and BUSY
 * never reserved; INTENT/RESERVED are settled once the position they name
 * is committed (the owner finished, or another producer won the CAS and
 * finished), has been passed by head, or was never reserved at all (tail has
 * not reached it). Only an unsettled slot needs shm_ring_seal_stuck. */
static int slot_settled(const struct shm_ring *r, const struct shm_producer_slot *s)
{
    const struct shm_ring_header *h = r->hdr;
    uint32_t st = shm_load_acquire(&s->state);
    if (st == SHM_SLOT_IDLE || st == SHM_SLOT_BUSY)
        return 1;
    uint64_t fp = s->frame_pos, rp = s->res_pos;
    if (shm_load_acquire(&h->tail_pos) <= rp || shm_load_acquire(&h->head_pos) > fp)
        return 1;
    return shm_load_acquire(&FRAME(r, fp)->commit) == commit_word(fp);
}

/* Under seal_lock: frees slot s if its owner is dead and it holds no open reservation. */
static void free_if_dead_and_settled(const struct shm_ring *r, struct shm_producer_slot *s,
                                     const char *token_prefix)
{
    if (slot_settled(r, s) && slot_owner_dead(s, token_prefix)) {
        shm_store_relaxed(&s->state, SHM_SLOT_IDLE);
        /* release: the slot is idle before another process can claim it */
        shm_store_release(&s->owner, 0);
    }
}

int shm_ring_claim_slot(const struct shm_ring *r, uint32_t pid, uint64_t start_time, const char *token_prefix)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    struct shm_ring_header *h = r->hdr;
    uint64_t me = owner_word(pid, start_time);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < SHM_PRODUCER_SLOTS; i++) {
            struct shm_producer_slot *s = &h->slots[i];
            if (shm_load_relaxed(&s->owner) != 0 || !shm_cas_u64(&s->owner, 0, me))
                continue;
            shm_store_relaxed(&s->pid, pid);
            shm_store_relaxed(&s->start_time, start_time);
            /* release: owner identity is complete before the state is read as IDLE */
            shm_store_release(&s->state, SHM_SLOT_IDLE);
            return i;
        }
        /* table full: free the slots of dead owners that hold no open reservation */
        if (seal_lock(h) != SHM_OK)
            return SHM_E_SYS;
        for (int i = 0; i < SHM_PRODUCER_SLOTS; i++)
            free_if_dead_and_settled(r, &h->slots[i], token_prefix);
        seal_unlock(h);
    }
    return SHM_E_NO_SLOT;
}

void shm_ring_release_slot(void *base, int slot)
{
    struct shm_producer_slot *s = &HDR(base)->slots[slot];
    shm_store_relaxed(&s->state, SHM_SLOT_IDLE);
    /* release: the slot's last reservation is finished before others may claim it */
    shm_store_release(&s->owner, 0);
}

/* ------------------------------------------------------------ reader slots (overflow=block) */

#define READER_DONE UINT64_MAX   /* pos of a slot being released: blocks nobody (B6) */

/* B1: is slot s held by an identified owner? Then *pos is its position. */
static inline int reader_identified(const struct shm_reader_slot *s, uint64_t *pos)
{
    uint64_t ow = shm_load_acquire(&s->owner);
    if (ow == 0)
        return 0;
    /* acquire: pairs with the claimer's release of start_time: pos is the claim's or newer */
    uint64_t st = shm_load_acquire(&s->start_time);
    uint32_t pid = shm_load_relaxed(&s->pid);
    if (ow != owner_word(pid, st))
        return 0;
    /* acquire: the reader's copy below pos happens-before what we do after this (B2) */
    *pos = shm_load_acquire(&s->pos);
    return 1;
}

static inline uint32_t reader_count(const struct shm_ring_header *h)
{
    /* acquire: pairs with the claimer's CAS; a slot claimed after this load is B4's late claim */
    uint32_t n = shm_load_acquire(&h->reader_hi);
    return n > SHM_READER_SLOTS ? SHM_READER_SLOTS : n;
}

/* B3: the lowest pos >= hp of an identified reader and its slot (*slot), or
 * UINT64_MAX and -1 when no reader holds anything at or after hp. */
static uint64_t reader_floor(const struct shm_ring_header *h, uint64_t hp, int *slot)
{
    uint64_t floor = UINT64_MAX;
    *slot = -1;
    for (uint32_t i = 0, n = reader_count(h); i < n; i++) {
        uint64_t p;
        if (reader_identified(&h->readers[i], &p) && p >= hp && p < floor) {
            floor = p;
            *slot = (int)i;
        }
    }
    return floor;
}

/* B6: frees reader slot i if its identified owner is dead; 1 when freed. */
static int free_reader_if_dead(struct shm_ring_header *h, int i, const char *token_prefix)
{
    struct shm_reader_slot *s = &h->readers[i];
    uint64_t ow = shm_load_acquire(&s->owner);
    /* acquire: as in reader_identified */
    uint64_t st = shm_load_acquire(&s->start_time);
    uint32_t pid = shm_load_relaxed(&s->pid);
    if (ow == 0 || ow != owner_word(pid, st) || shm_process_alive(token_prefix, pid, st))
        return 0;
    /* full barrier (CAS): only the dead owner's word is replaced; pos is left to the next claimer */
    if (!shm_cas_u64(&s->owner, ow, 0))
        return 0;
    __atomic_fetch_add(&h->readers_freed, 1, __ATOMIC_RELAXED);
    wake(&h->space_seq);
    return 1;
}

/* Claims a reader slot in the ring whose WRITABLE header mapping is hdr for
 * cursor cur, at cur->pos (B1, B4). Returns the slot index, SHM_E_NO_SLOT
 * when all are held by live owners, SHM_E_INVALID when cur holds one. */
int shm_reader_claim(void *hdr, uint32_t pid, uint64_t start_time, const char *token_prefix,
                     struct shm_cursor *cur)
{
    struct shm_ring_header *h = HDR(hdr);
    if (cur->reader_hdr)
        return SHM_E_INVALID;
    uint64_t me = owner_word(pid, start_time);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < SHM_READER_SLOTS; i++) {
            struct shm_reader_slot *s = &h->readers[i];
            if (shm_load_relaxed(&s->owner) != 0 || !shm_cas_u64(&s->owner, 0, me))
                continue;
            shm_store_relaxed(&s->pos, cur->pos);
            shm_store_relaxed(&s->pid, pid);
            shm_store_relaxed(&s->claimed_ms, shm_now_ms());
            /* release: pos and pid are visible to whoever reads this start_time (B1) */
            shm_store_release(&s->start_time, start_time);
            uint32_t hi = shm_load_relaxed(&h->reader_hi);
            while (hi < (uint32_t)i + 1 && !shm_cas_u32(&h->reader_hi, hi, (uint32_t)i + 1))
                hi = shm_load_relaxed(&h->reader_hi);
            cur->reader_hdr = h;
            cur->reader = i;
            return i;
        }
        for (int i = 0; i < SHM_READER_SLOTS; i++)
            free_reader_if_dead(h, i, token_prefix);
    }
    return SHM_E_NO_SLOT;
}

/* Releases cur's reader slot at once (B6): blocks nobody from here on. */
void shm_reader_release(struct shm_cursor *cur)
{
    struct shm_ring_header *h = cur->reader_hdr;
    if (!h || cur->reader < 0 || cur->reader >= SHM_READER_SLOTS)
        return;
    struct shm_reader_slot *s = &h->readers[cur->reader];
    shm_store_relaxed(&s->pos, READER_DONE);
    /* release: DONE is visible before the slot can be claimed again (B6) */
    shm_store_release(&s->owner, 0);
    cur->reader_hdr = NULL;
    /* seq_cst fence: the release is ordered before the waiter load (B5) */
    shm_fence_seq_cst();
    if (__atomic_load_n(&h->space_waiters, __ATOMIC_SEQ_CST) != 0)
        wake(&h->space_seq);
}

/* B2/B5: after a read or a seek moved cur, publish its position. */
static inline void reader_publish(const struct shm_cursor *cur)
{
    struct shm_ring_header *h = cur->reader_hdr;
    if (__builtin_expect(h == NULL, 1))
        return;
    struct shm_reader_slot *s = &h->readers[cur->reader];
    if (shm_load_relaxed(&s->pos) == cur->pos)
        return;
    /* seq_cst store: releases our finished copy to producers (B2) and orders
     * the waiter load after it (Dekker with the producer's re-load, B5) */
    shm_store_seq_cst(&s->pos, cur->pos);
    if (__builtin_expect(__atomic_load_n(&h->space_waiters, __ATOMIC_SEQ_CST) != 0, 0))
        wake(&h->space_seq);
}

/* The slowest identified reader (describe_topic): its slot, or -1; *pid, *pos. */
int shm_ring_slowest_reader(const void *base, uint32_t *pid, uint64_t *pos)
{
    const struct shm_ring_header *h = HDR(base);
    int slot = -1;
    uint64_t low = READER_DONE;
    for (uint32_t i = 0, n = reader_count(h); i < n; i++) {
        uint64_t p;
        if (reader_identified(&h->readers[i], &p) && p < low) {
            low = p;
            slot = (int)i;
            *pid = shm_load_relaxed(&h->readers[i].pid);
        }
    }
    *pos = low;
    return slot;
}

int shm_ring_set_overflow(void *base, uint32_t overflow)
{
    struct shm_ring_header *h = HDR(base);
    if (overflow != SHM_OVERFLOW_OVERWRITE && overflow != SHM_OVERFLOW_BLOCK)
        return SHM_E_INVALID;
    /* relaxed: producers read it at each make_room; a racing write uses the old or the new mode */
    shm_store_relaxed(&h->overflow, overflow);
    wake(&h->space_seq);   /* producers waiting on a reader re-decide */
    return SHM_OK;
}

/* ------------------------------------------------------------ wake-ups */

/* After a commit (or a seal): wake announced waiters. The caller's commit
 * store is seq_cst, so these loads cannot be satisfied before it: either we
 * see a waiter's announcement or the waiter's re-check sees our commit. */
static inline void wake_after_commit(struct shm_ring_header *h)
{
    if (__builtin_expect(__atomic_load_n(&h->data_waiters, __ATOMIC_SEQ_CST) != 0, 0))
        wake(&h->data_seq);
    if (__builtin_expect(__atomic_load_n(&h->space_waiters, __ATOMIC_SEQ_CST) != 0, 0))
        wake(&h->space_seq);
}

/* ------------------------------------------------------------ head */

/* Moves head forward until head_pos >= need. Passes only complete frames,
 * and on a durable ring only persisted ones. Returns SHM_OK, SHM_E_AGAIN
 * (waiting on the persister) or the position of an uncommitted frame in
 * *stuck with SHM_E_BUSY, or (overflow=block) ROOM_READER with the slot of
 * the reader that has not read the frame at head in *reader (B3). */
#define ROOM_READER 1   /* make_room: a live reader has not read the frame at head (B3) */

static int make_room(const struct shm_ring *r, uint64_t need, uint64_t *stuck, int *reader)
{
    struct shm_ring_header *h = r->hdr;
    int block = r->persistence == SHM_PERSIST_NONE && shm_load_relaxed(&h->overflow) == SHM_OVERFLOW_BLOCK;
    uint64_t floor = UINT64_MAX;
    int scanned = 0;
    for (;;) {
        uint64_t hp;
        int64_t ho;
        shm_pair_snapshot(&h->head_pos, &hp, (uint64_t *)&ho);
        if (hp >= need)
            return SHM_OK;
        if (block) {
            if (!scanned) {
                floor = reader_floor(h, hp, reader);
                scanned = 1;
            }
            if (floor <= hp) {
                *stuck = hp;
                return ROOM_READER;
            }
        }
        /* acquire: frames below persisted were fully copied before it moved */
        if (r->persistence == SHM_PERSIST_DISK && hp >= shm_load_acquire(&h->persisted_pos))
            return SHM_E_AGAIN;
        uint64_t next;
        int64_t noff = ho;
        struct shm_frame_header *fh = FRAME(r, hp);
        /* acquire: the frame's length and body are complete if this matches */
        if (shm_load_acquire(&fh->commit) != commit_word(hp)) {
            *stuck = hp;
            return SHM_E_BUSY;
        }
        int rc = frame_next(fh, hp, room_of(r, hp), ho, &next, &noff);
        if (rc != SHM_OK)
            return rc;
        /* full barrier (cmpxchg16b): head moves before we overwrite what it passed */
        /* overwritten_frames: dropped unread; on a block ring only with no reader attached (B3) */
        if (shm_cas_pair(&h->head_pos, hp, (uint64_t)ho, next, (uint64_t)noff) &&
            r->persistence == SHM_PERSIST_NONE && (!block || floor == UINT64_MAX))
            __atomic_fetch_add(&h->overwritten_frames, 1, __ATOMIC_RELAXED);
    }
}

/* ------------------------------------------------------------ reserve */

struct reservation {
    uint64_t res_pos, frame_pos, res_end;
    int64_t base_offset;
};

static int wait_for_space(const struct shm_ring *r, int64_t deadline_ns, uint32_t *spins,
                          const uint64_t *reader_pos, uint64_t seen)
{
    struct shm_ring_header *h = r->hdr;
    if (++*spins < 64) {
        shm_cpu_relax();
        return SHM_OK;
    }
    int64_t now = shm_monotonic_ns();
    if (deadline_ns >= 0 && now >= deadline_ns)
        return SHM_E_FULL;
    if (*spins < 256) {
        sched_yield();
        return SHM_OK;
    }
    shm_fetch_add(&h->space_waiters, 1);
    uint32_t seq = shm_load_acquire(&h->space_seq);
    /* B5: after announcing (seq_cst RMW), a reader that moved meanwhile is seen here */
    if (reader_pos && __atomic_load_n(reader_pos, __ATOMIC_SEQ_CST) != seen) {
        shm_fetch_sub(&h->space_waiters, 1);
        return SHM_OK;
    }
    if (r->persistence == SHM_PERSIST_DISK)
        wake(&h->persist_seq);        /* full because the persister is behind: call it */
    int64_t slice = 2000000;   /* re-check at least every 2 ms: head moves without a wake */
    if (deadline_ns >= 0 && deadline_ns - now < slice)
        slice = deadline_ns - now;
    shm_futex_wait(&h->space_seq, seq, slice);
    shm_fetch_sub(&h->space_waiters, 1);
    return SHM_OK;
}

/* timeout_ns == SHM_NOWAIT: return SHM_E_AGAIN instead of waiting */
#define SHM_NOWAIT INT64_MIN

/* overflow=block: how long this reservation has waited on a reader, and on which */
struct block_wait {
    int64_t since;          /* first wait on a reader, -1: none */
    int64_t on_since;       /* first wait on this slot */
    int slot;               /* the reader slot waited on, -1 */
};

static int reserve_inner(const struct shm_ring *ring, struct shm_producer_slot *s, uint64_t alen,
                         uint32_t count, uint32_t now_ms, int64_t timeout_ns, const char *token_prefix,
                         int64_t unblock_ns, struct reservation *res, struct block_wait *bw);

/* reserve_inner, and the time it waited on readers added to the ring's counters */
static int reserve(const struct shm_ring *r, struct shm_producer_slot *s, uint64_t alen,
                   uint32_t count, uint32_t now_ms, int64_t timeout_ns, const char *token_prefix,
                   int64_t unblock_ns, struct reservation *res)
{
    struct block_wait bw = {-1, -1, -1};
    int rc = reserve_inner(r, s, alen, count, now_ms, timeout_ns, token_prefix, unblock_ns, res, &bw);
    if (__builtin_expect(bw.since >= 0, 0)) {
        struct shm_ring_header *h = r->hdr;
        __atomic_fetch_add(&h->blocked_ns, (uint64_t)(shm_monotonic_ns() - bw.since), __ATOMIC_RELAXED);
        __atomic_fetch_add(&h->blocked_waits, 1, __ATOMIC_RELAXED);
    }
    return rc;
}

static int reserve_inner(const struct shm_ring *ring, struct shm_producer_slot *s, uint64_t alen,
                         uint32_t count, uint32_t now_ms, int64_t timeout_ns, const char *token_prefix,
                         int64_t unblock_ns, struct reservation *res, struct block_wait *bw)
{
    const struct shm_ring *r = ring;
    struct shm_ring_header *h = r->hdr;
    uint64_t cap = r->capacity;
    int64_t deadline = -1, stuck_since = -1;
    uint64_t stuck_at = ~(uint64_t)0;
    uint32_t spins = 0;
    for (;;) {
        /* a torn read of the pair only makes the CAS below fail */
        uint64_t t = shm_load_relaxed(&h->tail_pos);
        int64_t o = shm_load_relaxed(&h->tail_offset);
        uint64_t rem = room_of(r, t);
        /* I6: pad to the lap's end when the frame does not fit, or would
         * leave exactly 8 bytes (too few for a frame header) behind it */
        uint64_t pad = (rem < alen || rem - alen == SHM_FRAME_ALIGN) ? rem : 0;
        uint64_t end = t + pad + alen;
        /* M2: the first lap commits memory ahead of the frames it writes */
        uint64_t committed = shm_load_acquire(&h->committed_bytes);
        if (__builtin_expect(committed < cap, 0) && end - r->base_position > committed) {
            if (timeout_ns == SHM_NOWAIT)
                return SHM_E_AGAIN;     /* express keeps the GIL: commit in the blocking form */
            int rc = commit_more(r, end - r->base_position, committed);
            if (rc != SHM_OK)
                return rc;
            continue;
        }
        /* acquire: head's CAS (which made room) happens-before our writes */
        if (end > shm_load_acquire(&h->head_pos) + cap) {
            uint64_t stuck = 0;
            int reader = -1;
            int rc = make_room(r, end - cap, &stuck, &reader);
            if (rc == SHM_OK)
                continue;
            if (rc == SHM_E_CORRUPT)
                return rc;
            if (timeout_ns == SHM_NOWAIT)
                return SHM_E_AGAIN;
            if (deadline < 0 && timeout_ns >= 0)
                deadline = shm_monotonic_ns() + timeout_ns;
            if (rc == ROOM_READER) {
                /* B6: a reader that holds us for unblock_ns is checked for liveness */
                int64_t now = shm_monotonic_ns();
                if (bw->since < 0)
                    bw->since = now;
                if (reader != bw->slot) {
                    bw->slot = reader;
                    bw->on_since = now;
                } else if (now - bw->on_since >= unblock_ns) {
                    free_reader_if_dead(h, reader, token_prefix);
                    bw->on_since = now;
                }
                uint64_t *rp = &h->readers[reader].pos;
                rc = wait_for_space(r, deadline, &spins, rp, stuck);
                if (rc != SHM_OK)
                    return rc;
                continue;
            }
            if (rc == SHM_E_BUSY) {
                /* a frame a lap behind is still being written: slow or dead owner */
                int64_t now = shm_monotonic_ns();
                if (stuck != stuck_at) {
                    stuck_at = stuck;
                    stuck_since = now;
                } else if (now - stuck_since >= unblock_ns) {
                    shm_ring_seal_stuck(r, stuck, token_prefix);
                    stuck_since = now;
                }
            }
            rc = wait_for_space(r, deadline, &spins, NULL, 0);
            if (rc != SHM_OK)
                return rc;
            continue;
        }
        s->res_pos = t;
        s->frame_pos = t + pad;
        s->res_end = end;
        s->base_offset = o;
        s->count = count;
        s->res_ms = now_ms;
        /* release: the intent fields are visible before the state says INTENT */
        shm_store_release(&s->state, SHM_SLOT_INTENT);
        /* full barrier: the intent is published before the reservation exists */
        if (shm_cas_pair(&h->tail_pos, t, (uint64_t)o, end, (uint64_t)(o + count))) {
            shm_store_release(&s->state, SHM_SLOT_RESERVED);
            res->res_pos = t;
            res->frame_pos = t + pad;
            res->res_end = end;
            res->base_offset = o;
            if (pad >= SHM_FRAME_HEADER_BYTES) {
                struct shm_frame_header *ph = FRAME(r, t);
                ph->length = (uint32_t)pad;
                ph->kind = SHM_FRAME_PAD;
                ph->flags = 0;
                /* release: the pad's length and kind precede its commit word */
                shm_store_release(&ph->commit, commit_word(t));
            }
            return SHM_OK;
        }
        /* lost the race: withdraw the intent before rewriting it */
        shm_store_release(&s->state, SHM_SLOT_BUSY);
    }
}

/* ------------------------------------------------------------ append */

static int slot_enter(struct shm_producer_slot *s)
{
    /* the slot is this process's; the CAS keeps two threads of it apart */
    for (uint32_t spins = 0; !shm_cas_u32(&s->state, SHM_SLOT_IDLE, SHM_SLOT_BUSY); spins++) {
        if (spins > 64)
            sched_yield();
        else
            shm_cpu_relax();
    }
    return SHM_OK;
}

/* What goes into a frame's body: records to encode (in), or a batch encoded
 * elsewhere (raw, of count records) that is copied and then stamped with its
 * base offset and leader epoch. */
struct frame_body {
    const struct shm_batch_in *in;
    const uint8_t *raw;
    uint32_t count;
    int32_t leader_epoch;
    const struct shm_send_ctx *stamp;   /* encoded batches: the producer fields, or NULL */
    uint16_t extra_attributes;          /* control batches: SHM_RB_ATTR_CONTROL */
};

/* May a frame of frame_len bytes be appended now? SHM_OK, or why not. */
static inline int frame_admitted(const struct shm_ring *r, uint64_t frame_len)
{
    const struct shm_ring_header *h = r->hdr;
    /* alter_topic may change it; never past half of the capacity this process validated */
    uint32_t max_frame = shm_load_relaxed(&h->max_frame_bytes);
    if (max_frame > r->max_frame_cap)
        max_frame = r->max_frame_cap;
    if (frame_len > max_frame)
        return SHM_E_TOO_LARGE;
    if (__builtin_expect(shm_load_relaxed(&h->deleted) | shm_load_relaxed(&h->offline), 0))
        return shm_load_relaxed(&h->deleted) ? SHM_E_TOPIC_GONE : SHM_E_OFFLINE;
    return SHM_OK;
}

/* After a frame ending its reservation at res_end was committed: wake
 * announced readers and producers, and on a durable ring that is half full
 * the persister (it sleeps otherwise). */
static inline void after_commit(const struct shm_ring *r, uint64_t res_end)
{
    struct shm_ring_header *h = r->hdr;
    wake_after_commit(h);
    if (r->persistence == SHM_PERSIST_DISK &&
        __builtin_expect(__atomic_load_n(&h->persist_waiters, __ATOMIC_SEQ_CST) != 0, 0) &&
        res_end - shm_load_relaxed(&h->persisted_pos) >= r->capacity / 2)
        wake(&h->persist_seq);
}

static int append_frame(const struct shm_ring *r, struct shm_producer_slot *s,
                        const struct frame_body *b, int64_t size, int64_t timeout_ns,
                        const char *token_prefix, int64_t unblock_ns, struct shm_append_out *out)
{
    uint64_t frame_len = SHM_FRAME_HEADER_BYTES + (uint64_t)size;
    int admit = frame_admitted(r, frame_len);
    if (admit != SHM_OK)
        return admit;
    uint64_t alen = shm_align8(frame_len);
    const struct shm_batch_in *in = b->in;
    int64_t ts = 0;                   /* a raw batch carries its own timestamps */
    if (in)
        ts = in->timestamp_ms >= 0 ? in->timestamp_ms : shm_now_ms();
    uint32_t now_ms = (uint32_t)(in && in->timestamp_ms < 0 ? ts : shm_now_ms());

    if (timeout_ns == SHM_NOWAIT) {
        /* express: another thread of ours is in this slot; let it finish elsewhere */
        if (!shm_cas_u32(&s->state, SHM_SLOT_IDLE, SHM_SLOT_BUSY))
            return SHM_E_AGAIN;
    } else {
        slot_enter(s);
    }
    struct reservation res;
    int rc = reserve(r, s, alen, b->count, now_ms, timeout_ns, token_prefix, unblock_ns, &res);
    if (rc != SHM_OK) {
        shm_store_release(&s->state, SHM_SLOT_IDLE);
        return rc;
    }
    struct shm_frame_header *fh = FRAME(r, res.frame_pos);
    if (in) {
        struct shm_batch_stamp st, *stp = NULL;
        if (b->stamp) {
            /* the sequence is taken once the reservation is ours: a failed
             * reservation uses none (ctx is this producer's, its fields ours) */
            int32_t *seq = (int32_t *)&b->stamp->next_sequence;
            st.producer_id = b->stamp->producer_id;
            st.producer_epoch = b->stamp->producer_epoch;
            st.attributes = (uint16_t)(b->stamp->batch_attributes | b->extra_attributes);
            st.base_sequence = b->extra_attributes ? -1 : __atomic_fetch_add(seq, (int32_t)b->count, __ATOMIC_RELAXED);
            stp = &st;
        }
        shm_batch_encode_sized((uint8_t *)(fh + 1), in, size, res.base_offset, ts, stp);
    } else {
        memcpy(fh + 1, b->raw, (size_t)size);
        shm_batch_set_base_offset((uint8_t *)(fh + 1), res.base_offset);
        shm_batch_set_leader_epoch((uint8_t *)(fh + 1), b->leader_epoch);
    }
    if (__builtin_expect(test_hold_ns > 0, 0))
        sleep_ns(test_hold_ns);
    fh->length = (uint32_t)frame_len;
    fh->kind = SHM_FRAME_DATA;
    fh->flags = 0;
    /* seq_cst store: releases the frame's bytes to readers (I3) and orders the
     * waiter loads in wake_after_commit after it (Dekker with poll's re-check) */
    shm_store_seq_cst(&fh->commit, commit_word(res.frame_pos));
    /* release: the slot goes idle only after the commit */
    shm_store_release(&s->state, SHM_SLOT_IDLE);
    after_commit(r, res.res_end);
    if (out) {
        out->frame_pos = res.frame_pos;
        out->base_offset = res.base_offset;
        out->count = b->count;
        out->frame_bytes = (uint32_t)frame_len;
    }
    return SHM_OK;
}

int shm_send_batch(const struct shm_send_ctx *ctx, const struct shm_batch_in *in,
                   struct shm_append_out *out)
{
    const struct shm_ring *r = ctx->ring;
    if (!handle_ok(r) || ctx->slot < 0 || ctx->slot >= SHM_PRODUCER_SLOTS)
        return SHM_E_INVALID;
    int64_t size = shm_batch_encoded_size(in);
    if (size < 0)
        return (int)size;
    struct frame_body b = {.in = in, .count = in->count, .stamp = ctx->stamped ? ctx : NULL};
    return append_frame(r, &r->hdr->slots[ctx->slot], &b, size, ctx->timeout_ns, ctx->token_prefix,
                        ctx->unblock_ns, out);
}

/* A RecordBatch v2 encoded by a Kafka client: checked (shm_batch_check_foreign:
 * SHM_E_CORRUPT or SHM_E_INVALID), then stored byte for byte except baseOffset
 * and partitionLeaderEpoch, which the CRC does not cover. */
int shm_send_raw(const struct shm_send_ctx *ctx, const uint8_t *batch, uint64_t len,
                 int32_t leader_epoch, struct shm_append_out *out)
{
    const struct shm_ring *r = ctx->ring;
    if (!handle_ok(r) || ctx->slot < 0 || ctx->slot >= SHM_PRODUCER_SLOTS)
        return SHM_E_INVALID;
    if (len > UINT32_MAX - SHM_FRAME_HEADER_BYTES)
        return SHM_E_TOO_LARGE;
    int64_t count = shm_batch_check_foreign(batch, len);
    if (count < 0)
        return (int)count;
    struct frame_body b = {.raw = batch, .count = (uint32_t)count, .leader_epoch = leader_epoch};
    return append_frame(r, &r->hdr->slots[ctx->slot], &b, (int64_t)len, ctx->timeout_ns,
                        ctx->token_prefix, ctx->unblock_ns, out);
}

int shm_send_control(const struct shm_send_ctx *ctx, int64_t producer_id, int16_t producer_epoch,
                     int32_t type, int32_t coordinator_epoch, struct shm_append_out *out)
{
    const struct shm_ring *r = ctx->ring;
    if (!handle_ok(r) || ctx->slot < 0 || ctx->slot >= SHM_PRODUCER_SLOTS ||
        (type != SHM_CONTROL_ABORT && type != SHM_CONTROL_COMMIT))
        return SHM_E_INVALID;
    uint8_t key[4] = {0, 0, 0, (uint8_t)type};
    uint8_t value[6] = {0, 0, (uint8_t)(coordinator_epoch >> 24), (uint8_t)(coordinator_epoch >> 16),
                        (uint8_t)(coordinator_epoch >> 8), (uint8_t)coordinator_epoch};
    int64_t key_len = sizeof key, value_len = sizeof value;
    struct shm_batch_in in = {
        .count = 1, .values = value, .value_lens = &value_len, .keys = key, .key_lens = &key_len,
        .timestamp_ms = -1,
    };
    struct shm_send_ctx who = *ctx;
    who.stamped = 1;
    who.producer_id = producer_id;
    who.producer_epoch = producer_epoch;
    who.batch_attributes = SHM_RB_ATTR_TRANSACTIONAL;
    int64_t size = shm_batch_encoded_size(&in);
    struct frame_body b = {.in = &in, .count = 1, .stamp = &who, .extra_attributes = SHM_RB_ATTR_CONTROL};
    return append_frame(r, &r->hdr->slots[ctx->slot], &b, size, ctx->timeout_ns, ctx->token_prefix,
                        ctx->unblock_ns, out);
}

/* ------------------------------------------------------------ loans ("Producer loans", L1-L4) */

int shm_loan_begin(const struct shm_send_ctx *ctx, int32_t loan_slot, int64_t value_len,
                   const uint8_t *key, int64_t key_len, const uint8_t *headers, int64_t headers_len,
                   int64_t timestamp_ms, struct shm_loan *out)
{
    const struct shm_ring *r = ctx->ring;
    out->state = 0;
    if (!handle_ok(r) || !r->writable || ctx->slot < 0 || ctx->slot >= SHM_PRODUCER_SLOTS || loan_slot < 0 ||
        loan_slot >= SHM_PRODUCER_SLOTS || loan_slot == ctx->slot || value_len < 0 ||
        (key_len >= 0 && key == NULL) || (headers_len >= 0 && (headers == NULL || headers_len < 1)))
        return SHM_E_INVALID;
    struct shm_batch_in in = {
        .count = 1, .value_lens = &value_len, .keys = key, .key_lens = &key_len, .headers = headers,
        .header_lens = headers_len >= 0 ? &headers_len : NULL, .timestamp_ms = timestamp_ms,
    };
    int64_t size = shm_batch_encoded_size(&in);
    if (size < 0)
        return (int)size;
    uint64_t frame_len = SHM_FRAME_HEADER_BYTES + (uint64_t)size;
    int rc = frame_admitted(r, frame_len);
    if (rc != SHM_OK)
        return rc;
    struct shm_ring_header *h = r->hdr;
    struct shm_producer_slot *ls = &h->slots[loan_slot], *main = &h->slots[ctx->slot];
    uint32_t pid = (uint32_t)getpid();
    if (shm_load_relaxed(&ls->pid) != pid)
        return SHM_E_INVALID;            /* not a slot of this process (L2) */
    int64_t ts = timestamp_ms >= 0 ? timestamp_ms : shm_now_ms();
    /* L1: the send slot orders a stamped producer's sequences with its offsets */
    if (ctx->stamped)
        slot_enter(main);
    if (!shm_cas_u32(&ls->state, SHM_SLOT_IDLE, SHM_SLOT_BUSY)) {
        if (ctx->stamped)
            shm_store_release(&main->state, SHM_SLOT_IDLE);
        return SHM_E_BUSY;               /* the loan slot holds another loan */
    }
    struct reservation res;
    rc = reserve(r, ls, shm_align8(frame_len), 1, (uint32_t)shm_now_ms(), ctx->timeout_ns, ctx->token_prefix,
                 ctx->unblock_ns, &res);
    struct shm_batch_stamp st, *stp = NULL;
    if (rc == SHM_OK && ctx->stamped) {
        int32_t *seq = (int32_t *)&ctx->next_sequence;
        st.producer_id = ctx->producer_id;
        st.producer_epoch = ctx->producer_epoch;
        st.attributes = ctx->batch_attributes;
        st.base_sequence = __atomic_fetch_add(seq, 1, __ATOMIC_RELAXED);
        stp = &st;
    }
    if (ctx->stamped)
        shm_store_release(&main->state, SHM_SLOT_IDLE);
    if (rc != SHM_OK) {
        shm_store_release(&ls->state, SHM_SLOT_IDLE);
        return rc;
    }
    uint8_t *body = (uint8_t *)(FRAME(r, res.frame_pos) + 1);
    int64_t at = shm_batch_encode_loan(body, &in, size, res.base_offset, ts, stp);
    out->value = body + at;
    out->value_len = (uint64_t)value_len;
    out->frame_pos = res.frame_pos;
    out->res_end = res.res_end;
    out->base_offset = res.base_offset;
    out->frame_len = (uint32_t)frame_len;
    out->slot = loan_slot;
    out->pid = pid;
    out->timestamp_ms = ts;
    out->state = SHM_LOAN_OPEN;
    return SHM_OK;
}

/* L2: is l an open loan of this process whose slot still holds its frame? */
static struct shm_producer_slot *loan_slot_of(const struct shm_ring *r, const struct shm_loan *l)
{
    if (!handle_ok(r) || !r->writable || l->state != SHM_LOAN_OPEN || l->slot < 0 || l->slot >= SHM_PRODUCER_SLOTS)
        return NULL;
    struct shm_producer_slot *s = &r->hdr->slots[l->slot];
    uint32_t pid = (uint32_t)getpid();
    /* acquire: the slot's reservation fields are this process's own writes, or a sealer's */
    if (l->pid != pid || shm_load_relaxed(&s->pid) != pid || shm_load_acquire(&s->state) != SHM_SLOT_RESERVED ||
        s->frame_pos != l->frame_pos || s->res_end != l->res_end || l->res_end - l->frame_pos > room_of(r, l->frame_pos))
        return NULL;
    return s;
}

int shm_loan_commit(const struct shm_ring *r, struct shm_loan *l)
{
    struct shm_producer_slot *s = loan_slot_of(r, l);
    if (s == NULL)
        return SHM_E_INVALID;
    struct shm_frame_header *fh = FRAME(r, l->frame_pos);
    shm_batch_seal((uint8_t *)(fh + 1), l->frame_len - SHM_FRAME_HEADER_BYTES);   /* L4 */
    if (__builtin_expect(test_hold_ns > 0, 0))
        sleep_ns(test_hold_ns);
    fh->length = l->frame_len;
    fh->kind = SHM_FRAME_DATA;
    fh->flags = 0;
    /* seq_cst store: releases the frame to readers (I3), before the waiter loads */
    shm_store_seq_cst(&fh->commit, commit_word(l->frame_pos));
    /* release: the slot goes idle only after the commit */
    shm_store_release(&s->state, SHM_SLOT_IDLE);
    l->state = SHM_LOAN_COMMITTED;
    after_commit(r, l->res_end);
    return SHM_OK;
}

int shm_loan_abort(const struct shm_ring *r, struct shm_loan *l)
{
    struct shm_producer_slot *s = loan_slot_of(r, l);
    if (s == NULL)
        return SHM_E_INVALID;
    struct shm_frame_header *fh = FRAME(r, l->frame_pos);
    struct shm_gap_body g = {l->base_offset, 1, 0};   /* L3: the body a seal writes */
    memcpy(fh + 1, &g, sizeof g);
    fh->length = (uint32_t)(l->res_end - l->frame_pos);
    fh->kind = SHM_FRAME_GAP;
    fh->flags = 0;
    /* seq_cst: the gap's body precedes its commit, and the commit the waiter loads */
    shm_store_seq_cst(&fh->commit, commit_word(l->frame_pos));
    shm_store_release(&s->state, SHM_SLOT_IDLE);
    l->state = SHM_LOAN_ABORTED;
    after_commit(r, l->res_end);
    return SHM_OK;
}

void shm_ring_set_txn_bound(void *base, uint64_t bound)
{
    /* release: the markers the coordinator wrote before are visible to a
     * reader that acquires the new bound */
    shm_store_release(&HDR(base)->txn_bound, bound);
    wake(&HDR(base)->data_seq);   /* read_committed readers parked at the old bound */
}

void shm_ring_note_aborts(void *base, uint64_t n)
{
    /* release: the index entries were written before the count says so */
    __atomic_fetch_add(&HDR(base)->txn_aborts, n, __ATOMIC_RELEASE);
}

int64_t shmx_txn_refresh(const struct shm_ring *r, struct shm_cursor *cur)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    /* acquire the bound first: the coordinator counted an abort's entries
     * before it moved the bound past that transaction, so a count read after
     * it covers every transaction below the bound (shmlog/control/transactions.py, T4) */
    uint64_t bound = shm_load_acquire(&r->hdr->txn_bound);
    uint64_t aborts = shm_load_acquire(&r->hdr->txn_aborts);
    if (aborts != cur->aborts_seen)
        return (int64_t)aborts;
    cur->stable_end = bound ? (int64_t)(bound - 1) : INT64_MAX;
    return -1;
}

/* One record (headers_len < 0: no headers); returns its offset or a
 * negative status. */
int64_t shm_send(const struct shm_send_ctx *ctx, const uint8_t *value, int64_t value_len,
                 const uint8_t *key, int64_t key_len, const uint8_t *headers, int64_t headers_len,
                 int64_t timestamp_ms)
{
    struct shm_batch_in in = {
        .count = 1,
        .values = value,
        .value_lens = &value_len,
        .keys = key,
        .key_lens = &key_len,
        .headers = headers,
        .header_lens = headers_len >= 0 ? &headers_len : NULL,
        .timestamp_ms = timestamp_ms,
    };
    struct shm_append_out out;
    int rc = shm_send_batch(ctx, &in, &out);
    return rc == SHM_OK ? out.base_offset : rc;
}

int64_t shmx_send(const struct shm_send_ctx *ctx, const uint8_t *value, int64_t value_len)
{
    const struct shm_ring *r = ctx->ring;
    if (!handle_ok(r) || ctx->slot < 0 || ctx->slot >= SHM_PRODUCER_SLOTS)
        return SHM_E_INVALID;
    int64_t key_len = -1;
    struct shm_batch_in in = {
        .count = 1, .values = value, .value_lens = &value_len, .key_lens = &key_len,
        .timestamp_ms = -1,
    };
    int64_t size = shm_batch_encoded_size(&in);
    if (size < 0)
        return size;
    struct shm_append_out out;
    struct frame_body b = {.in = &in, .count = 1, .stamp = ctx->stamped ? ctx : NULL};
    int rc = append_frame(r, &r->hdr->slots[ctx->slot], &b, size, SHM_NOWAIT, ctx->token_prefix,
                          ctx->unblock_ns, &out);
    return rc == SHM_OK ? out.base_offset : rc;
}

/* ------------------------------------------------------------ read */

void shm_ring_ends(const void *base, int64_t *head_offset, int64_t *tail_offset,
                   uint64_t *head_pos, uint64_t *tail_pos)
{
    const struct shm_ring_header *h = HDR(base);
    uint64_t hp, tp, ho, to;
    shm_pair_snapshot(&h->head_pos, &hp, &ho);
    shm_pair_snapshot(&h->tail_pos, &tp, &to);
    if (head_offset) *head_offset = (int64_t)ho;
    if (tail_offset) *tail_offset = (int64_t)to;
    if (head_pos) *head_pos = hp;
    if (tail_pos) *tail_pos = tp;
}

void shm_ring_mark_deleted(void *base)
{
    /* release: everything before the delete is ordered before the flag */
    shm_store_release(&HDR(base)->deleted, 1);
    wake(&HDR(base)->data_seq);
    wake(&HDR(base)->space_seq);
}

uint64_t shm_ring_counter(const void *base, int which)
{
    const struct shm_ring_header *h = HDR(base);
    switch (which) {
    case SHM_COUNTER_SEALED: return shm_load_relaxed(&h->sealed_count);
    case SHM_COUNTER_OVERWRITTEN: return shm_load_relaxed(&h->overwritten_frames);
    case SHM_COUNTER_PERSISTED: return shm_load_acquire(&h->persisted_pos);
    case SHM_COUNTER_FSYNCED: return shm_load_acquire(&h->fsynced_pos);
    case SHM_COUNTER_DELETED: return shm_load_acquire(&h->deleted);
    case SHM_COUNTER_DURABLE_WAITERS: return shm_load_acquire(&h->durable_waiters);
    case SHM_COUNTER_PERSIST_ERRNO: return (uint64_t)(int64_t)shm_load_acquire(&h->persist_errno);
    case SHM_COUNTER_BASE_POSITION: return h->base_position;          /* written once at init */
    case SHM_COUNTER_BASE_OFFSET: return (uint64_t)h->base_offset;    /* written once at init */
    case SHM_COUNTER_OFFLINE: return shm_load_relaxed(&h->offline);   /* written once before publish */
    case SHM_COUNTER_OFFLINE_POS: return h->offline_pos;
    case SHM_COUNTER_OFFLINE_OFFSET: return (uint64_t)h->offline_offset;
    case SHM_COUNTER_OVERFLOW: return shm_load_relaxed(&h->overflow);
    case SHM_COUNTER_BLOCKED_NS: return shm_load_relaxed(&h->blocked_ns);
    case SHM_COUNTER_BLOCKED_WAITS: return shm_load_relaxed(&h->blocked_waits);
    case SHM_COUNTER_READERS_FREED: return shm_load_relaxed(&h->readers_freed);
    case SHM_COUNTER_COMMITTED: return shm_load_relaxed(&h->committed_bytes);
    case SHM_COUNTER_TXN_BOUND: return shm_load_acquire(&h->txn_bound);   /* the coordinator's release */
    }
    return 0;
}

int shm_ring_set_offline(void *base, uint32_t kind, uint64_t pos, int64_t offset)
{
    struct shm_ring_header *h = HDR(base);
    if (kind != SHM_OFFLINE_FRAME && kind != SHM_OFFLINE_GAP)
        return SHM_E_INVALID;
    h->offline_pos = pos;
    h->offline_offset = offset;
    /* release: the position is visible to whoever sees the flag (the topic is
     * published after this, which orders it for every opener anyway) */
    shm_store_release(&h->offline, kind);
    return SHM_OK;
}

/* Is there something for the cursor: a complete frame, a skip, or a lap? */
static int cursor_ready(const struct shm_ring *r, const struct shm_cursor *cur)
{
    const struct shm_ring_header *h = r->hdr;
    uint64_t p = cur->pos;
    return shm_load_acquire(&FRAME(r, p)->commit) == commit_word(p) ||
           shm_load_acquire(&h->head_pos) > p;
}

static void note_stuck(struct shm_cursor *cur, uint64_t p)
{
    if (cur->stuck_pos != p) {
        cur->stuck_pos = p;
        cur->stuck_since_ns = shm_monotonic_ns();
    }
}

/* One reader step at cur->pos, shared by shm_ring_read and
 * shm_ring_read_batches: a complete frame's header into *t, a DATA body
 * copied to dst (room bytes free), a GAP body into t->gap, then the lap
 * re-check (I5). TAKE_CAUGHT_UP / TAKE_IN_FLIGHT (the frame at cur->pos is
 * not committed yet; noted as stuck) / SHM_OK (cur->pos not yet moved: the
 * caller passes the frame), or SHM_E_OUT_OF_RANGE (lapped, before or during
 * the copy), SHM_E_BUFFER_SMALL (t->blen exceeds room), SHM_E_CORRUPT
 * (impossible length). */
#define TAKE_CAUGHT_UP 1
#define TAKE_IN_FLIGHT 2
struct taken {
    uint32_t len;
    uint16_t kind;
    uint16_t crc_ok;               /* DATA, sum=1: the copy's CRC-32C matched the batch's (fused with the copy) */
    uint64_t blen;                 /* DATA: batch bytes */
    struct shm_gap_body gap;
};

#define FUSED_CHECK_MIN 4096   /* batches this large are copied and summed in one pass (reads: once, not twice) */

static inline int take_frame(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *dst,
                             uint64_t room, struct taken *t, int sum)
{
    const struct shm_ring_header *h = r->hdr;
    uint64_t p = cur->pos, rem = room_of(r, p);
    const struct shm_frame_header *fh = FRAME(r, p);
    /* acquire: the frame's bytes are visible once its commit matches (I3) */
    if (shm_load_acquire(&fh->commit) != commit_word(p)) {
        if (shm_load_acquire(&h->tail_pos) <= p)
            return TAKE_CAUGHT_UP;
        if (shm_load_acquire(&h->head_pos) > p)
            return SHM_E_OUT_OF_RANGE;
        note_stuck(cur, p);
        return TAKE_IN_FLIGHT;
    }
    t->len = fh->length;
    t->kind = fh->kind;
    t->crc_ok = 0;
    t->blen = 0;
    t->gap = (struct shm_gap_body){0, 0, 0};
    int shape_ok = t->len >= SHM_FRAME_HEADER_BYTES && shm_align8(t->len) <= rem;
    if (shape_ok && t->kind == SHM_FRAME_DATA) {
        t->blen = t->len - SHM_FRAME_HEADER_BYTES;
        if (t->blen > room)
            return SHM_E_BUFFER_SMALL;
        if (sum && t->blen >= FUSED_CHECK_MIN) {
            /* the CRC covers attributes..end: summed while copied; compared
             * with the copied CRC field (a lapped copy fails the head check
             * below whatever it summed) */
            const uint8_t *src = (const uint8_t *)(fh + 1);
            memcpy(dst, src, SHM_RB_ATTRIBUTES);
            uint32_t crc = shm_crc32c_copy(0, dst + SHM_RB_ATTRIBUTES, src + SHM_RB_ATTRIBUTES,
                                           t->blen - SHM_RB_ATTRIBUTES);
            uint32_t want;
            memcpy(&want, dst + SHM_RB_CRC, 4);
            t->crc_ok = crc == __builtin_bswap32(want);
        } else {
            memcpy(dst, fh + 1, t->blen);
        }
    } else if (shape_ok && t->kind == SHM_FRAME_GAP && t->len >= SHM_FRAME_HEADER_BYTES + sizeof t->gap) {
        memcpy(&t->gap, fh + 1, sizeof t->gap);
    }
    /* acquire fence: the copy's loads complete before head is re-read (I5) */
    shm_fence_acquire();
    if (shm_load_relaxed(&h->head_pos) > p)
        return SHM_E_OUT_OF_RANGE;
    if (!shape_ok)
        return SHM_E_CORRUPT;
    cur->stuck_pos = ~(uint64_t)0;
    return SHM_OK;
}

/* Passes a PAD or GAP frame just taken: 1 when it was one (cur moved past it),
 * 0 for anything else, SHM_E_CORRUPT for a gap that does not continue the log. */
static inline int pass_pad_gap(struct shm_cursor *cur, const struct taken *t, uint32_t *gaps)
{
    if (t->kind == SHM_FRAME_PAD) {
        cur->pos += shm_align8(t->len);
        return 1;
    }
    if (t->kind != SHM_FRAME_GAP)
        return 0;
    if (cur->expect_base >= 0 && t->gap.base_offset != cur->expect_base)
        return SHM_E_CORRUPT;
    if (t->gap.base_offset + t->gap.count > cur->next_offset)
        cur->next_offset = t->gap.base_offset + t->gap.count;
    cur->expect_base = t->gap.base_offset + t->gap.count;
    (*gaps)++;
    cur->pos += shm_align8(t->len);
    return 1;
}

/* A stuck frame at the head of a read: SHM_E_BUSY once it has been stuck
 * for unblock_ns (the caller seals it if its writer is dead). */
static inline int stuck_long(const struct shm_cursor *cur, int64_t unblock_ns)
{
    return unblock_ns >= 0 && shm_monotonic_ns() - cur->stuck_since_ns >= unblock_ns;
}

/* Copies complete frames from cur->pos into buf and decodes their records
 * into out, up to out->max_records records or buf_cap bytes.
 * Returns the number of records decoded (0: nothing new), SHM_E_OUT_OF_RANGE
 * (cur->pos was lapped; nothing returned), SHM_E_CORRUPT (a complete,
 * unlapped frame fails validation: cur->pos stays on it), SHM_E_BUSY (the
 * first frame is uncommitted for longer than unblock_ns: seal it),
 * SHM_E_BUFFER_SMALL (one frame exceeds buf_cap). A compressed batch is
 * returned alone, undecoded: 0 with out->compressed = 1 and cur->pos still on
 * its frame (the caller inflates, decodes and passes it). Each DATA frame
 * goes through frame.h decode_frame, the step shm_frames_read (log.c) takes
 * for the same frames in a segment file. */
int shmx_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
              int verify_crc, int64_t unblock_ns, struct shm_records_out *out)
{
    return shm_ring_read(r, cur, buf, buf_cap, verify_crc, unblock_ns, out);
}

/* an error after records were decoded ends the read early instead: the
 * caller gets those records, and the error on its next read */
#define STOP(rc) do { if (out->count) goto done; return (rc); } while (0)

static int ring_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                     int verify_crc, int64_t unblock_ns, struct shm_records_out *out);

/* ring_read, then the cursor's position published to its reader slot (B2) */
int shm_ring_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                  int verify_crc, int64_t unblock_ns, struct shm_records_out *out)
{
    int rc = ring_read(r, cur, buf, buf_cap, verify_crc, unblock_ns, out);
    reader_publish(cur);
    return rc;
}

static int ring_read(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                     int verify_crc, int64_t unblock_ns, struct shm_records_out *out)
{
    if (__builtin_expect(!handle_ok(r), 0))
        return SHM_E_INVALID;
    if (cur->read_committed && shmx_txn_refresh(r, cur) >= 0)
        return SHM_E_TXN_STALE;
    uint64_t used = 0;
    out->count = 0;
    out->frames = out->gaps = out->compressed = out->batch_start = 0;
    out->bytes_used = 0;
    while (out->count < out->max_records) {
        uint64_t p = cur->pos;
        struct taken t;
        int rc = take_frame(r, cur, buf + used, buf_cap - used, &t, verify_crc);
        if (rc == TAKE_CAUGHT_UP)
            break;
        if (rc == TAKE_IN_FLIGHT) {
            if (out->count == 0 && stuck_long(cur, unblock_ns))
                return SHM_E_BUSY;
            break;
        }
        if (rc == SHM_E_BUFFER_SMALL) {
            if (out->count || out->frames)
                break;
            return rc;
        }
        if (rc == SHM_E_OUT_OF_RANGE) {
            if (out->count)
                break;
            return rc;
        }
        if (rc != SHM_OK)
            STOP(rc);
        rc = pass_pad_gap(cur, &t, &out->gaps);
        if (rc < 0)
            STOP(rc);
        if (rc)
            continue;
        if (t.kind != SHM_FRAME_DATA)
            STOP(SHM_E_CORRUPT);
        /* a CRC the fused copy matched is not summed again (VERIFY_SHAPE: magic and length only) */
        int verify = verify_crc ? (t.crc_ok ? VERIFY_SHAPE : VERIFY_CRC) : VERIFY_NONE;
        rc = decode_frame(buf + used, t.blen, used, p + shm_align8(t.len), verify, cur, out);
        if (rc < 0)
            STOP(rc);
        if (rc == READ_COMPRESSED)
            return 0;
        if (rc == READ_TAKEN || rc == READ_PARTIAL)
            used += t.blen;
        if (rc == READ_PARTIAL || rc == READ_STOP)
            break;
    }
done:
    out->bytes_used = used;
    return (int)out->count;
}
#undef STOP

/* Like shm_ring_read, without decoding: copies the bodies of complete DATA
 * frames (whole RecordBatch v2s, maybe compressed) back to back into buf,
 * passing PAD and GAP frames and batches wholly below cur->next_offset. A
 * batch that holds cur->next_offset is returned whole (Kafka's fetch does the
 * same; clients skip the records below their position). Stops before a frame
 * that would pass buf_cap. Returns the number of batches copied (out->frames,
 * out->bytes_used), or SHM_E_OUT_OF_RANGE / SHM_E_CORRUPT / SHM_E_BUSY as
 * shm_ring_read does, and SHM_E_BUFFER_SMALL when the first batch alone is
 * larger than buf_cap (out->bytes_used then says how large it is). */
static int ring_read_batches(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                             int64_t unblock_ns, struct shm_records_out *out);

int shm_ring_read_batches(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                          int64_t unblock_ns, struct shm_records_out *out)
{
    int rc = ring_read_batches(r, cur, buf, buf_cap, unblock_ns, out);
    reader_publish(cur);   /* B2: what was copied is released */
    return rc;
}

static int ring_read_batches(const struct shm_ring *r, struct shm_cursor *cur, uint8_t *buf, uint64_t buf_cap,
                             int64_t unblock_ns, struct shm_records_out *out)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    uint64_t used = 0;
    out->count = out->frames = out->gaps = out->compressed = out->batch_start = 0;
    out->bytes_used = 0;
    for (;;) {
        uint64_t p = cur->pos;
        struct taken t;
        int rc = take_frame(r, cur, buf + used, buf_cap - used, &t, 0);
        if (rc == TAKE_CAUGHT_UP)
            break;
        if (rc == TAKE_IN_FLIGHT) {
            if (out->frames == 0 && stuck_long(cur, unblock_ns))
                return SHM_E_BUSY;
            break;
        }
        if (rc == SHM_E_BUFFER_SMALL && out->frames == 0) {
            out->bytes_used = t.blen;
            return rc;
        }
        if (rc == SHM_OK)
            rc = pass_pad_gap(cur, &t, &out->gaps);
        if (rc == 1)
            continue;
        if (rc == SHM_OK && (t.kind != SHM_FRAME_DATA || t.blen < SHM_BATCH_HEADER_BYTES))
            rc = SHM_E_CORRUPT;
        const uint8_t *batch = buf + used;
        int64_t first = 0, last = 0;
        if (rc == SHM_OK) {
            first = shm_batch_base_offset(batch);
            last = first + shm_batch_last_delta(batch);
            /* baseOffset is outside Kafka's CRC: it must continue the previous frame */
            if ((cur->expect_base >= 0 && first != cur->expect_base) || last < first)
                rc = SHM_E_CORRUPT;
        }
        if (rc != SHM_OK) {
            if (out->frames)
                break;                           /* what came before is good: the error next time */
            return rc;
        }
        cur->expect_base = last + 1;
        cur->pos = p + shm_align8(t.len);
        if (last < cur->next_offset)
            continue;                            /* all below what the caller wants */
        cur->next_offset = last + 1;
        used += t.blen;
        out->frames++;
    }
    out->bytes_used = used;
    return (int)out->frames;
}

/* Large-record path (one copy instead of two). If the frame at cur->pos is a
 * complete, uncompressed DATA frame of one record, at least min_bytes long,
 * whose offset the cursor wants: verify its CRC in place (verify_crc), decode
 * its record into out[0..7] (a row, starts relative to the ring's data area)
 * and put the frame's length in out[8]. Returns 1, or 0 when this is not such
 * a frame (or anything is off: the general read then handles it). The caller
 * copies what it needs straight from the ring, then calls shmx_large_confirm,
 * which discards the copy if the ring lapped the frame meanwhile (I5). */
int shmx_large_peek(const struct shm_ring *r, const struct shm_cursor *cur, uint64_t min_bytes,
                    int verify_crc, int64_t *out)
{
    if (!handle_ok(r))
        return 0;
    const struct shm_ring_header *h = r->hdr;
    uint64_t p = cur->pos, rem = room_of(r, p);
    const struct shm_frame_header *fh = FRAME(r, p);
    /* acquire: the frame's bytes are visible once its commit matches (I3) */
    if (shm_load_acquire(&fh->commit) != commit_word(p))
        return 0;
    uint32_t len = fh->length;
    if (fh->kind != SHM_FRAME_DATA || len < min_bytes || shm_align8(len) > rem ||
        len < SHM_FRAME_HEADER_BYTES + SHM_BATCH_HEADER_BYTES)
        return 0;
    const uint8_t *batch = (const uint8_t *)(fh + 1);
    uint64_t blen = len - SHM_FRAME_HEADER_BYTES;
    int64_t first = shm_batch_base_offset(batch);
    if (shm_batch_last_delta(batch) != 0 || (batch[22] & 0x37) != 0 ||   /* one plain, non-transactional record */
        (cur->expect_base >= 0 && first != cur->expect_base) || first < cur->next_offset)
        return 0;
    if (cur->read_committed) {   /* not past the last stable offset (acquire: the coordinator's release) */
        uint64_t bound = shm_load_acquire(&h->txn_bound);
        if (bound && first >= (int64_t)(bound - 1))
            return 0;
    }
    if (verify_crc && shm_batch_validate(batch, blen) != SHM_OK)
        return 0;
    struct shm_records_out one = {.max_records = 1, .rows = out};
    if (shm_batch_decode(batch, blen, (int64_t)(batch - r->data), cur->next_offset, &one) != 1)
        return 0;
    out[SHM_ROW_FIELDS] = len;
    /* acquire fence: the checks above read frame bytes; re-read head after them (I5) */
    shm_fence_acquire();
    return shm_load_relaxed(&h->head_pos) > p ? 0 : 1;
}

/* After copying from the frame shmx_large_peek described: SHM_E_OUT_OF_RANGE
 * when the ring lapped it during the copy (the copy is garbage), else moves
 * the cursor past it and returns 1. */
int shmx_large_confirm(const struct shm_ring *r, struct shm_cursor *cur, const int64_t *peeked, int publish)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    const struct shm_ring_header *h = r->hdr;
    /* acquire fence: the caller's copy completes before head is re-read (I5) */
    shm_fence_acquire();
    if (shm_load_relaxed(&h->head_pos) > cur->pos)
        return SHM_E_OUT_OF_RANGE;
    cur->pos += shm_align8((uint64_t)peeked[SHM_ROW_FIELDS]);
    cur->next_offset = peeked[SHM_ROW_OFFSET] + 1;
    cur->expect_base = peeked[SHM_ROW_OFFSET] + 1;
    cur->stuck_pos = ~(uint64_t)0;
    if (publish)
        reader_publish(cur);   /* B2: the caller's copy is done */
    return 1;
}

/* The value of the record shmx_large_peek (verify_crc 0) described, copied
 * into dst (its value length bytes) with the batch's CRC-32C summed in the
 * same pass when verify_crc: the bytes before the value, the value through
 * shm_crc32c_copy, the bytes after it, so a large record is read once, not
 * once to check and once to copy. Returns 1; SHM_E_OUT_OF_RANGE when the ring
 * lapped the frame during the copy (re-read head after it, I5: the copy is
 * garbage and so may the CRC be); SHM_E_CORRUPT when the sum does not match.
 * dst NULL: the CRC checked in place only (a zero-copy view of the value).
 * Moves nothing: shmx_large_confirm does, after a 1. */
int shmx_large_copy(const struct shm_ring *r, const struct shm_cursor *cur, const int64_t *peeked, uint8_t *dst,
                    int verify_crc)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    uint64_t p = cur->pos;
    const uint8_t *batch = (const uint8_t *)(FRAME(r, p) + 1);
    uint64_t blen = (uint64_t)peeked[SHM_ROW_FIELDS] - SHM_FRAME_HEADER_BYTES;
    const uint8_t *v = r->data + peeked[SHM_ROW_VALUE_START];
    int64_t vl = peeked[SHM_ROW_VALUE_LEN];
    /* the peeked row came from decoding this frame: its value lies inside the batch */
    if (vl < 0 || v < batch + SHM_BATCH_HEADER_BYTES || (uint64_t)(v - batch) + (uint64_t)vl > blen)
        return SHM_E_INVALID;
    if (verify_crc || dst == NULL) {
        const uint8_t *from = batch + SHM_RB_ATTRIBUTES, *end = batch + blen;
        uint32_t crc;
        if (dst == NULL) {
            crc = shm_crc32c(0, from, (size_t)(end - from));
        } else {
            crc = shm_crc32c(0, from, (size_t)(v - from));
            crc = shm_crc32c_copy(crc, dst, v, (size_t)vl);
            crc = shm_crc32c(crc, v + vl, (size_t)(end - (v + vl)));
        }
        uint32_t want = (uint32_t)batch[SHM_RB_CRC] << 24 | (uint32_t)batch[SHM_RB_CRC + 1] << 16 |
                        (uint32_t)batch[SHM_RB_CRC + 2] << 8 | batch[SHM_RB_CRC + 3];
        shm_fence_acquire();   /* the copy and the sum complete before head is re-read (I5) */
        if (shm_load_relaxed(&r->hdr->head_pos) > p)
            return SHM_E_OUT_OF_RANGE;
        return crc == want ? 1 : SHM_E_CORRUPT;
    }
    memcpy(dst, v, (size_t)vl);
    shm_fence_acquire();
    return shm_load_relaxed(&r->hdr->head_pos) > p ? SHM_E_OUT_OF_RANGE : 1;
}

/* B7 (zero-copy views): publishes the cursor's position to its reader slot,
 * releasing frames below it that a caller kept viewing in the ring after
 * shmx_large_confirm(..., publish=0). */
void shmx_reader_publish(const struct shm_cursor *cur)
{
    reader_publish(cur);
}

/* Positions the cursor at the frame holding `offset` (or the first frame
 * after it when offset falls in a gap). SHM_E_OUT_OF_RANGE when offset is
 * below the ring's head or above its tail. */
int shm_ring_seek(const struct shm_ring *r, struct shm_cursor *cur, int64_t offset)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    const struct shm_ring_header *h = r->hdr;
    for (int attempt = 0; attempt < 64; attempt++) {
        uint64_t hp, tp, ho, to;
        shm_pair_snapshot(&h->head_pos, &hp, &ho);
        shm_pair_snapshot(&h->tail_pos, &tp, &to);
        if (offset < (int64_t)ho || offset > (int64_t)to)
            return SHM_E_OUT_OF_RANGE;
        cur->stuck_pos = ~(uint64_t)0;
        cur->next_offset = offset;
        cur->expect_base = -1;
        if (offset == (int64_t)to) {
            cur->expect_base = offset;
            cur->pos = tp;
            reader_publish(cur);
            return SHM_OK;
        }
        uint64_t p = hp;
        int64_t o = (int64_t)ho;
        int lapped = 0;
        while (p < tp) {
            uint64_t rem = room_of(r, p);
            const struct shm_frame_header *fh = FRAME(r, p);
            if (shm_load_acquire(&fh->commit) != commit_word(p))
                break;                    /* in flight: offset is at or after it */
            /* copy the header and the batch header, then check for a lap */
            struct { struct shm_frame_header h; uint8_t body[SHM_BATCH_HEADER_BYTES]; } c;
            uint64_t n = fh->length < sizeof c ? fh->length : sizeof c;
            if (n > rem)
                n = rem;
            memset(&c, 0, sizeof c);
            memcpy(&c, fh, n);
            /* acquire fence: the copy completes before head is re-read (I5) */
            shm_fence_acquire();
            if (shm_load_relaxed(&h->head_pos) > p) {
                lapped = 1;
                break;
            }
            uint64_t next;
            int64_t noff;
            if (frame_next(&c.h, p, rem, o, &next, &noff) != SHM_OK)
                return SHM_E_CORRUPT;
            if (noff > offset)
                break;                    /* this frame holds offset (or follows its gap) */
            p = next;
            o = noff;
        }
        if (lapped)
            continue;
        cur->pos = p;
        reader_publish(cur);   /* B4: a seek (even backward) is protected from the next scan */
        return SHM_OK;
    }
    return SHM_E_OUT_OF_RANGE;
}

/* ------------------------------------------------------------ waiting */

static int ready_any(const struct shm_ring *const *rings, struct shm_cursor *const *curs, uint32_t n,
                     int64_t unblock_ns, int64_t now, int64_t *stuck_deadline)
{
    *stuck_deadline = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (cursor_ready(rings[i], curs[i]))
            return (int)i;
        if (curs[i]->stuck_pos == curs[i]->pos && unblock_ns >= 0) {
            int64_t d = curs[i]->stuck_since_ns + unblock_ns;
            if (d <= now)
                return (int)i;
            if (*stuck_deadline < 0 || d < *stuck_deadline)
                *stuck_deadline = d;
        }
    }
    return -1;
}

/* Waits until one of n cursors has something to read (returns its index),
 * or timeout_ns passes (SHM_E_TIMEOUT; < 0 waits forever). Spins first; then
 * announces itself on every ring and parks in one futex_waitv (Linux 5.16+;
 * older kernels fall back to 1 ms naps). hdrs are writable mappings of the
 * ring headers (waiter counts), rings the handles of the (maybe read-only)
 * rings.
 *
 * The spin. spin == NULL (wait="spin", the asyncio and Kafka callers): a
 * fixed spin_ns, nothing else. spin != NULL (wait="park"): the spin is
 * adaptive, its state process-local in *spin (one per consumer):
 *  - Descheduled: the spinner reads the monotonic clock every 64 relax
 *    iterations; when two reads are more than SPIN_DESCHED_NS apart (and
 *    more than 4x the shortest gap of this spin, so a slow ready_any over
 *    many rings is not mistaken for it), another runnable thread had our
 *    core, and spinning on only keeps it from the peer: the spin ends at
 *    once and the waiter parks.
 *  - Budget: the spin lasts spin->budget_ns, in [min(SPIN_FLOOR_NS,
 *    spin_ns), spin_ns]. Data that arrives within the spin, or so soon after
 *    a park (<= LONG/2 after the wait began) that a longer spin would have
 *    caught it, doubles the budget back towards spin_ns. A wait that ends
 *    LONG after it began (data long after any spin, or a timeout) halves it:
 *    spinning for records that come that rarely only burns a core.
 *    LONG = max(8 spin_ns, 500 us): two parked peers of a ping-pong see
 *    each other's futex wake latency (tens of us, more on a VM) added to
 *    every wait, which must not look like "rare records", or both would stay
 *    at the floor although spinning would serve them.
 * Neither rule touches the park: whatever ends the spin, the waiter takes the
 * same announce -> re-check -> futex_waitv path (the Dekker pair described
 * above shm_wait_arm), so ending a spin early can cost latency, never a wake.
 * No shared layout changes; *spin is read and written only by its caller's
 * thread, so it needs no atomics. */
#define SPIN_DESCHED_NS 5000
#define SPIN_FLOOR_NS   1000
#define SPIN_LONG_MIN_NS 500000

static void spin_adapt(struct shm_spin_state *st, int64_t spin_ns, int64_t budget, int64_t waited, int got)
{
    int64_t lng = 8 * spin_ns > SPIN_LONG_MIN_NS ? 8 * spin_ns : SPIN_LONG_MIN_NS;
    int64_t floor = spin_ns < SPIN_FLOOR_NS ? spin_ns : SPIN_FLOOR_NS;
    if (got && waited <= lng / 2)
        budget = budget > spin_ns / 2 ? spin_ns : 2 * budget;
    else if (!got || waited > lng)
        budget = budget / 2 < floor ? floor : budget / 2;
    st->budget_ns = budget;
}

int shm_wait_any(void *const *hdrs, const struct shm_ring *const *rings, struct shm_cursor *const *curs,
                 uint32_t n, int64_t timeout_ns, int64_t spin_ns, int64_t unblock_ns,
                 struct shm_spin_state *spin)
{
    for (uint32_t i = 0; i < n; i++)
        if (!handle_ok(rings[i]))
            return SHM_E_INVALID;
    int64_t start = shm_monotonic_ns(), now = start, sd;
    int64_t deadline = timeout_ns >= 0 ? start + timeout_ns : -1;
    int64_t budget = spin_ns, last = start, gap_min = INT64_MAX;
    if (spin != NULL) {
        if (spin_ns < 0)
            spin_ns = 0;
        budget = spin->budget_ns > 0 && spin->budget_ns <= spin_ns ? spin->budget_ns : spin_ns;
        spin->waits++;
    }
    int r, spinning = 1;
    uint32_t iter = 0;
    while ((r = ready_any(rings, curs, n, unblock_ns, now, &sd)) < 0) {
        if (deadline >= 0 && now >= deadline)
            break;
        if (spinning && now - start < budget) {
            shm_cpu_relax();
            if ((++iter & 63) == 0) {
                now = shm_monotonic_ns();
                if (spin != NULL) {
                    int64_t gap = now - last;
                    last = now;
                    if (gap > SPIN_DESCHED_NS && gap > 4 * gap_min) {
                        spinning = 0;   /* descheduled: park now, freeing the core */
                        spin->desched_exits++;
                    }
                    if (gap < gap_min)
                        gap_min = gap;
                }
            }
            continue;
        }
        if (spinning && spin != NULL)
            spin->parks++;
        spinning = 0;   /* a wake that finds nothing parks again without spinning */
        int64_t until = deadline;
        if (sd >= 0 && (until < 0 || sd < until))
            until = sd;
        uint32_t m = n < 128 ? n : 128;
        uint32_t *words[128], vals[128];
        for (uint32_t i = 0; i < m; i++)
            shm_fetch_add(&HDR(hdrs[i])->data_waiters, 1);
        for (uint32_t i = 0; i < m; i++) {
            words[i] = &HDR(hdrs[i])->data_seq;
            vals[i] = shm_load_acquire(&HDR(hdrs[i])->data_seq);
        }
        /* re-check after announcing: a commit before the announcement is seen here */
        if ((r = ready_any(rings, curs, n, unblock_ns, shm_monotonic_ns(), &sd)) < 0) {
            int64_t slice = n > 128 ? 1000000 : -1;   /* rings past 128 get polled */
            if (until >= 0) {
                int64_t left = until - shm_monotonic_ns();
                if (left < 0)
                    left = 0;
                if (slice < 0 || left < slice)
                    slice = left;
            }
            shm_futex_waitv(words, vals, m, slice);
        }
        for (uint32_t i = 0; i < m; i++)
            shm_fetch_sub(&HDR(hdrs[i])->data_waiters, 1);
        if (r >= 0)
            break;
        now = shm_monotonic_ns();
    }
    if (spin != NULL)
        spin_adapt(spin, spin_ns, budget, shm_monotonic_ns() - start, r >= 0);
    return r >= 0 ? r : SHM_E_TIMEOUT;
}

/* The asyncio consumers' park (shmlog/aio.py), split around a wait that
 * happens elsewhere: one waiter thread per process parks in ONE futex_waitv
 * for every consumer of every event loop that is waiting, plus a private
 * control word that wakes it when the set changes.
 *
 * Protocol (the same Dekker pair as shm_wait_any): arm does
 *   data_waiters += 1 (seq_cst)  ->  v = data_seq  ->  re-check the cursors.
 * A producer's commit store is seq_cst and its load of data_waiters follows
 * it (wake_after_commit): either the re-check sees the commit (arm returns
 * the ready index and undoes its announcement), or the producer sees the
 * announcement and bumps data_seq past v, so a futex_waitv on (data_seq, v)
 * started at ANY later time returns at once. The waiter thread therefore
 * may start its wait after arm returns without losing the wake; it never
 * needs to see the cursor. The caller disarms (data_waiters -= 1) once its
 * wait is over, whatever ended it.
 *
 * Death: the count lives in the ring header. A consumer process dying while
 * armed leaves data_waiters too high by one per ring: producers then make a
 * futex wake syscall on each commit that nobody needs (a cost, never a
 * missed wake), exactly as a consumer dying inside shm_wait_any does. A
 * dead producer between commit and wake: its commit is visible, a reader
 * parked on it waits until its timeout; arm's re-check covers commits made
 * before the announcement. */
int shm_wait_arm(void *const *hdrs, const struct shm_ring *const *rings, struct shm_cursor *const *curs,
                 uint32_t n, int64_t unblock_ns, uint32_t *vals, int64_t *stuck_deadline_ns)
{
    for (uint32_t i = 0; i < n; i++)
        if (!handle_ok(rings[i]))
            return SHM_E_INVALID;
    for (uint32_t i = 0; i < n; i++)
        shm_fetch_add(&HDR(hdrs[i])->data_waiters, 1);
    for (uint32_t i = 0; i < n; i++)
        vals[i] = shm_load_acquire(&HDR(hdrs[i])->data_seq);
    int r = ready_any(rings, curs, n, unblock_ns, shm_monotonic_ns(), stuck_deadline_ns);
    if (r >= 0)
        shm_wait_disarm(hdrs, n);
    return r;
}

void shm_wait_disarm(void *const *hdrs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        shm_fetch_sub(&HDR(hdrs[i])->data_waiters, 1);
}

uint32_t shm_words_changed(uint32_t *const *words, const uint32_t *vals, uint32_t n, uint32_t *changed)
{
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (shm_load_acquire(words[i]) != vals[i])
            changed[m++] = i;
    return m;
}

void shm_word_bump(uint32_t *word)
{
    shm_fetch_add(word, 1);
    shm_futex_wake(word);
}

/* ------------------------------------------------------------ sealing */

struct candidate {
    struct shm_producer_slot *slot;
    uint32_t state;
    struct reservation r;
    uint32_t count;
};

/* Does something begin right where c's reservation would end, carrying the
 * next offset? Used only to tell apart dead INTENT slots naming one position. */
static int reservation_fits(const struct shm_ring *r, const struct candidate *c)
{
    struct shm_ring_header *h = r->hdr;
    uint64_t end = c->r.res_end;
    int64_t end_off = c->r.base_offset + c->count;
    uint64_t tp, to;
    shm_pair_snapshot(&h->tail_pos, &tp, &to);
    if (tp == end)
        return (int64_t)to == end_off;
    if (tp < end)
        return 0;
    for (int i = 0; i < SHM_PRODUCER_SLOTS; i++) {
        struct shm_producer_slot *s = &h->slots[i];
        uint32_t st = shm_load_acquire(&s->state);
        if ((st == SHM_SLOT_INTENT || st == SHM_SLOT_RESERVED) && s->res_pos == end &&
            s->base_offset == end_off && s != c->slot)
            return 1;
    }
    const struct shm_frame_header *fh = FRAME(r, end);
    uint64_t p = end;
    if (shm_load_acquire(&fh->commit) != commit_word(p))
        return 0;
    if (fh->kind == SHM_FRAME_PAD)
        return 1;   /* a pad carries no offset; accept the boundary */
    /* the body read below must lie inside the frame and the ring */
    if (room_of(r, p) < SHM_FRAME_HEADER_BYTES + sizeof(struct shm_gap_body))
        return 0;
    if (fh->kind == SHM_FRAME_GAP)
        return ((const struct shm_gap_body *)(fh + 1))->base_offset == end_off;
    return shm_batch_base_offset((const uint8_t *)(fh + 1)) == end_off;
}

/* Can the reservation a (maybe crafted) slot describes be sealed in place?
 * Both frames it writes (a PAD header at res_pos, a GAP header and body at
 * frame_pos) must lie inside the ring, in order, within one lap. */
static int reservation_sane(const struct shm_ring *ring, const struct reservation *res)
{
    uint64_t gap = SHM_FRAME_HEADER_BYTES + sizeof(struct shm_gap_body);
    if ((res->res_pos - ring->base_position) % SHM_FRAME_ALIGN ||
        (res->frame_pos - ring->base_position) % SHM_FRAME_ALIGN ||
        res->frame_pos < res->res_pos || res->res_end < res->frame_pos + gap)
        return 0;
    if (res->frame_pos > res->res_pos &&
        (res->frame_pos - res->res_pos < SHM_FRAME_HEADER_BYTES ||
         res->frame_pos - res->res_pos > room_of(ring, res->res_pos)))
        return 0;
    return res->res_end - res->frame_pos <= room_of(ring, res->frame_pos) &&
           res->res_end - res->frame_pos <= UINT32_MAX;
}

static void seal(const struct shm_ring *r, const struct candidate *c)
{
    struct shm_ring_header *h = r->hdr;
    const struct reservation *res = &c->r;
    if (res->frame_pos > res->res_pos) {
        struct shm_frame_header *ph = FRAME(r, res->res_pos);
        if (shm_load_acquire(&ph->commit) != commit_word(res->res_pos)) {
            ph->length = (uint32_t)(res->frame_pos - res->res_pos);
            ph->kind = SHM_FRAME_PAD;
            ph->flags = 0;
            /* release: pad length and kind precede its commit */
            shm_store_release(&ph->commit, commit_word(res->res_pos));
        }
    }
    struct shm_frame_header *fh = FRAME(r, res->frame_pos);
    if (shm_load_acquire(&fh->commit) != commit_word(res->frame_pos)) {
        struct shm_gap_body g = {res->base_offset, c->count, 0};
        memcpy(fh + 1, &g, sizeof g);
        fh->length = (uint32_t)(res->res_end - res->frame_pos);
        fh->kind = SHM_FRAME_GAP;
        fh->flags = 0;
        /* seq_cst: the gap's body precedes its commit, and the commit precedes
         * the waiter loads in wake_after_commit */
        shm_store_seq_cst(&fh->commit, commit_word(res->frame_pos));
        __atomic_fetch_add(&h->sealed_count, 1, __ATOMIC_RELAXED);
    }
    shm_store_relaxed(&c->slot->state, SHM_SLOT_IDLE);
    /* release: the seal is visible before the slot can be claimed again */
    shm_store_release(&c->slot->owner, 0);
}

/* Seals the reservation blocking position pos if, and only if, its owner is
 * dead. SHM_OK: sealed, or nothing to seal (committed meanwhile, or lapped).
 * SHM_E_BUSY: the owner is alive (slow), or the owner cannot be told apart
 * yet. SHM_E_NOT_FOUND: no slot names pos. Needs a writable mapping. */
int shm_ring_seal_stuck(const struct shm_ring *r, uint64_t pos, const char *token_prefix)
{
    if (!handle_ok(r) || !r->writable)
        return SHM_E_INVALID;
    struct shm_ring_header *h = r->hdr;
    if (seal_lock(h) != SHM_OK)
        return SHM_E_SYS;
    int rc = SHM_OK;
    if (shm_load_acquire(&h->head_pos) > pos || shm_load_acquire(&h->tail_pos) <= pos ||
        shm_load_acquire(&FRAME(r, pos)->commit) == commit_word(pos))
        goto out;
    struct candidate cands[SHM_PRODUCER_SLOTS];
    int nc = 0, reserved = -1, fits = -1, nfits = 0;
    for (int i = 0; i < SHM_PRODUCER_SLOTS; i++) {
        struct shm_producer_slot *s = &h->slots[i];
        /* acquire: the intent fields are complete when the state is INTENT/RESERVED */
        uint32_t st = shm_load_acquire(&s->state);
        if (st != SHM_SLOT_INTENT && st != SHM_SLOT_RESERVED)
            continue;
        if (s->res_pos != pos && s->frame_pos != pos)
            continue;
        if (!slot_owner_dead(s, token_prefix)) {
            rc = SHM_E_BUSY;   /* alive: a slow producer is never sealed over */
            goto out;
        }
        struct candidate *c = &cands[nc++];
        c->slot = s;
        c->state = st;
        c->r.res_pos = s->res_pos;
        c->r.frame_pos = s->frame_pos;
        c->r.res_end = s->res_end;
        c->r.base_offset = s->base_offset;
        c->count = s->count;
        if (st == SHM_SLOT_RESERVED)
            reserved = nc - 1;
    }
    if (nc == 0) {
        rc = SHM_E_NOT_FOUND;
        goto out;
    }
    int owner = reserved;
    if (owner < 0 && nc == 1)
        owner = 0;
    if (owner < 0) {
        for (int i = 0; i < nc; i++)
            if (reservation_fits(r, &cands[i])) {
                fits = i;
                nfits++;
            }
        if (nfits > 1) {      /* several fit: harmless only if they claimed the same range */
            for (int i = 0; i < nc; i++)
                if (reservation_fits(r, &cands[i]) &&
                    (cands[i].r.res_end != cands[fits].r.res_end || cands[i].count != cands[fits].count ||
                     cands[i].r.frame_pos != cands[fits].r.frame_pos))
                    nfits = -1;
        }
        if (nfits == 0 || nfits == -1) {
            rc = SHM_E_BUSY;  /* cannot tell the owner apart (yet): never guess */
            goto out;
        }
        owner = fits;
    }
    if (!reservation_sane(r, &cands[owner].r)) {
        rc = SHM_E_CORRUPT;   /* a slot that describes no possible reservation: never write by it */
        goto out;
    }
    seal(r, &cands[owner]);
    /* the other dead candidates lost their CAS: free their slots */
    for (int i = 0; i < nc; i++)
        if (i != owner) {
            shm_store_relaxed(&cands[i].slot->state, SHM_SLOT_IDLE);
            shm_store_release(&cands[i].slot->owner, 0);
        }
    wake(&h->data_seq);
    wake(&h->space_seq);
out:
    seal_unlock(h);
    return rc;
}

/* The supervisor's sweep: seals the open reservation of every dead writer
 * (those nobody reads past yet, e.g. while every consumer maps the ring
 * read-only), and with free_slots also frees the slots of dead owners that
 * hold none (that test costs a liveness check per claimed slot, so it runs
 * less often). Returns the number of reservations sealed, or a negative
 * status. Each seal goes through shm_ring_seal_stuck, so a live (slow)
 * writer is never sealed over. */
int shm_ring_seal_dead(const struct shm_ring *r, const char *token_prefix, int free_slots)
{
    if (!handle_ok(r) || !r->writable)
        return SHM_E_INVALID;
    struct shm_ring_header *h = r->hdr;
    int sealed = 0;
    for (int i = 0; i < SHM_PRODUCER_SLOTS; i++) {
        struct shm_producer_slot *s = &h->slots[i];
        if (shm_load_acquire(&s->owner) == 0)
            continue;
        if (!slot_settled(r, s)) {
            if (!slot_owner_dead(s, token_prefix))
                continue;
            uint64_t before = shm_load_relaxed(&h->sealed_count);
            int rc = shm_ring_seal_stuck(r, s->res_pos, token_prefix);
            if (rc == SHM_E_SYS)
                return rc;
            if (shm_load_relaxed(&h->sealed_count) != before)
                sealed++;
            continue;   /* freed by the seal, or still ambiguous: the next sweep looks again */
        }
        if (!free_slots || !slot_owner_dead(s, token_prefix))
            continue;
        if (seal_lock(h) != SHM_OK)
            return SHM_E_SYS;
        free_if_dead_and_settled(r, s, token_prefix);
        seal_unlock(h);
    }
    /* B6: dead readers' slots (on a block ring every tick: they hold producers back) */
    if (free_slots || shm_load_relaxed(&h->overflow) == SHM_OVERFLOW_BLOCK) {
        for (uint32_t i = 0, n = reader_count(h); i < n; i++)
            if (shm_load_relaxed(&h->readers[i].owner) != 0)
                free_reader_if_dead(h, (int)i, token_prefix);
    }
    return sealed;
}

/* What keeps producers of a full ring waiting (issue 11, defect 14: a
 * SIGSTOPped producer holding a reservation blocks its partition, and the
 * message must name it, not the persister). Head can only pass complete
 * frames (I4): if the frame at head is uncommitted, the slot whose
 * reservation covers it is the cause (its pid, state, offsets, how long it
 * has been open, and whether its owner is alive: a live one is never sealed
 * over, a dead one is sealed after the unblock timeout). Else, on a durable
 * ring, head waits for persisted_pos. Read-only; a snapshot that may be
 * stale by the time the caller prints it. */
int shm_ring_blocker(const struct shm_ring *r, const char *token_prefix, struct shm_blocker *out)
{
    if (!handle_ok(r))
        return SHM_E_INVALID;
    const struct shm_ring_header *h = r->hdr;
    memset(out, 0, sizeof *out);
    out->slot = -1;
    out->alive = -1;
    out->held_ms = -1;
    uint64_t hp = shm_load_acquire(&h->head_pos), tp = shm_load_acquire(&h->tail_pos);
    out->position = hp;
    out->persisted_pos = shm_load_acquire(&h->persisted_pos);
    if (hp < tp && shm_load_acquire(&FRAME(r, hp)->commit) != commit_word(hp)) {
        out->kind = SHM_BLOCK_WRITER;
        for (int i = 0; i < SHM_PRODUCER_SLOTS; i++) {
            const struct shm_producer_slot *s = &h->slots[i];
            uint32_t st = shm_load_acquire(&s->state);
            if (st != SHM_SLOT_INTENT && st != SHM_SLOT_RESERVED)
                continue;
            if (!(s->res_pos <= hp && hp < s->res_end))
                continue;
            out->slot = i;
            out->state = st;
            out->pid = shm_load_relaxed(&s->pid);
            out->base_offset = s->base_offset;
            out->count = s->count;
            out->held_ms = (int64_t)(uint32_t)((uint32_t)shm_now_ms() - shm_load_relaxed(&s->res_ms));
            out->alive = !slot_owner_dead(s, token_prefix);
            if (st == SHM_SLOT_RESERVED)
                break;       /* the CAS winner; an INTENT naming the same position lost it */
        }
        return SHM_OK;
    }
    if (r->persistence == SHM_PERSIST_DISK && hp >= out->persisted_pos && hp < tp)
        out->kind = SHM_BLOCK_PERSISTER;
    if (r->persistence == SHM_PERSIST_NONE && shm_load_relaxed(&h->overflow) == SHM_OVERFLOW_BLOCK && hp < tp) {
        int slot;
        if (reader_floor(h, hp, &slot) <= hp) {
            const struct shm_reader_slot *rs = &h->readers[slot];
            out->kind = SHM_BLOCK_READER;
            out->slot = slot;
            out->pid = shm_load_relaxed(&rs->pid);
            out->held_ms = shm_now_ms() - shm_load_relaxed(&rs->claimed_ms);
            uint64_t ow = shm_load_acquire(&rs->owner);
            out->alive = ow != 0 && shm_process_alive(token_prefix, out->pid, shm_load_acquire(&rs->start_time));
        }
    }
    return SHM_OK;
}

/* alter_topic max_message_bytes: producers read it before each reservation;
 * a write racing the change is checked against the old or the new limit. */
int shm_ring_set_max_frame_bytes(void *base, uint32_t max_frame_bytes)
{
    struct shm_ring_header *h = HDR(base);
    if (max_frame_bytes < SHM_FRAME_HEADER_BYTES + SHM_BATCH_HEADER_BYTES + 8 ||
        max_frame_bytes > h->capacity / 2)
        return SHM_E_INVALID;
    shm_store_relaxed(&h->max_frame_bytes, max_frame_bytes);
    return SHM_OK;
}
