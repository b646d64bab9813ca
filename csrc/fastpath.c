/* fastpath.c — shmlog._fastpath: the per-record calls at the Python
 * boundary, written against the CPython C API (METH_FASTCALL, no Python
 * frame, no argument tuple).
 *
 * Owns three C base types and their express cases; every other case calls
 * the Python method of the same call (_send_any, _produce_any, _poll_any)
 * with the same arguments, which holds all the policy:
 *  - ProducerBase (of shmlog.producer.Producer): send() -- a bytes value,
 *    no key, headers or timestamp, an open writer with an express send
 *    context for the partition: one shmx_send, a RecordMetadata built here;
 *    produce() -- the topic's sticky batch open and no callbacks: one
 *    append to the open batch.
 *  - WriterBase (of the producer's per-topic _TopicWriter): the sticky
 *    partition and the express send contexts, with references to the cffi
 *    objects owning them, so an address found here is always live.
 *  - ConsumerBase (of Consumer): poll() hands out a record an earlier read
 *    decoded, or reads (and waits on) its one partition's ring itself and
 *    builds the Messages, outside a group and without value views.
 * Must never: link a second copy of the core (its functions come from the
 * cffi module through bind(), so each process has one copy of the core and
 * its state), hold policy, or release the GIL except around the consumer's
 * wait (the express add and the linger thread's seal are atomic with
 * respect to each other only because both run under it; see csrc/accum.c;
 * the express send and read keep it too).
 *
 * It also owns the consumer's batch builders, messages() and values(): the
 * rows one read decoded (struct shm_records_out, SHM_ROW_* in shmlog.h)
 * become Message objects (or value bytes) in one C loop, each value copied
 * once, straight from the consumer's read buffer; every row is checked
 * against the bytes the read filled, so a row that points outside them is
 * an error, never a read outside the buffer. Records with headers get
 * headers=None here and are finished by the caller (decode_headers).
 * With a views list (Consumer(copy=False)) values are read-only memoryviews
 * instead, over a ViewSource that counts every buffer taken from it;
 * release() releases them at the consumer's next poll and reports any whose
 * bytes something still points at, so the consumer never reuses bytes a
 * view, slice or array of a value can still read.
 *
 * The express table is Producer._express: a dict from topic name to the
 * address (an int) of the struct shm_accum of that topic's open sticky
 * batch. The Python side inserts an entry when it opens such a batch and
 * removes it (under the GIL) before it seals or frees the batch, so an
 * address found here is always a live, unsealed accumulator.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include "shmlog.h"
#include "fastpath.h"

static __typeof__(&shmx_accum_add) accum_add;    /* from the cffi module (bind) */
static __typeof__(&shmx_send) express_send;       /* from the cffi module (bind) */
static __typeof__(&shmx_large_copy) large_copy;   /* from the cffi module (bind) */
static __typeof__(&shmx_read) ring_read;           /* from the cffi module (bind) */
static __typeof__(&shm_wait_any) wait_any;         /* from the cffi module (bind) */
static __typeof__(&shmx_ctl_epoch) ctl_epoch;      /* from the cffi module (bind) */
static PyObject *str_produce_any;                 /* interned "_produce_any" */
static PyObject *str_send_any;                    /* interned "_send_any" */
static PyObject *str_poll_any;                    /* interned "_poll_any" */
static PyObject *str_poll_waited;                 /* interned "_poll_waited" */
static PyObject *str_headers;                     /* interned "_headers" */
static PyObject *str_large;                       /* interned "large" */

typedef struct {
    PyObject_HEAD
    PyObject *express;          /* dict: topic -> int address of its open struct shm_accum */
    PyObject *writers;          /* dict: topic -> its WriterBase (the Python _TopicWriter) */
} ProducerBase;

/* WriterBase: the C half of a producer's per-topic writer (client/producer.py
 * _TopicWriter): the sticky partition and the send contexts send()'s express
 * case may use. x[p] is the address of partition p's struct shm_send_ctx, or
 * NULL when send() must take the general path for p (not opened yet, parked
 * outside a transaction, a compacted topic's keyless records); xkeep[p] is
 * the cffi object owning that memory, held so the address stays valid. */
typedef struct {
    PyObject_HEAD
    int sticky;                 /* the sticky partition of keyless records */
    long long sticky_left;      /* bytes it may still take before it moves on */
    Py_ssize_t nx;
    struct shm_send_ctx **x;
    PyObject **xkeep;
} WriterBase;

static PyTypeObject WriterBaseType;

/* The express case: (topic, value) with value exact bytes, positional or
 * value=; any other keyword must be None. Returns 1 when the record was
 * added, 0 when the general path must take it, -1 with an exception set. */
static int produce_express(ProducerBase *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1 || nargs > 2 || accum_add == NULL || self->express == NULL || !PyDict_CheckExact(self->express))
        return 0;
    PyObject *topic = args[0], *value = nargs == 2 ? args[1] : NULL;
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *v = args[nargs + i];
            if (value == NULL && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "value") == 0)
                value = v;
            else if (v != Py_None)
                return 0;
        }
    }
    if (value == NULL || !PyBytes_CheckExact(value) || !PyUnicode_CheckExact(topic))
        return 0;
    PyObject *addr = PyDict_GetItemWithError(self->express, topic);     /* borrowed */
    if (addr == NULL)
        return PyErr_Occurred() ? -1 : 0;
    struct shm_accum *a = PyLong_AsVoidPtr(addr);
    if (a == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return accum_add(a, (const uint8_t *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)) >= 0;
}

/* the general path of a C method: self.<name>(*args, **kwargs), no tuple or dict built */
static PyObject *call_general(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[10], **stack = n + 1 <= 10 ? small : PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
    if (stack == NULL)
        return PyErr_NoMemory();
    stack[0] = self;
    memcpy(stack + 1, args, (size_t)n * sizeof(PyObject *));
    PyObject *res = PyObject_VectorcallMethod(name, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return res;
}

static PyObject *ProducerBase_produce(ProducerBase *self, PyObject *const *args, Py_ssize_t nargsf,
                                      PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int r = produce_express(self, args, nargs, kwnames);
    if (r < 0)
        return NULL;
    if (r)
        Py_RETURN_NONE;
    return call_general((PyObject *)self, str_produce_any, args, nargs, kwnames);
}

/* send(topic, value, key=None, headers=None, partition=None, timestamp_ms=None).
 * The express case: topic a str, value exact bytes, partition None or an int,
 * the rest None, the topic's writer open with an express context for the
 * partition: one shmx_send and a RecordMetadata built here. Every other case,
 * and an express write that would wait or failed (shmx_send < 0), is
 * self._send_any(...) -- the latter with the partition already chosen, as
 * the sticky partition accounting has been charged. */
static const char *const send_kw[] = {"topic", "value", "key", "headers", "partition", "timestamp_ms"};
static PyObject *send_kw_str[6];   /* the same, interned (PyInit): a literal keyword is the same object */

/* which of the n parameter names (and their interned strings) keyword kw
 * is (n: none): by identity first, as the compiler interns literal
 * keywords, else by value */
static int kw_index(PyObject *kw, PyObject *const *interned, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (kw == interned[i])
            return i;
    int i = 0;
    while (i < n && PyUnicode_CompareWithASCIIString(kw, names[i]) != 0)
        i++;
    return i;
}

static PyObject *ProducerBase_send(ProducerBase *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *a[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    if (nargs > 6 || express_send == NULL || self->writers == NULL || !PyDict_CheckExact(self->writers))
        goto general;
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    if (kwnames != NULL) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            int i = kw_index(PyTuple_GET_ITEM(kwnames, k), send_kw_str, send_kw, 6);
            if (i == 6 || a[i] != NULL)
                goto general;                  /* the general path raises the TypeError */
            a[i] = args[nargs + k];
        }
    }
    PyObject *topic = a[0], *value = a[1], *part = a[4];
    if (topic == NULL || value == NULL || !PyUnicode_CheckExact(topic) || !PyBytes_CheckExact(value))
        goto general;
    for (int i = 2; i < 6; i++)
        if (i != 4 && a[i] != NULL && a[i] != Py_None)
            goto general;
    PyObject *wo = PyDict_GetItemWithError(self->writers, topic);     /* borrowed */
    if (wo == NULL) {
        if (PyErr_Occurred())
            return NULL;
        goto general;
    }
    if (!PyObject_TypeCheck(wo, &WriterBaseType))
        goto general;
    WriterBase *w = (WriterBase *)wo;
    Py_ssize_t len = PyBytes_GET_SIZE(value), p;
    if (part == NULL || part == Py_None) {
        if (w->sticky_left - len < 0)
            goto general;                      /* the sticky partition moves on: the general path */
        w->sticky_left -= len;
        p = w->sticky;
    } else {
        if (!PyLong_CheckExact(part))
            goto general;
        p = PyLong_AsSsize_t(part);
        if (p == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto general;
        }
    }
    if (p < 0 || p >= w->nx || w->x[p] == NULL)
        goto chosen;
    int64_t rc = express_send(w->x[p], (const uint8_t *)PyBytes_AS_STRING(value), len);
    if (rc < 0)
        goto chosen;
    PyObject *po = PyLong_FromSsize_t(p);
    if (po == NULL)
        return NULL;
    PyObject *md = record_metadata_new(topic, po, rc);
    Py_DECREF(po);
    return md;
chosen:
    {
        PyObject *po = PyLong_FromSsize_t(p);
        if (po == NULL)
            return NULL;
        PyObject *stack[7] = {(PyObject *)self, topic, value, Py_None, Py_None, po, Py_None};
        PyObject *res = PyObject_VectorcallMethod(str_send_any, stack, 7, NULL);
        Py_DECREF(po);
        return res;
    }
general:
    return call_general((PyObject *)self, str_send_any, args, nargs, kwnames);
}

static int ProducerBase_traverse(ProducerBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->express);
    Py_VISIT(self->writers);
    return 0;
}

static int ProducerBase_clear(ProducerBase *self)
{
    Py_CLEAR(self->express);
    Py_CLEAR(self->writers);
    return 0;
}

static void ProducerBase_dealloc(ProducerBase *self)
{
    PyObject_GC_UnTrack(self);
    ProducerBase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(produce_doc,
"produce($self, /, topic, value=None, key=None, headers=None, partition=None,\n"
"        timestamp=None, on_delivery=None, callback=None)\n"
"--\n"
"\n"
"Queues one record and returns at once (confluent-kafka's produce).\n"
"on_delivery(err, msg) (or callback=, or the producer's on_delivery)\n"
"runs from a later poll()/flush()/close(): err None and msg a Message\n"
"with its offset, or err a shmlog error and msg.offset -1. Raises at\n"
"once for bad arguments, an unknown topic or partition, a record over\n"
"max_message_bytes, and BufferFull when queue_buffering_max_messages\n"
"records wait for delivery (call poll() or flush()).");

PyDoc_STRVAR(send_doc,
"send($self, /, topic, value, key=None, headers=None, partition=None,\n"
"     timestamp_ms=None)\n"
"--\n"
"\n"
"Appends one record; returns RecordMetadata(topic, partition, offset).\n"
"The partition is the given one, murmur2 of the key, or the sticky\n"
"partition for keyless records. Waits for room up to max_block_ms\n"
"(then BufferFull).");

static PyMethodDef ProducerBase_methods[] = {
    {"produce", (PyCFunction)(void (*)(void))ProducerBase_produce, METH_FASTCALL | METH_KEYWORDS, produce_doc},
    {"send", (PyCFunction)(void (*)(void))ProducerBase_send, METH_FASTCALL | METH_KEYWORDS, send_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ProducerBase_members[] = {
    {"_express", T_OBJECT, offsetof(ProducerBase, express), 0,
     "topic -> address of the struct shm_accum of its open sticky batch (see csrc/fastpath.c)"},
    {"_writers", T_OBJECT, offsetof(ProducerBase, writers), 0, "topic -> its writer (a WriterBase)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ProducerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlog._fastpath.ProducerBase",
    .tp_basicsize = sizeof(ProducerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of shmlog.Producer: the express cases of send() and produce().",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)ProducerBase_dealloc,
    .tp_traverse = (traverseproc)ProducerBase_traverse,
    .tp_clear = (inquiry)ProducerBase_clear,
    .tp_methods = ProducerBase_methods,
    .tp_members = ProducerBase_members,
};

/* WriterBase._xset(p, addr, owner): partition p's express context is the
 * struct shm_send_ctx at addr, owned by owner (held); addr 0: none */
static PyObject *WriterBase_xset(WriterBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_xset(partition, addr, owner)");
        return NULL;
    }
    Py_ssize_t p = PyLong_AsSsize_t(args[0]);
    void *addr = PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (p < 0 || p > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "_xset: partition out of range");
        return NULL;
    }
    if (p >= self->nx) {
        Py_ssize_t n = p + 1;
        struct shm_send_ctx **x = PyMem_Realloc(self->x, (size_t)n * sizeof(*x));
        if (x == NULL)
            return PyErr_NoMemory();
        self->x = x;
        PyObject **keep = PyMem_Realloc(self->xkeep, (size_t)n * sizeof(*keep));
        if (keep == NULL)
            return PyErr_NoMemory();
        self->xkeep = keep;
        for (Py_ssize_t i = self->nx; i < n; i++) {
            x[i] = NULL;
            keep[i] = NULL;
        }
        self->nx = n;
    }
    PyObject *old = self->xkeep[p];
    self->x[p] = addr;
    self->xkeep[p] = NULL;
    if (addr != NULL) {
        Py_INCREF(args[2]);
        self->xkeep[p] = args[2];
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static int WriterBase_clear(WriterBase *self)
{
    for (Py_ssize_t i = 0; i < self->nx; i++) {
        self->x[i] = NULL;
        Py_CLEAR(self->xkeep[i]);
    }
    return 0;
}

static PyObject *WriterBase_xclear(WriterBase *self, PyObject *unused)
{
    WriterBase_clear(self);
    Py_RETURN_NONE;
}

static int WriterBase_traverse(WriterBase *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->nx; i++)
        Py_VISIT(self->xkeep[i]);
    return 0;
}

static void WriterBase_dealloc(WriterBase *self)
{
    PyObject_GC_UnTrack(self);
    WriterBase_clear(self);
    PyMem_Free(self->x);
    PyMem_Free(self->xkeep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef WriterBase_methods[] = {
    {"_xset", (PyCFunction)(void (*)(void))WriterBase_xset, METH_FASTCALL,
     "_xset(partition, addr, owner): partition's express send context (addr 0: none)."},
    {"_xclear", (PyCFunction)WriterBase_xclear, METH_NOARGS, "_xclear(): no express send contexts."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef WriterBase_members[] = {
    {"sticky", T_INT, offsetof(WriterBase, sticky), 0, "the sticky partition of keyless records"},
    {"sticky_left", T_LONGLONG, offsetof(WriterBase, sticky_left), 0, "bytes the sticky partition may still take"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlog._fastpath.WriterBase",
    .tp_basicsize = sizeof(WriterBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of a producer's per-topic writer: the sticky partition and send()'s express contexts.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)WriterBase_dealloc,
    .tp_traverse = (traverseproc)WriterBase_traverse,
    .tp_clear = (inquiry)WriterBase_clear,
    .tp_methods = WriterBase_methods,
    .tp_members = WriterBase_members,
};

static PyObject *build_messages(const char *buf, uint64_t used, const int64_t *rows, Py_ssize_t n, PyObject *topic,
                                PyObject *partition, PyObject *views, Py_ssize_t *with_headers);

/* ConsumerBase: the C half of shmlog.Consumer. poll()'s express cases:
 *  - a record decoded by an earlier read (pending[pi]);
 *  - the express read: one partition, in its ring (Consumer._xbuild set x):
 *    shmx_read, and when nothing is there and timeout is not 0, one
 *    shm_wait_any of at most GROUP_WAIT_NS (the GIL released around it) and
 *    shmx_read again; the Messages built here.
 * Both only outside a group, without value views, with no error to report
 * and the topic table's epoch unchanged (the Python poll would release views
 * or look at its group or the topic table first). Every other case, and
 * every read that is not a plain success (an error code, a compressed batch,
 * nothing after the wait), is self._poll_any(...) -- or, after a wait that
 * timed out, self._poll_waited(what is left of the timeout) -- with x
 * cleared first: the Python side holds the policy and builds x again when it
 * holds (a lapped or stuck cursor, the files, a large record, a seek, a new
 * buffer or assignment all clear it; see Consumer._xclear's callers). */
struct xread {
    const struct shm_ring *ring;
    struct shm_cursor *cur;
    uint8_t *buf;
    uint64_t cap;
    int crc;
    int64_t unblock_ns;
    struct shm_records_out *out;
    const int64_t *rows;
    uint32_t max_poll;
    void *const *hdrs;                  /* shm_wait_any's one-element arrays */
    const struct shm_ring *const *rings;
    struct shm_cursor *const *curs;
    int64_t spin_ns;                    /* < 0: spin the whole wait (wait="spin") */
    struct shm_spin_state *spin;
    const void *ctl;                    /* the control segment: the topic table's epoch */
    int64_t large_bytes;                /* a value this long: the one-copy path next (Python) */
    PyObject *part, *topic, *partition; /* owned */
    PyObject *keep;                     /* owned, NULL when x is unset: what the addresses point into */
};

#define GROUP_WAIT_NS 100000000LL       /* consumer.py GROUP_WAIT_S */

typedef struct {
    PyObject_HEAD
    PyObject *pending;          /* list of Messages decoded earlier */
    Py_ssize_t pi;              /* the next one to hand out */
    PyObject *views;            /* None, or the copy=False views list */
    PyObject *group;            /* None, or the Membership */
    PyObject *error;            /* None, or an error the next poll raises */
    long long epoch;            /* the topic table epoch the consumer last looked at (-1: look) */
    struct xread x;
} ConsumerBase;

static void xclear(ConsumerBase *self)
{
    PyObject *keep = self->x.keep, *part = self->x.part, *topic = self->x.topic, *partition = self->x.partition;
    memset(&self->x, 0, sizeof self->x);
    Py_XDECREF(keep);
    Py_XDECREF(part);
    Py_XDECREF(topic);
    Py_XDECREF(partition);
}

/* _xset(ring, cur, buf, cap, crc, unblock_ns, out, rows, max_poll, hdrs, rings, curs, spin_ns, spin, ctl,
 *       large_bytes, part, topic, partition, keep): the express read's partition (addresses as ints;
 *       keep holds the objects they point into) */
static PyObject *ConsumerBase_xset(ConsumerBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 20 || !PyUnicode_CheckExact(args[17]) || !PyLong_CheckExact(args[18])) {
        PyErr_SetString(PyExc_TypeError, "_xset(ring, cur, buf, cap, crc, unblock_ns, out, rows, max_poll, hdrs, "
                                         "rings, curs, spin_ns, spin, ctl, large_bytes, part, topic, partition, keep)");
        return NULL;
    }
    struct xread x = {0};
    x.ring = PyLong_AsVoidPtr(args[0]);
    x.cur = PyLong_AsVoidPtr(args[1]);
    x.buf = PyLong_AsVoidPtr(args[2]);
    x.cap = PyLong_AsUnsignedLongLong(args[3]);
    x.crc = PyObject_IsTrue(args[4]);
    x.unblock_ns = PyLong_AsLongLong(args[5]);
    x.out = PyLong_AsVoidPtr(args[6]);
    x.rows = PyLong_AsVoidPtr(args[7]);
    long long max_poll = PyLong_AsLongLong(args[8]);
    x.hdrs = PyLong_AsVoidPtr(args[9]);
    x.rings = PyLong_AsVoidPtr(args[10]);
    x.curs = PyLong_AsVoidPtr(args[11]);
    x.spin_ns = PyLong_AsLongLong(args[12]);
    x.spin = args[13] == Py_None ? NULL : PyLong_AsVoidPtr(args[13]);
    x.ctl = PyLong_AsVoidPtr(args[14]);
    x.large_bytes = PyLong_AsLongLong(args[15]);
    if (PyErr_Occurred())
        return NULL;
    if (!x.ring || !x.cur || !x.buf || !x.out || !x.rows || !x.hdrs || !x.rings || !x.curs || !x.ctl ||
        max_poll < 1 || max_poll > UINT32_MAX || x.crc < 0 || ring_read == NULL) {
        PyErr_SetString(PyExc_ValueError, "_xset: a null address or a bad max_poll (or bind() not called)");
        return NULL;
    }
    x.max_poll = (uint32_t)max_poll;
    xclear(self);
    x.part = Py_NewRef(args[16]);
    x.topic = Py_NewRef(args[17]);
    x.partition = Py_NewRef(args[18]);
    x.keep = Py_NewRef(args[19]);
    self->x = x;
    Py_RETURN_NONE;
}

static PyObject *ConsumerBase_xclear(ConsumerBase *self, PyObject *unused)
{
    xclear(self);
    Py_RETURN_NONE;
}

static const char *const poll_kw[] = {"timeout"};
static PyObject *poll_kw_str[1];   /* interned (PyInit) */

/* poll's timeout as nanoseconds: -1 for None, -2 for anything but None, an
 * exact int or a finite float >= 0 (the general path validates it); *zero
 * says whether it is exactly 0 */
static int64_t timeout_ns_of(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *zero)
{
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *t = Py_None;
    *zero = 0;
    if (nargs + nk > 1)
        return -2;
    if (nk == 1 && kw_index(PyTuple_GET_ITEM(kwnames, 0), poll_kw_str, poll_kw, 1) != 0)
        return -2;
    if (nargs + nk == 1)
        t = args[0];
    if (t == Py_None)
        return -1;
    double d;
    if (PyFloat_CheckExact(t))
        d = PyFloat_AS_DOUBLE(t);
    else if (PyLong_CheckExact(t)) {
        long long v = PyLong_AsLongLong(t);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -2;
        }
        d = (double)v;
    } else
        return -2;
    if (!(d >= 0.0) || d > 1e9)
        return -2;
    *zero = d == 0.0;
    int64_t ns = (int64_t)(d * 1e9);
    return ns == 0 && !*zero ? 1 : ns;
}

/* the records x's read decoded, as poll hands them out: the first, the
 * rest kept as pending; headers decoded by self._headers; a large last
 * value marks the part (the one-copy path next) and clears x */
static PyObject *xmessages(ConsumerBase *self, int n)
{
    struct xread *x = &self->x;
    Py_ssize_t with_headers = 0;
    PyObject *msgs = build_messages((const char *)x->buf, x->out->bytes_used, x->rows, n, x->topic, x->partition,
                                    Py_None, &with_headers);
    if (msgs == NULL)
        return NULL;
    if (with_headers) {
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, str_headers, msgs);
        if (r == NULL) {
            Py_DECREF(msgs);
            return NULL;
        }
        Py_DECREF(r);
    }
    if (x->rows[(n - 1) * SHM_ROW_FIELDS + SHM_ROW_VALUE_LEN] >= x->large_bytes) {
        if (PyObject_SetAttr(x->part, str_large, Py_True) < 0) {
            Py_DECREF(msgs);
            return NULL;
        }
        xclear(self);
    }
    PyObject *first = Py_NewRef(PyList_GET_ITEM(msgs, 0));
    if (n > 1) {
        Py_SETREF(self->pending, msgs);
        self->pi = 1;
    } else
        Py_DECREF(msgs);
    return first;
}

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* the express read (x set, the caller checked the rest); NULL without an
 * error set: take the general path */
static PyObject *xpoll(ConsumerBase *self, int64_t tns, int zero)
{
    struct xread *x = &self->x;
    x->out->max_records = x->max_poll;
    int n = ring_read(x->ring, x->cur, x->buf, x->cap, x->crc, x->unblock_ns, x->out);
    if (n == 0 && !x->out->compressed) {
        if (zero)
            Py_RETURN_NONE;
        int whole = tns >= 0 && tns <= GROUP_WAIT_NS;
        int64_t w = whole ? tns : GROUP_WAIT_NS, t0 = now_ns();
        PyObject *keep = Py_NewRef(x->keep);    /* what the wait's arrays point into, whatever runs meanwhile */
        struct xread xw = *x;
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = wait_any(xw.hdrs, xw.rings, xw.curs, 1, w, xw.spin_ns < 0 ? w : xw.spin_ns, xw.unblock_ns, xw.spin);
        Py_END_ALLOW_THREADS
        int same = x->keep == keep;
        Py_DECREF(keep);
        int64_t left = tns < 0 ? -1 : whole ? 0 : tns - (now_ns() - t0);
        if (same && r >= 0) {
            x->out->max_records = x->max_poll;
            n = ring_read(x->ring, x->cur, x->buf, x->cap, x->crc, x->unblock_ns, x->out);
        } else
            n = 0;
        if (n == 0 || x->out->compressed) {
            if (same)
                xclear(self);
            PyObject *rest = tns < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(left > 0 ? (double)left / 1e9 : 0.0);
            if (rest == NULL)
                return NULL;
            PyObject *res = PyObject_CallMethodOneArg((PyObject *)self, r >= 0 ? str_poll_any : str_poll_waited, rest);
            Py_DECREF(rest);
            return res;
        }
    }
    if (n < 1 || x->out->compressed) {
        xclear(self);
        return NULL;
    }
    return xmessages(self, n);
}

static PyObject *ConsumerBase_poll(ConsumerBase *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    PyObject *pend = self->pending;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->views == Py_None && self->group == Py_None) {
        if (pend != NULL && PyList_CheckExact(pend) && self->pi >= 0 && self->pi < PyList_GET_SIZE(pend)) {
            PyObject *m = PyList_GET_ITEM(pend, self->pi);
            self->pi++;
            Py_INCREF(m);
            return m;
        }
        int zero;
        int64_t tns;
        if (self->x.keep != NULL && (self->error == NULL || self->error == Py_None) &&
            (long long)ctl_epoch(self->x.ctl) == self->epoch &&
            (tns = timeout_ns_of(args, nargs, kwnames, &zero)) != -2) {
            PyObject *m = xpoll(self, tns, zero);
            if (m != NULL || PyErr_Occurred())
                return m;
        }
    }
    return call_general((PyObject *)self, str_poll_any, args, nargs, kwnames);
}

static int ConsumerBase_traverse(ConsumerBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pending);
    Py_VISIT(self->views);
    Py_VISIT(self->group);
    Py_VISIT(self->error);
    Py_VISIT(self->x.part);
    Py_VISIT(self->x.keep);
    return 0;
}

static int ConsumerBase_clear(ConsumerBase *self)
{
    Py_CLEAR(self->pending);
    Py_CLEAR(self->views);
    Py_CLEAR(self->group);
    Py_CLEAR(self->error);
    xclear(self);
    return 0;
}

static void ConsumerBase_dealloc(ConsumerBase *self)
{
    PyObject_GC_UnTrack(self);
    ConsumerBase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ConsumerBase_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    ConsumerBase *self = (ConsumerBase *)PyType_GenericNew(tp, args, kw);
    if (self != NULL) {
        Py_INCREF(Py_None);
        self->views = Py_None;
        Py_INCREF(Py_None);
        self->group = Py_None;
        self->error = Py_NewRef(Py_None);
        self->epoch = -1;
    }
    return (PyObject *)self;
}

PyDoc_STRVAR(poll_doc,
"poll($self, /, timeout=None)\n"
"--\n"
"\n"
"The next record, or None when none arrives within timeout seconds\n"
"(None: wait forever).");

static PyMethodDef ConsumerBase_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))ConsumerBase_poll, METH_FASTCALL | METH_KEYWORDS, poll_doc},
    {"_xset", (PyCFunction)(void (*)(void))ConsumerBase_xset, METH_FASTCALL, "poll's express read: its partition"},
    {"_xclear", (PyCFunction)ConsumerBase_xclear, METH_NOARGS, "poll's express read: unset (the general path next)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ConsumerBase_members[] = {
    {"_pending", T_OBJECT, offsetof(ConsumerBase, pending), 0, "Messages decoded by an earlier read"},
    {"_pi", T_PYSSIZET, offsetof(ConsumerBase, pi), 0, "the next of _pending to hand out"},
    {"_views", T_OBJECT, offsetof(ConsumerBase, views), 0, "None, or the list of copy=False value views"},
    {"_group", T_OBJECT, offsetof(ConsumerBase, group), 0, "None, or the group Membership"},
    {"_error", T_OBJECT, offsetof(ConsumerBase, error), 0, "None, or the error the next poll raises"},
    {"_epoch", T_LONGLONG, offsetof(ConsumerBase, epoch), 0, "the topic table epoch last looked at (-1: look)"},
    {"_xpart", T_OBJECT, offsetof(ConsumerBase, x.part), READONLY, "the express read's partition, or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ConsumerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlog._fastpath.ConsumerBase",
    .tp_basicsize = sizeof(ConsumerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of shmlog.Consumer: poll()'s express cases.",
    .tp_new = ConsumerBase_new,
    .tp_dealloc = (destructor)ConsumerBase_dealloc,
    .tp_traverse = (traverseproc)ConsumerBase_traverse,
    .tp_clear = (inquiry)ConsumerBase_clear,
    .tp_methods = ConsumerBase_methods,
    .tp_members = ConsumerBase_members,
};

/* bind(accum_add, send, large_copy, read, wait_any, ctl_epoch): the core's functions this module
 * calls, as addresses from the cffi module (shmlog._native): one copy of the core */
static PyObject *fastpath_bind(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(shmx_accum_add, shmx_send, shmx_large_copy, shmx_read, shm_wait_any, shmx_ctl_epoch)");
        return NULL;
    }
    void *p[6];
    for (int i = 0; i < 6; i++) {
        p[i] = PyLong_AsVoidPtr(args[i]);
        if (p[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bind: a null function address");
            return NULL;
        }
    }
    accum_add = (__typeof__(accum_add))p[0];
    express_send = (__typeof__(express_send))p[1];
    large_copy = (__typeof__(large_copy))p[2];
    ring_read = (__typeof__(ring_read))p[3];
    wait_any = (__typeof__(wait_any))p[4];
    ctl_epoch = (__typeof__(ctl_epoch))p[5];
    Py_RETURN_NONE;
}

/* large_value(ring, cursor, peeked, verify_crc) -> (status, value): the value
 * of the large record shmx_large_peek described (addresses of the ring
 * handle, the cursor and the peeked row), copied once from the ring into a
 * new bytes object with the batch's CRC-32C summed in the same pass
 * (shmx_large_copy); value is None unless status is 1. A fresh bytes object
 * is filled in place, never zeroed first. */
static PyObject *fastpath_large_value(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || large_copy == NULL) {
        PyErr_SetString(PyExc_TypeError, "large_value(ring, cursor, peeked, verify_crc) after bind()");
        return NULL;
    }
    const struct shm_ring *r = PyLong_AsVoidPtr(args[0]);
    const struct shm_cursor *cur = r ? PyLong_AsVoidPtr(args[1]) : NULL;
    const int64_t *peeked = cur ? PyLong_AsVoidPtr(args[2]) : NULL;
    int verify = peeked ? PyObject_IsTrue(args[3]) : 0;
    if (PyErr_Occurred())
        return NULL;
    if (peeked == NULL || peeked[SHM_ROW_VALUE_LEN] < 0) {
        PyErr_SetString(PyExc_ValueError, "large_value: a null address or a null value");
        return NULL;
    }
    PyObject *v = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)peeked[SHM_ROW_VALUE_LEN]);
    if (v == NULL)
        return NULL;
    int rc = large_copy(r, cur, peeked, (uint8_t *)PyBytes_AS_STRING(v), verify);
    if (rc != 1) {
        Py_DECREF(v);
        v = Py_None;
        Py_INCREF(v);
    }
    return Py_BuildValue("(iN)", rc, v);
}

/* ViewSource: the exporter behind every copy=False value view. It counts
 * the buffers taken from it, so the consumer knows when nothing at all —
 * not its own view, nor a slice, a memoryview of it or a numpy array made
 * from it — still points at the bytes (release() below). */
typedef struct {
    PyObject_HEAD
    char *ptr;
    Py_ssize_t len;
    Py_ssize_t exports;
    int writable;               /* a producer loan's value area (loan_view), else read-only */
} ViewSource;

static int ViewSource_getbuffer(ViewSource *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->len, !self->writable, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void ViewSource_releasebuffer(ViewSource *self, Py_buffer *view)
{
    self->exports--;
}

static PyBufferProcs ViewSource_as_buffer = {
    (getbufferproc)ViewSource_getbuffer,
    (releasebufferproc)ViewSource_releasebuffer,
};

static PyTypeObject ViewSourceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlog._fastpath.ViewSource",
    .tp_basicsize = sizeof(ViewSource),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_as_buffer = &ViewSource_as_buffer,
    .tp_doc = "The bytes behind Consumer(copy=False) value views (csrc/fastpath.c).",
};

/* a read-only memoryview of len bytes at p, its source appended to views;
 * views NULL: a writable one, appended nowhere (loan_view) */
static PyObject *new_view(char *p, Py_ssize_t len, PyObject *views)
{
    ViewSource *src = PyObject_New(ViewSource, &ViewSourceType);
    if (src == NULL)
        return NULL;
    src->ptr = p;
    src->len = len;
    src->exports = 0;
    src->writable = views == NULL;
    PyObject *v = PyMemoryView_FromObject((PyObject *)src);
    if (v != NULL && views != NULL && PyList_Append(views, v) < 0)
        Py_CLEAR(v);
    Py_DECREF(src);
    return v;
}

/* A value: bytes of buf[start:start+len], or (views a list: copy=False) a
 * read-only memoryview of them whose source is appended to views (the
 * consumer releases them at its next poll); None for len -1; NULL (error
 * set) when the row points outside the used bytes */
static PyObject *value_of(const char *buf, uint64_t used, int64_t start, int64_t len, PyObject *views)
{
    if (len < 0) {
        Py_RETURN_NONE;
    }
    if (start < 0 || (uint64_t)start > used || (uint64_t)len > used - (uint64_t)start) {
        PyErr_Format(PyExc_ValueError, "a decoded row points outside the read buffer (%lld+%lld > %llu)",
                     (long long)start, (long long)len, (unsigned long long)used);
        return NULL;
    }
    if (views == Py_None)
        return PyBytes_FromStringAndSize(buf + start, (Py_ssize_t)len);
    return new_view((char *)buf + start, (Py_ssize_t)len, views);
}

/* the read buffer, the rows and their count from (buf_addr, used, rows_addr, n, ...):
 * the first four of the `want` arguments `name` takes (the last, views, optional) */
static int batch_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name, const char **buf,
                      uint64_t *used, const int64_t **rows, Py_ssize_t *n)
{
    if (nargs != want && nargs != want - 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd or %zd arguments", name, want - 1, want);
        return -1;
    }
    if (nargs == want && args[want - 1] != Py_None && !PyList_CheckExact(args[want - 1])) {
        PyErr_Format(PyExc_TypeError, "%s(): views must be a list or None", name);
        return -1;
    }
    *buf = PyLong_AsVoidPtr(args[0]);
    *used = PyLong_AsUnsignedLongLong(args[1]);
    *rows = PyLong_AsVoidPtr(args[2]);
    *n = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return -1;
    if (*buf == NULL || *rows == NULL || *n < 0) {
        PyErr_SetString(PyExc_ValueError, "messages/values: a null buffer or rows, or a negative count");
        return -1;
    }
    return 0;
}

/* messages(buf_addr, used, rows_addr, n, topic, partition[, views]) ->
 * (list of Message(topic, partition, offset, key, value, headers,
 * timestamp_ms), how many have headers): headers is () for a record without
 * headers and None for one with them (the caller decodes those). With views
 * a list, values are read-only memoryviews of the read buffer, appended to
 * it. The Messages are built here (pyrecords.c), no argument tuple, offsets
 * and timestamps unboxed until read. */
static PyObject *fastpath_messages(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    const char *buf;
    uint64_t used;
    const int64_t *rows;
    Py_ssize_t n, with_headers = 0;
    if (batch_args(args, nargs, 7, "messages", &buf, &used, &rows, &n) < 0)
        return NULL;
    PyObject *out = build_messages(buf, used, rows, n, args[4], args[5], nargs == 7 ? args[6] : Py_None, &with_headers);
    return out == NULL ? NULL : Py_BuildValue("(Nn)", out, with_headers);
}

/* messages()'s loop: the list of n Messages, *with_headers of them with headers=None */
static PyObject *build_messages(const char *buf, uint64_t used, const int64_t *rows, Py_ssize_t n, PyObject *topic,
                                PyObject *partition, PyObject *views, Py_ssize_t *with_headers)
{
    PyObject *empty = PyTuple_New(0);
    PyObject *out = PyList_New(n);
    if (empty == NULL || out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *r = rows + i * SHM_ROW_FIELDS;
        PyObject *key = value_of(buf, used, r[SHM_ROW_KEY_START], r[SHM_ROW_KEY_LEN], Py_None);
        PyObject *value = key ? value_of(buf, used, r[SHM_ROW_VALUE_START], r[SHM_ROW_VALUE_LEN], views) : NULL;
        if (value == NULL) {
            Py_XDECREF(key);
            goto fail;
        }
        PyObject *headers = empty;
        if (r[SHM_ROW_HEADER_COUNT]) {
            headers = Py_None;
            (*with_headers)++;
        }
        PyObject *m = message_new(topic, partition, r[SHM_ROW_OFFSET], key, value, headers, r[SHM_ROW_TIMESTAMP]);
        if (m == NULL) {
            Py_DECREF(key);
            Py_DECREF(value);
            goto fail;
        }
        PyList_SET_ITEM(out, i, m);
    }
    Py_DECREF(empty);
    return out;
fail:
    Py_XDECREF(empty);
    Py_XDECREF(out);
    return NULL;
}

/* values(buf_addr, used, rows_addr, n[, views]) -> list of each record's
 * value (bytes, or None; memoryviews appended to views when it is a list) */
static PyObject *fastpath_values(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    const char *buf;
    uint64_t used;
    const int64_t *rows;
    Py_ssize_t n;
    if (batch_args(args, nargs, 5, "values", &buf, &used, &rows, &n) < 0)
        return NULL;
    PyObject *views = nargs == 5 ? args[4] : Py_None;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *r = rows + i * SHM_ROW_FIELDS;
        PyObject *v = value_of(buf, used, r[SHM_ROW_VALUE_START], r[SHM_ROW_VALUE_LEN], views);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

/* view(addr, len, views) -> a read-only memoryview of len bytes at addr
 * (a frame in the ring, shmx_large_peek bounds-checked it), appended to views */
static PyObject *fastpath_view(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "view(addr, len, views: list)");
        return NULL;
    }
    char *p = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t len = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (p == NULL || len < 0) {
        PyErr_SetString(PyExc_ValueError, "view: a null address or a negative length");
        return NULL;
    }
    return new_view(p, len, args[2]);
}

/* loan_view(addr, len) -> a WRITABLE memoryview of len bytes at addr: a
 * producer loan's value area in the ring (shm_loan_begin placed it there).
 * The loan releases it with release([view]) before its commit or abort
 * (ring.c, L2): a stale one raises ValueError, and one whose bytes
 * something derived still holds is counted, so the loan aborts instead. */
static PyObject *fastpath_loan_view(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "loan_view(addr, len)");
        return NULL;
    }
    char *p = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t len = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (p == NULL || len < 0) {
        PyErr_SetString(PyExc_ValueError, "loan_view: a null address or a negative length");
        return NULL;
    }
    return new_view(p, len, NULL);
}

/* release(views) -> how many values still have buffers taken from them
 * (their sources stay in the list; the rest is removed): every view handed
 * out by the last poll is released, so using one afterwards raises
 * ValueError instead of reading bytes that are no longer its record's. A
 * value whose source still has exports (a slice or memoryview of the view,
 * np.frombuffer of it) is counted: its bytes must not be reused yet. */
static PyObject *fastpath_release(PyObject *mod, PyObject *views)
{
    static PyObject *name;
    if (!PyList_CheckExact(views)) {
        PyErr_SetString(PyExc_TypeError, "release(views: list)");
        return NULL;
    }
    if (name == NULL && (name = PyUnicode_InternFromString("release")) == NULL)
        return NULL;
    PyObject *still = PyList_New(0);
    if (still == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(views);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(views, i), *src = v;
        if (PyMemoryView_Check(v)) {
            src = PyMemoryView_GET_BASE(v);   /* the ViewSource, held by the view's managed buffer */
            Py_XINCREF(src);
            PyObject *r = PyObject_CallMethodNoArgs(v, name);
            if (r == NULL && PyErr_ExceptionMatches(PyExc_BufferError))
                PyErr_Clear();                /* exported directly: counted through its source below */
            else if (r == NULL) {
                Py_XDECREF(src);
                Py_DECREF(still);
                return NULL;
            }
            Py_XDECREF(r);
        } else {
            Py_INCREF(src);
        }
        int keep = src != NULL && Py_IS_TYPE(src, &ViewSourceType) && ((ViewSource *)src)->exports > 0;
        if (keep && PyList_Append(still, src) < 0) {
            Py_DECREF(src);
            Py_DECREF(still);
            return NULL;
        }
        Py_XDECREF(src);
    }
    Py_ssize_t kept = PyList_GET_SIZE(still);
    int rc = PyList_SetSlice(views, 0, n, still);
    Py_DECREF(still);
    if (rc < 0)
        return NULL;
    return PyLong_FromSsize_t(kept);
}

/* pack(items) -> (blob, lengths) or None: a list or tuple of exact bytes and
 * None as one bytes blob of the values end to end and a bytes object of
 * int64 lengths (-1 for None), in one pass over the items and one copy of
 * each value: what send_batch hands the C encoder. None when an item is
 * anything else (bytearray, memoryview, a wrong type): the caller's general
 * packing then takes the batch (and names a wrong type). Only exact bytes
 * are read, so no Python code runs between the two loops and the list
 * cannot change under them. */
static PyObject *fastpath_pack(PyObject *mod, PyObject *items)
{
    if (!PyList_Check(items) && !PyTuple_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "pack(items: list | tuple)");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items), total = 0;
    PyObject **it = PySequence_Fast_ITEMS(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = it[i];
        if (PyBytes_CheckExact(v))
            total += PyBytes_GET_SIZE(v);
        else if (v != Py_None)
            Py_RETURN_NONE;
    }
    PyObject *blob = PyBytes_FromStringAndSize(NULL, total);
    PyObject *lens = blob ? PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t)) : NULL;
    if (lens == NULL) {
        Py_XDECREF(blob);
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(blob);
    int64_t *len = (int64_t *)PyBytes_AS_STRING(lens);   /* bytes data is aligned for any scalar */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = it[i];
        if (v == Py_None) {
            len[i] = -1;
            continue;
        }
        Py_ssize_t k = PyBytes_GET_SIZE(v);
        memcpy(dst, PyBytes_AS_STRING(v), (size_t)k);
        dst += k;
        len[i] = k;
    }
    PyObject *r = PyTuple_Pack(2, blob, lens);
    Py_DECREF(blob);
    Py_DECREF(lens);
    return r;
}

static PyMethodDef fastpath_functions[] = {
    {"view", (PyCFunction)(void (*)(void))fastpath_view, METH_FASTCALL,
     "view(addr, len, views): a read-only memoryview of ring memory, appended to views."},
    {"loan_view", (PyCFunction)(void (*)(void))fastpath_loan_view, METH_FASTCALL,
     "loan_view(addr, len): a writable memoryview of a producer loan's value area."},
    {"release", fastpath_release, METH_O,
     "release(views): releases every view in the list; returns how many stay (still exported)."},
    {"bind", (PyCFunction)(void (*)(void))fastpath_bind, METH_FASTCALL,
     "bind(shmx_accum_add, shmx_send, shmx_large_copy, shmx_read, shm_wait_any, shmx_ctl_epoch): the core's "
     "functions (addresses), from the cffi module (shmlog._native)."},
    {"large_value", (PyCFunction)(void (*)(void))fastpath_large_value, METH_FASTCALL,
     "large_value(ring, cursor, peeked, verify_crc) -> (status, bytes | None): a large record's value, copied "
     "and CRC-checked in one pass."},
    {"messages", (PyCFunction)(void (*)(void))fastpath_messages, METH_FASTCALL,
     "messages(buf_addr, used, rows_addr, n, topic, partition[, views]) -> (Message list, how many have "
     "headers)."},
    {"pack", fastpath_pack, METH_O,
     "pack(items) -> (blob, int64 lengths as bytes), or None when an item is not exact bytes or None."},
    {"values", (PyCFunction)(void (*)(void))fastpath_values, METH_FASTCALL,
     "values(buf_addr, used, rows_addr, n[, views]): a read's decoded rows' values (bytes, or None)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "shmlog._fastpath",
    "The per-record calls at the Python boundary in C (see csrc/fastpath.c).", -1, fastpath_functions,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    PyTypeObject *bases[] = {&ProducerBaseType, &WriterBaseType, &ConsumerBaseType};
    if (PyType_Ready(&ViewSourceType) < 0)
        return NULL;
    str_produce_any = PyUnicode_InternFromString("_produce_any");
    str_send_any = PyUnicode_InternFromString("_send_any");
    str_poll_any = PyUnicode_InternFromString("_poll_any");
    str_poll_waited = PyUnicode_InternFromString("_poll_waited");
    str_headers = PyUnicode_InternFromString("_headers");
    str_large = PyUnicode_InternFromString("large");
    if (str_produce_any == NULL || str_send_any == NULL || str_poll_any == NULL || str_poll_waited == NULL ||
        str_headers == NULL || str_large == NULL)
        return NULL;
    for (int i = 0; i < 6; i++)
        if ((send_kw_str[i] = PyUnicode_InternFromString(send_kw[i])) == NULL)
            return NULL;
    if ((poll_kw_str[0] = PyUnicode_InternFromString(poll_kw[0])) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    for (int i = 0; i < 3; i++) {
        if (PyType_Ready(bases[i]) < 0)
            goto fail;
        Py_INCREF(bases[i]);
        if (PyModule_AddObject(m, strrchr(bases[i]->tp_name, '.') + 1, (PyObject *)bases[i]) < 0) {
            Py_DECREF(bases[i]);
            goto fail;
        }
    }
    if (records_ready(m) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
