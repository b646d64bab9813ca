/* pyrecords.c — the record types users see, as C types of shmlog._fastpath:
 * Message (one consumed record) and RecordMetadata (where a sent record
 * landed), re-exported by shmlog.records.
 *
 * Owns: one frozen-record implementation driven by a field table (object
 * fields and int64 fields, the int64 ones boxed only when read), used by
 * both types: construction by position or keyword, read-only attributes,
 * ==, hash, repr, pickling and __match_args__, like the msgspec frozen
 * structs they replace (Message(gc=False, frozen=True)), and the fast
 * constructors the batch builders and send() call without building any
 * argument tuple. Must never: touch shared memory or the core, or be
 * tracked by the garbage collector (a record holds str, int, bytes,
 * memoryviews and tuples of them: nothing that can point back at it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "fastpath.h"

enum { F_OBJ, F_I64 };

struct field {
    const char *name;
    int kind;
    Py_ssize_t offset;
};

#define OBJ(T, f) {#f, F_OBJ, offsetof(T, f)}
#define I64(T, f) {#f, F_I64, offsetof(T, f)}

static const struct field message_fields[] = {
    OBJ(MessageObject, topic), OBJ(MessageObject, partition), I64(MessageObject, offset),
    OBJ(MessageObject, key), OBJ(MessageObject, value), OBJ(MessageObject, headers),
    I64(MessageObject, timestamp_ms), {NULL, 0, 0},
};

static const struct field metadata_fields[] = {
    OBJ(RecordMetadataObject, topic), OBJ(RecordMetadataObject, partition), I64(RecordMetadataObject, offset),
    {NULL, 0, 0},
};

static const struct field *fields_of(PyTypeObject *tp)
{
    return tp == &MessageType ? message_fields : metadata_fields;
}

static Py_ssize_t nfields(const struct field *f)
{
    Py_ssize_t n = 0;
    while (f[n].name)
        n++;
    return n;
}

#define SLOT_OBJ(self, f) (*(PyObject **)((char *)(self) + (f)->offset))
#define SLOT_I64(self, f) (*(int64_t *)((char *)(self) + (f)->offset))

/* a new record of type tp, fields unset (object fields NULL) */
static PyObject *record_alloc(PyTypeObject *tp)
{
    PyObject *op = PyObject_Malloc((size_t)tp->tp_basicsize);
    if (op == NULL)
        return PyErr_NoMemory();
    memset((char *)op + sizeof(PyObject), 0, (size_t)tp->tp_basicsize - sizeof(PyObject));
    PyObject_Init(op, tp);
    return op;
}

/* sets field f of a fresh record from v (a new reference is taken); -1 with
 * TypeError/OverflowError for an int64 field given something else */
static int set_field(PyObject *self, const struct field *f, PyObject *v)
{
    if (f->kind == F_OBJ) {
        Py_INCREF(v);
        SLOT_OBJ(self, f) = v;
        return 0;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s.%s must be an int, not %.100s", Py_TYPE(self)->tp_name, f->name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    SLOT_I64(self, f) = x;
    return 0;
}

/* tp_vectorcall (and tp_new through it): every field, by position or keyword */
static PyObject *record_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    const struct field *fs = fields_of(tp);
    Py_ssize_t nf = nfields(fs), nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    const char *name = strrchr(tp->tp_name, '.') + 1;
    if (nargs > nf) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments, %zd given", name, nf, nargs);
        return NULL;
    }
    PyObject *given[8] = {NULL};
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < nf && PyUnicode_CompareWithASCIIString(kw, fs[i].name) != 0)
            i++;
        if (i == nf) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", name, kw);
            return NULL;
        }
        if (given[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", name, fs[i].name);
            return NULL;
        }
        given[i] = args[nargs + k];
    }
    PyObject *self = record_alloc(tp);
    if (self == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (given[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", name, fs[i].name);
            goto fail;
        }
        if (set_field(self, &fs[i], given[i]) < 0)
            goto fail;
    }
    return self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *record_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        /* keyword calls come through vectorcall; this is only reached by odd callers */
        PyObject *names = PyDict_Keys(kwargs), *stack[16];
        if (names == NULL)
            return NULL;
        Py_ssize_t na = PyTuple_GET_SIZE(args), nk = PyList_GET_SIZE(names);
        if (na + nk > 16) {
            Py_DECREF(names);
            PyErr_SetString(PyExc_TypeError, "too many arguments");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < na; i++)
            stack[i] = PyTuple_GET_ITEM(args, i);
        for (Py_ssize_t i = 0; i < nk; i++)
            stack[na + i] = PyDict_GetItem(kwargs, PyList_GET_ITEM(names, i));
        PyObject *kwt = PyList_AsTuple(names);
        Py_DECREF(names);
        if (kwt == NULL)
            return NULL;
        PyObject *r = record_vectorcall((PyObject *)tp, stack, (size_t)na, kwt);
        Py_DECREF(kwt);
        return r;
    }
    return record_vectorcall((PyObject *)tp, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args), NULL);
}

static void record_dealloc(PyObject *self)
{
    for (const struct field *f = fields_of(Py_TYPE(self)); f->name; f++)
        if (f->kind == F_OBJ)
            Py_XDECREF(SLOT_OBJ(self, f));
    PyObject_Free(self);
}

/* field i as a new reference */
static PyObject *get_field(PyObject *self, const struct field *f)
{
    if (f->kind == F_I64)
        return PyLong_FromLongLong(SLOT_I64(self, f));
    PyObject *v = SLOT_OBJ(self, f);
    Py_INCREF(v);
    return v;
}

static PyObject *record_astuple(PyObject *self)
{
    const struct field *fs = fields_of(Py_TYPE(self));
    Py_ssize_t nf = nfields(fs);
    PyObject *t = PyTuple_New(nf);
    for (Py_ssize_t i = 0; t != NULL && i < nf; i++) {
        PyObject *v = get_field(self, &fs[i]);
        if (v == NULL)
            Py_CLEAR(t);
        else
            PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *record_repr(PyObject *self)
{
    const char *name = strrchr(Py_TYPE(self)->tp_name, '.') + 1;
    int rc = Py_ReprEnter(self);
    if (rc != 0)
        return rc > 0 ? PyUnicode_FromFormat("%s(...)", name) : NULL;
    PyObject *out = PyUnicode_FromFormat("%s(", name);
    for (const struct field *f = fields_of(Py_TYPE(self)); out != NULL && f->name; f++) {
        PyObject *v = get_field(self, f);
        PyObject *s = v ? PyUnicode_FromFormat("%s%s=%R", f == fields_of(Py_TYPE(self)) ? "" : ", ", f->name, v)
                        : NULL;
        Py_XDECREF(v);
        if (s == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyUnicode_AppendAndDel(&out, s);
    }
    if (out != NULL) {
        PyObject *close = PyUnicode_FromString(")");
        PyUnicode_AppendAndDel(&out, close);
    }
    Py_ReprLeave(self);
    return out;
}

static PyObject *record_richcompare(PyObject *a, PyObject *b, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(a) != Py_TYPE(b))
        Py_RETURN_NOTIMPLEMENTED;
    int same = 1;
    for (const struct field *f = fields_of(Py_TYPE(a)); same && f->name; f++) {
        if (f->kind == F_I64) {
            same = SLOT_I64(a, f) == SLOT_I64(b, f);
        } else {
            same = PyObject_RichCompareBool(SLOT_OBJ(a, f), SLOT_OBJ(b, f), Py_EQ);
            if (same < 0)
                return NULL;
        }
    }
    return PyBool_FromLong(op == Py_EQ ? same : !same);
}

static Py_hash_t record_hash(PyObject *self)
{
    PyObject *t = record_astuple(self);
    if (t == NULL)
        return -1;
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *record_reduce(PyObject *self, PyObject *unused)
{
    PyObject *t = record_astuple(self);
    return t ? Py_BuildValue("(ON)", (PyObject *)Py_TYPE(self), t) : NULL;
}

static PyMethodDef record_methods[] = {
    {"__reduce__", record_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef message_members[] = {
    {"topic", T_OBJECT, offsetof(MessageObject, topic), READONLY, "the record's topic"},
    {"partition", T_OBJECT, offsetof(MessageObject, partition), READONLY, "its partition"},
    {"offset", T_LONGLONG, offsetof(MessageObject, offset), READONLY, "its offset"},
    {"key", T_OBJECT, offsetof(MessageObject, key), READONLY, "its key (bytes, or None)"},
    {"value", T_OBJECT, offsetof(MessageObject, value), READONLY,
     "its value (bytes, a read-only memoryview with copy=False, or None)"},
    {"headers", T_OBJECT, offsetof(MessageObject, headers), READONLY, "a tuple of (str, bytes | None) pairs"},
    {"timestamp_ms", T_LONGLONG, offsetof(MessageObject, timestamp_ms), READONLY, "ms since the epoch"},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef metadata_members[] = {
    {"topic", T_OBJECT, offsetof(RecordMetadataObject, topic), READONLY, "the record's topic"},
    {"partition", T_OBJECT, offsetof(RecordMetadataObject, partition), READONLY, "its partition"},
    {"offset", T_LONGLONG, offsetof(RecordMetadataObject, offset), READONLY, "its offset"},
    {NULL, 0, 0, 0, NULL},
};

#define RECORD_TYPE(var, name, object, members, doc)                                                          \
    PyTypeObject var = {                                                                                        \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlog." name,                                                \
        .tp_basicsize = sizeof(object),                                                                         \
        .tp_flags = Py_TPFLAGS_DEFAULT,                                                                         \
        .tp_doc = doc,                                                                                          \
        .tp_new = record_new,                                                                                   \
        .tp_vectorcall = record_vectorcall,                                                                     \
        .tp_dealloc = record_dealloc,                                                                           \
        .tp_repr = record_repr,                                                                                 \
        .tp_richcompare = record_richcompare,                                                                   \
        .tp_hash = record_hash,                                                                                 \
        .tp_methods = record_methods,                                                                           \
        .tp_members = members,                                                                                  \
    }

RECORD_TYPE(MessageType, "Message", MessageObject, message_members,
            "Message(topic, partition, offset, key, value, headers, timestamp_ms)\n--\n\n"
            "One consumed record (frozen). headers is a tuple of (str, bytes | None) pairs.");
RECORD_TYPE(RecordMetadataType, "RecordMetadata", RecordMetadataObject, metadata_members,
            "RecordMetadata(topic, partition, offset)\n--\n\n"
            "Where a sent record landed (frozen); known when send() returns.");

PyObject *message_new(PyObject *topic, PyObject *partition, int64_t offset, PyObject *key, PyObject *value,
                      PyObject *headers, int64_t timestamp_ms)
{
    MessageObject *m = (MessageObject *)record_alloc(&MessageType);
    if (m == NULL)
        return NULL;
    Py_INCREF(topic);
    Py_INCREF(partition);
    Py_INCREF(headers);
    m->topic = topic;
    m->partition = partition;
    m->offset = offset;
    m->key = key;          /* stolen */
    m->value = value;      /* stolen */
    m->headers = headers;
    m->timestamp_ms = timestamp_ms;
    return (PyObject *)m;
}

PyObject *record_metadata_new(PyObject *topic, PyObject *partition, int64_t offset)
{
    RecordMetadataObject *r = (RecordMetadataObject *)record_alloc(&RecordMetadataType);
    if (r == NULL)
        return NULL;
    Py_INCREF(topic);
    Py_INCREF(partition);
    r->topic = topic;
    r->partition = partition;
    r->offset = offset;
    return (PyObject *)r;
}

/* the class attributes both types share with the structs they replace */
static int add_match_args(PyTypeObject *tp)
{
    const struct field *fs = fields_of(tp);
    Py_ssize_t nf = nfields(fs);
    PyObject *t = PyTuple_New(nf);
    if (t == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *s = PyUnicode_InternFromString(fs[i].name);
        if (s == NULL) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    int rc = PyDict_SetItemString(tp->tp_dict, "__match_args__", t);
    if (rc == 0)
        rc = PyDict_SetItemString(tp->tp_dict, "__struct_fields__", t);
    Py_DECREF(t);
    PyType_Modified(tp);
    return rc;
}

int records_ready(PyObject *module)
{
    PyTypeObject *types[] = {&MessageType, &RecordMetadataType};
    for (int i = 0; i < 2; i++) {
        if (PyType_Ready(types[i]) < 0 || add_match_args(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(module, strrchr(types[i]->tp_name, '.') + 1, (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}
