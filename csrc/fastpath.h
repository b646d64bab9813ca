/* fastpath.h — what the sources of shmlog._fastpath (fastpath.c, pyrecords.c)
 * share: the record types' layouts and their fast constructors. Must never:
 * be included by the core (csrc/shmlog.h is the core's one header). */
#ifndef SHMLOG_FASTPATH_H
#define SHMLOG_FASTPATH_H

#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    PyObject *topic, *partition, *key, *value, *headers;
    int64_t offset, timestamp_ms;
} MessageObject;

typedef struct {
    PyObject_HEAD
    PyObject *topic, *partition;
    int64_t offset;
} RecordMetadataObject;

extern PyTypeObject MessageType, RecordMetadataType;

/* a Message; key and value are stolen, the rest borrowed */
PyObject *message_new(PyObject *topic, PyObject *partition, int64_t offset, PyObject *key, PyObject *value,
                      PyObject *headers, int64_t timestamp_ms);
PyObject *record_metadata_new(PyObject *topic, PyObject *partition, int64_t offset);
/* readies both types and adds them to the module; -1 with an exception set */
int records_ready(PyObject *module);

#endif
