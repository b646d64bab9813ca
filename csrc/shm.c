/* shm.c — operating-system plumbing: POSIX shm segments, futexes, clocks,
 * and the process-liveness test.
 *
 * Owns: creating (with the memory of the first commit_bytes committed up
 * front by posix_fallocate, so a full /dev/shm fails here and never as
 * SIGBUS later; or hidden, O_TMPFILE, and published whole by a link),
 * opening, mapping and unlinking segments; committing more of a segment's
 * pages later (shm_commit_pages: the memory-reserve check, then
 * MADV_POPULATE_WRITE, whose failure is an error code, never SIGBUS); futex
 * wait/wake on shared words; is-this-process-alive.
 *
 * Memory: a segment's pages are RAM once committed and stay so until it is
 * removed. Every commit, at creation or later, first checks that the host
 * keeps at least the reserve (shm_set_memory_reserve; 0: no check) of
 * MemAvailable afterwards, and fails with SHM_E_NOSPACE (errno ENOMEM)
 * instead: an exhausted host ends in the kernel's OOM killer, which is
 * never the answer to a producer. Mapping never commits (no MAP_POPULATE):
 * ring.c populates the committed part of a ring at open.
 * Must never: interpret a segment's contents (ring.c and control.c do), or
 * map a segment it has not checked the owner and mode of (struct shm_trust).
 *
 * Squatting (issue 11, defect 9): segment names are predictable and
 * /dev/shm is world-writable, so another user can create an instance's
 * control segment or a ring before the instance does, 0666, and read or
 * forge everything. shm_open (glibc adds O_NOFOLLOW) then fstat on the fd we
 * map: a segment that is not a regular file, has a world bit, or is owned by
 * someone the instance does not trust is refused (SHM_E_UNTRUSTED) before a
 * byte of it is mapped; out->st_uid/st_gid/st_mode say what was found. A
 * created segment gets its group with fchown on the creating fd, never by
 * name.
 *
 * Liveness: every shmlog process holds an exclusive flock on a token file
 * named <token_prefix><pid>-<start_time> (shmlog/liveness.py creates it).
 * The lock dies with the process (the kernel drops it when the last fd of the
 * open file goes, which happens after the process's memory is gone, so a
 * process seen dead can write no more). start_time in the name makes a
 * reused pid a different token.
 */
#define _GNU_SOURCE
#include "shmlog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SHM_DIR "/dev/shm"

static int errno_status(int e)
{
    switch (e) {
    case ENOENT: return SHM_E_NOT_FOUND;
    case EEXIST: return SHM_E_EXISTS;
    case EACCES: case EPERM: return SHM_E_PERM;
    case ENOSPC: case ENOMEM: case EFBIG: return SHM_E_NOSPACE;
    case EINVAL: case ENAMETOOLONG: return SHM_E_INVALID;
    default: return SHM_E_SYS;
    }
}

static uint64_t memory_reserve;   /* bytes of MemAvailable every commit leaves; 0: no check */

void shm_set_memory_reserve(uint64_t bytes)
{
    __atomic_store_n(&memory_reserve, bytes, __ATOMIC_RELAXED);
}

/* MemAvailable from /proc/meminfo in bytes; UINT64_MAX when unreadable */
uint64_t shm_memory_available(void)
{
    char buf[4096];
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return UINT64_MAX;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return UINT64_MAX;
    buf[n] = 0;
    const char *p = strstr(buf, "MemAvailable:");
    unsigned long long kib;
    if (!p || sscanf(p + 13, "%llu", &kib) != 1)
        return UINT64_MAX;
    return (uint64_t)kib * 1024;
}

static int memory_allows(uint64_t len)
{
    uint64_t reserve = __atomic_load_n(&memory_reserve, __ATOMIC_RELAXED);
    if (reserve == 0)
        return 1;
    uint64_t avail = shm_memory_available();
    return avail == UINT64_MAX || (avail > reserve && avail - reserve >= len);
}

/* 1 when this kernel populates shared pages on request (MADV_POPULATE_WRITE,
 * Linux 5.14): segments may then commit their memory as they fill. Without
 * it every segment commits all of its pages at creation. */
int shm_lazy_commit_supported(void)
{
    static int supported = -1;
    int s = __atomic_load_n(&supported, __ATOMIC_RELAXED);
    if (s < 0) {
        void *p = mmap(NULL, SHM_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        s = p != MAP_FAILED && madvise(p, SHM_PAGE_BYTES, MADV_POPULATE_WRITE) == 0;
        if (p != MAP_FAILED)
            munmap(p, SHM_PAGE_BYTES);
        __atomic_store_n(&supported, s, __ATOMIC_RELAXED);
    }
    return s;
}

/* Gives [addr, addr + len) of a writable shared mapping its memory (addr
 * and len page-aligned), after the reserve check: SHM_E_NOSPACE with errno
 * ENOMEM when the host would be left under the reserve or the kernel cannot
 * provide the pages (a full tmpfs), never SIGBUS. Pages already committed
 * (by any process) cost only their page-table entries. */
int shm_commit_pages(void *addr, uint64_t len)
{
    if (len == 0)
        return SHM_OK;
    if (!memory_allows(len)) {
        errno = ENOMEM;
        return SHM_E_NOSPACE;
    }
    if (madvise(addr, len, MADV_POPULATE_WRITE) == 0)
        return SHM_OK;
    if (errno == EFAULT || errno == ENOMEM || errno == EHWPOISON) {
        errno = ENOMEM;
        return SHM_E_NOSPACE;
    }
    return errno_status(errno);
}

/* Sizes, commits the first commit_bytes of, and maps a segment created on
 * fd (mode and group set on the fd, never by name). fd stays open. */
static int segment_setup(int fd, uint64_t size, uint64_t commit_bytes, uint32_t mode, int64_t gid,
                         struct shm_map *out)
{
    if (commit_bytes > size || !shm_lazy_commit_supported())
        commit_bytes = size;
    if ((gid >= 0 && fchown(fd, (uid_t)-1, (gid_t)gid) != 0) || fchmod(fd, (mode_t)mode) != 0 ||
        ftruncate(fd, (off_t)size) != 0)
        return errno_status(errno);
    if (!memory_allows(commit_bytes)) {
        errno = ENOMEM;
        return SHM_E_NOSPACE;
    }
    /* commit now: ENOSPC here instead of SIGBUS on first touch */
    int e = posix_fallocate(fd, 0, (off_t)commit_bytes);
    if (e != 0) {
        errno = e;
        return errno_status(e);
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return errno_status(errno);
    (void)madvise(base, commit_bytes, MADV_POPULATE_WRITE);   /* page tables now, not on first touch */
    out->base = base;
    out->size = size;
    out->writable = 1;
    out->st_uid = (uint32_t)geteuid();
    out->st_gid = gid >= 0 ? (uint32_t)gid : (uint32_t)getegid();
    out->st_mode = mode;
    return SHM_OK;
}

int shm_segment_create(const char *name, uint64_t size, uint64_t commit_bytes, uint32_t mode, int64_t gid,
                       struct shm_map *out)
{
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return errno_status(errno);
    int rc = segment_setup(fd, size, commit_bytes, mode, gid, out);
    int saved = errno;
    close(fd);
    if (rc != SHM_OK)
        shm_unlink(name);
    errno = saved;
    return rc;
}

/* A segment with no name yet (O_TMPFILE in /dev/shm): nobody can open it
 * until shm_segment_publish links it, so its creator initialises it fully
 * first, and a creator killed before publishing leaves nothing behind (the
 * control segment: a name that exists is a finished header, never the
 * zero-filled or half-stamped one a plain create shows for a while, or
 * forever when its creator dies). *fd_out is the one handle to it: publish
 * with it, then close it. */
int shm_segment_create_hidden(uint64_t size, uint32_t mode, int64_t gid, struct shm_map *out, int *fd_out)
{
    int fd = open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, (mode_t)(mode & 0600));
    if (fd < 0)
        return errno_status(errno);
    int rc = segment_setup(fd, size, size, mode, gid, out);
    if (rc != SHM_OK) {
        int saved = errno;
        close(fd);
        errno = saved;
        return rc;
    }
    *fd_out = fd;
    return SHM_OK;
}

/* Gives the hidden segment on fd its name, atomically: SHM_E_EXISTS when the
 * name is taken (another creator won; the hidden segment is still unnamed). */
int shm_segment_publish(int fd, const char *name)
{
    char src[64], dst[512];
    snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
    if (snprintf(dst, sizeof dst, "%s/%s", SHM_DIR, name[0] == '/' ? name + 1 : name) >= (int)sizeof dst ||
        strchr(name + 1, '/'))
        return SHM_E_INVALID;
    return linkat(AT_FDCWD, src, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) == 0 ? SHM_OK : errno_status(errno);
}

static int segment_trusted(const struct stat *st, const struct shm_trust *t)
{
    if (!S_ISREG(st->st_mode) || (st->st_mode & 0007))
        return 0;
    if (st->st_uid == geteuid() || st->st_uid == 0 || st->st_uid == t->uid)
        return 1;
    return t->has_gid && st->st_gid == t->gid;
}

int shm_segment_map_range(const char *name, int writable, uint64_t offset, uint64_t size,
                          const struct shm_trust *trust, struct shm_map *out)
{
    int fd = shm_open(name, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0)
        return errno_status(errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = errno_status(errno);
        close(fd);
        return rc;
    }
    out->st_uid = (uint32_t)st.st_uid;
    out->st_gid = (uint32_t)st.st_gid;
    out->st_mode = (uint32_t)st.st_mode;
    if (!trust || !segment_trusted(&st, trust)) {
        close(fd);
        return SHM_E_UNTRUSTED;
    }
    if (size == 0)
        size = (uint64_t)st.st_size - offset;
    if (offset + size > (uint64_t)st.st_size || size == 0) {
        close(fd);
        return SHM_E_LAYOUT;
    }
    /* no MAP_POPULATE: a read fault on a page never committed would commit it */
    void *base = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, (off_t)offset);
    int saved = errno;
    close(fd);
    if (base == MAP_FAILED)
        return errno_status(saved);
    out->base = base;
    out->size = size;
    out->writable = writable;
    return SHM_OK;
}

/* A process-shared robust mutex in shared memory: a holder that dies makes
 * the next locker get EOWNERDEAD instead of hanging. */
int shm_robust_mutex_init(void *mutex)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init((pthread_mutex_t *)mutex, &a);
    pthread_mutexattr_destroy(&a);
    return rc == 0 ? SHM_OK : SHM_E_SYS;
}

/* Starts writeback of a file range without waiting for it (the persister
 * calls it after each run of frames, so the next fsync finds little left). */
int shm_start_writeback(int fd, int64_t offset, int64_t nbytes)
{
    return sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) == 0 ? SHM_OK : SHM_E_SYS;
}

int shm_segment_unlink(const char *name)
{
    return shm_unlink(name) == 0 ? SHM_OK : errno_status(errno);
}

void shm_unmap(struct shm_map *m)
{
    if (m->base)
        munmap(m->base, m->size);
    m->base = NULL;
    m->size = 0;
}

int64_t shm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t shm_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps while *word == expected, at most timeout_ns (< 0: forever).
 * Shared (not PRIVATE) futex: the word lives in a MAP_SHARED segment and the
 * kernel keys it by inode and offset, so every mapping of it meets here.
 * Returns SHM_OK on a wake, a changed word or a signal; SHM_E_TIMEOUT. */
int shm_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tp = &ts;
    }
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, tp, NULL, 0);
    if (r == 0 || errno == EAGAIN || errno == EINTR)
        return SHM_OK;
    if (errno == ETIMEDOUT)
        return SHM_E_TIMEOUT;
    return SHM_E_SYS;
}

int shm_futex_wake(uint32_t *word)
{
    long r = syscall(SYS_futex, word, FUTEX_WAKE, 0x7FFFFFFF, NULL, NULL, 0);
    return r < 0 ? SHM_E_SYS : (int)r;
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
struct shm_futex_waitv_entry {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

/* Sleeps until one of n (<= 128) shared futex words differs from its value in
 * vals or is woken, at most timeout_ns (< 0: forever). Linux 5.16+
 * futex_waitv; on older kernels a 1 ms nap (callers re-check and loop). */
int shm_futex_waitv(uint32_t *const *words, const uint32_t *vals, uint32_t n, int64_t timeout_ns)
{
    struct shm_futex_waitv_entry w[128];
    if (n > 128)
        n = 128;
    if (n == 0) {
        struct timespec nap = {timeout_ns >= 0 ? timeout_ns / 1000000000 : 1,
                               timeout_ns >= 0 ? timeout_ns % 1000000000 : 0};
        nanosleep(&nap, NULL);
        return SHM_E_TIMEOUT;
    }
    for (uint32_t i = 0; i < n; i++) {
        w[i].val = vals[i];
        w[i].uaddr = (uint64_t)(uintptr_t)words[i];
        w[i].flags = 2;            /* FUTEX2_SIZE_U32; not private: words live in MAP_SHARED memory */
        w[i].reserved = 0;
    }
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        int64_t abs = shm_monotonic_ns() + timeout_ns;   /* futex_waitv takes an absolute deadline */
        ts.tv_sec = abs / 1000000000;
        ts.tv_nsec = abs % 1000000000;
        tp = &ts;
    }
    long r = syscall(SYS_futex_waitv, w, n, 0, tp, CLOCK_MONOTONIC);
    if (r >= 0 || errno == EAGAIN || errno == EINTR)
        return SHM_OK;
    if (errno == ETIMEDOUT)
        return SHM_E_TIMEOUT;
    if (errno == ENOSYS) {
        struct timespec nap = {0, timeout_ns >= 0 && timeout_ns < 1000000 ? timeout_ns : 1000000};
        nanosleep(&nap, NULL);
        return SHM_OK;
    }
    return SHM_E_SYS;
}

/* /proc/<pid>/<file> read into buf (NUL-terminated); 0 when there is no such pid */
static int read_proc(uint32_t pid, const char *file, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/%s", pid, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    return 1;
}

/* start time (field 22 of /proc/pid/stat), or 0 when there is no such pid */
static uint64_t proc_start_time(uint32_t pid)
{
    char buf[1024];
    if (!read_proc(pid, "stat", buf, sizeof buf))
        return 0;
    char *p = strrchr(buf, ')');   /* comm may hold spaces and parens */
    if (!p)
        return 0;
    unsigned long long st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime cutime cstime priority nice threads
     * itrealvalue starttime(22) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
               &st) != 1)
        return 0;
    return st;
}

/* Is uid one of pid's uids (real, effective, saved, fs: /proc/pid/status)?
 * A token's owner is the fsuid of the process that made it. */
static int proc_has_uid(uint32_t pid, uint32_t uid)
{
    char buf[4096];
    if (!read_proc(pid, "status", buf, sizeof buf))
        return 0;
    char *p = strstr(buf, "\nUid:");
    unsigned u[4];
    if (!p || sscanf(p + 5, "%u %u %u %u", &u[0], &u[1], &u[2], &u[3]) != 4)
        return 0;
    return u[0] == uid || u[1] == uid || u[2] == uid || u[3] == uid;
}

/* 1 alive, 0 dead. The flock on the token is the proof; where the token
 * cannot be opened for another reason than absence (permissions), fall back
 * to pid + start time from /proc, which is exact up to a pid reused within
 * one clock tick. A token is proof only if it is a regular file owned by
 * one of pid's uids: a squatter's token (another user pre-creating the
 * name and holding its lock, to keep a dead writer "alive" and its
 * reservation unsealed) is not, and the /proc test decides instead. */
int shm_process_alive(const char *token_prefix, uint32_t pid, uint64_t start_time)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s%u-%llu", token_prefix, pid,
                     (unsigned long long)start_time);
    if (n <= 0 || (size_t)n >= sizeof path)
        return proc_start_time(pid) == start_time;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return proc_start_time(pid) == start_time;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (st.st_uid != geteuid() && !proc_has_uid(pid, (uint32_t)st.st_uid))) {
        close(fd);
        return proc_start_time(pid) == start_time;
    }
    int alive;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        alive = 0;
        unlink(path);   /* a dead token: nobody will hold this name again */
        flock(fd, LOCK_UN);
    } else {
        alive = errno == EWOULDBLOCK;
        if (!alive)
            alive = proc_start_time(pid) == start_time;
    }
    close(fd);
    return alive;
}
