/*
 * The record walk of a v2 record batch, in C because it runs on every produce.
 *
 * check_records(buf, count) walks the records section of a batch (after the
 * 61-byte header, decompressed if the batch is compressed) and checks every
 * record as Kafka's broker reads it: varint lengths in range, each record's
 * fields consuming exactly its declared length, offset deltas 0..count-1 in
 * order, header keys not null, and no bytes left over. It reads the buffer in
 * place (no copy) and returns the index of the first record with a null key,
 * or -1, so that compacted topics can refuse keyless records.
 *
 * On a violation it raises ValueError(reason, record_index). The pure-Python
 * reference in shoal/protocol/recordcheck.py implements the same rules with
 * the same messages; the tests cross-check the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>

/* The smallest record: length, attributes, timestamp delta, offset delta,
 * key length, value length, header count: one byte each. */
#define MIN_RECORD_BYTES 7

typedef struct {
    const uint8_t *p;
    Py_ssize_t pos;
    Py_ssize_t end;
} cursor;

/* Kafka's ByteUtils.readVarint: at most 5 bytes, bits past 32 dropped. */
static inline int read_varint(cursor *c, int32_t *out) {
    if (c->pos < c->end && !(c->p[c->pos] & 0x80)) { /* one byte: nearly always */
        uint32_t v = c->p[c->pos++];
        *out = (int32_t)((v >> 1) ^ (~(v & 1) + 1));
        return 0;
    }
    uint32_t value = 0;
    int shift = 0;
    for (;;) {
        if (c->pos >= c->end)
            return -1;
        uint8_t b = c->p[c->pos++];
        if (!(b & 0x80)) {
            value |= (uint32_t)b << shift;
            break;
        }
        value |= (uint32_t)(b & 0x7f) << shift;
        shift += 7;
        if (shift > 28)
            return -2;
    }
    *out = (int32_t)((value >> 1) ^ (~(value & 1) + 1));
    return 0;
}

/* Kafka's ByteUtils.readVarlong: at most 10 bytes, bits past 64 dropped. */
static inline int skip_varlong(cursor *c) {
    int shift = 0;
    for (;;) {
        if (c->pos >= c->end)
            return -1;
        uint8_t b = c->p[c->pos++];
        if (!(b & 0x80))
            return 0;
        shift += 7;
        if (shift > 63)
            return -2;
    }
}

static PyObject *fail(Py_ssize_t index, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg == NULL)
        return NULL;
    PyObject *args = Py_BuildValue("(Nn)", msg, index);
    if (args != NULL) {
        PyErr_SetObject(PyExc_ValueError, args);
        Py_DECREF(args);
    }
    return NULL;
}

/* A varint field of record i; on failure sets the error and returns -1. */
#define VARINT(c, out, i, what)                                                        \
    do {                                                                               \
        int rc_ = read_varint((c), (out));                                             \
        if (rc_ == -1) {                                                               \
            fail((i), "record %zd: %s runs past the end of the record", (i), (what));  \
            goto error;                                                                \
        }                                                                              \
        if (rc_ == -2) {                                                               \
            fail((i), "record %zd: %s is a varint longer than 5 bytes", (i), (what));  \
            goto error;                                                                \
        }                                                                              \
    } while (0)

static PyObject *check_records(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t count;
    Py_ssize_t first_null_key = -1;
    Py_ssize_t i = 0;
    if (!PyArg_ParseTuple(args, "y*n:check_records", &view, &count))
        return NULL;
    const uint8_t *p = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len;
    cursor c = {p, 0, n};

    if (count <= 0) {
        fail(0, "the batch declares %zd records", count);
        goto error;
    }
    if (count > n / MIN_RECORD_BYTES) {
        fail(n / MIN_RECORD_BYTES, "the batch declares %zd records but its %zd bytes hold at most %zd",
             count, n, n / MIN_RECORD_BYTES);
        goto error;
    }
    for (i = 0; i < count; i++) {
        int32_t length, offset_delta, klen, vlen, nheaders;
        cursor r;
        c.end = n;
        if (c.pos >= n) {
            fail(i, "record %zd is missing: the batch declares %zd records", i, count);
            goto error;
        }
        VARINT(&c, &length, i, "the record length");
        if (length < 0) {
            fail(i, "record %zd: negative record length %d", i, (int)length);
            goto error;
        }
        if (length > n - c.pos) {
            fail(i, "record %zd: length %d runs past the end of the batch (%zd bytes left)", i,
                 (int)length, n - c.pos);
            goto error;
        }
        r.p = p;
        r.pos = c.pos;
        r.end = c.pos + length;
        if (r.pos >= r.end) {
            fail(i, "record %zd: attributes run past the end of the record", i);
            goto error;
        }
        r.pos++; /* attributes */
        {
            int rc = skip_varlong(&r);
            if (rc == -1) {
                fail(i, "record %zd: %s runs past the end of the record", i, "the timestamp delta");
                goto error;
            }
            if (rc == -2) {
                fail(i, "record %zd: the timestamp delta is a varlong longer than 10 bytes", i);
                goto error;
            }
        }
        VARINT(&r, &offset_delta, i, "the offset delta");
        if ((Py_ssize_t)offset_delta != i) {
            fail(i, "record %zd: offset delta %d, expected %zd", i, (int)offset_delta, i);
            goto error;
        }
        VARINT(&r, &klen, i, "the key length");
        if (klen < -1) {
            fail(i, "record %zd: invalid key length %d", i, (int)klen);
            goto error;
        }
        if (klen == -1) {
            if (first_null_key < 0)
                first_null_key = i;
        } else {
            if (klen > r.end - r.pos) {
                fail(i, "record %zd: key of %d bytes runs past the end of the record", i, (int)klen);
                goto error;
            }
            r.pos += klen;
        }
        VARINT(&r, &vlen, i, "the value length");
        if (vlen < -1) {
            fail(i, "record %zd: invalid value length %d", i, (int)vlen);
            goto error;
        }
        if (vlen > 0) {
            if (vlen > r.end - r.pos) {
                fail(i, "record %zd: value of %d bytes runs past the end of the record", i,
                     (int)vlen);
                goto error;
            }
            r.pos += vlen;
        }
        VARINT(&r, &nheaders, i, "the header count");
        if (nheaders < 0) {
            fail(i, "record %zd: negative header count %d", i, (int)nheaders);
            goto error;
        }
        /* a header takes at least two bytes: key length and value length */
        if (nheaders > (r.end - r.pos) / 2) {
            fail(i, "record %zd: %d headers cannot fit in the %zd bytes left", i, (int)nheaders,
                 r.end - r.pos);
            goto error;
        }
        for (int32_t h = 0; h < nheaders; h++) {
            int32_t hklen, hvlen;
            VARINT(&r, &hklen, i, "a header key length");
            if (hklen < 0) {
                fail(i, "record %zd: header %d has a null or negative key length %d", i, (int)h,
                     (int)hklen);
                goto error;
            }
            if (hklen > r.end - r.pos) {
                fail(i, "record %zd: header %d key runs past the end of the record", i, (int)h);
                goto error;
            }
            r.pos += hklen;
            VARINT(&r, &hvlen, i, "a header value length");
            if (hvlen < -1) {
                fail(i, "record %zd: header %d has an invalid value length %d", i, (int)h,
                     (int)hvlen);
                goto error;
            }
            if (hvlen > 0) {
                if (hvlen > r.end - r.pos) {
                    fail(i, "record %zd: header %d value runs past the end of the record", i,
                         (int)h);
                    goto error;
                }
                r.pos += hvlen;
            }
        }
        if (r.pos != r.end) {
            fail(i, "record %zd: its fields take %zd bytes but its length says %d", i,
                 r.pos - c.pos, (int)length);
            goto error;
        }
        c.pos = r.end;
    }
    if (c.pos != n) {
        fail(count - 1, "%zd bytes left over after the last of %zd records", n - c.pos, count);
        goto error;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(first_null_key);

error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"check_records", check_records, METH_VARARGS,
     "check_records(buf, count) -> index of the first null key or -1; "
     "raises ValueError(reason, record_index) on a malformed record."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_recordcheck", "Record walk of Kafka v2 record batches.", -1, methods,
};

PyMODINIT_FUNC PyInit__recordcheck(void) { return PyModule_Create(&module); }
