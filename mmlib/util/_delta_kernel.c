/* One-pass kernels for mmlib.util.delta's shuffled and plane codecs.
 *
 * encode_planes: difference (xor or sub) of new and base bit patterns, zig-zag, and byte shuffle into planes,
 *                in one pass over the elements.
 * decode_planes: the inverse, gathering each element's bytes from its planes, undoing the zig-zag and applying
 *                the delta to the base, writing straight into the destination.
 *
 * numpy needs four to eight passes (and as many full-size temporaries) for either; here every element is read
 * and written once. Elements are little-endian unsigned integers of 1, 2, 4 or 8 bytes: the bit patterns of
 * the tensor, never its float values, so NaNs, signed zeros and denormals survive. The GIL is released while a
 * kernel runs, so tensors are encoded and decoded on all cores by the caller's threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OP_PLAIN = 0, OP_XOR = 1, OP_SUB = 2 };

#define DEFINE_KERNELS(BITS)                                                                                    \
    static void encode_##BITS(const uint8_t *restrict new_bytes, const uint8_t *restrict base_bytes,            \
                              uint8_t *restrict planes,                                                         \
                              Py_ssize_t count, int op, int zigzag)                                             \
    {                                                                                                           \
        for (Py_ssize_t i = 0; i < count; i++) {                                                                \
            uint##BITS##_t value, base;                                                                         \
            memcpy(&value, new_bytes + i * (BITS / 8), BITS / 8);                                               \
            if (op != OP_PLAIN) {                                                                               \
                memcpy(&base, base_bytes + i * (BITS / 8), BITS / 8);                                           \
                if (op == OP_XOR) {                                                                             \
                    value ^= base;                                                                              \
                } else {                                                                                        \
                    value -= base;                                                                              \
                    if (zigzag) {                                                                               \
                        uint##BITS##_t sign = (uint##BITS##_t)0 - (uint##BITS##_t)(value >> (BITS - 1));        \
                        value = (uint##BITS##_t)(value << 1) ^ sign;                                            \
                    }                                                                                           \
                }                                                                                               \
            }                                                                                                   \
            for (int plane = 0; plane < BITS / 8; plane++) {                                                    \
                planes[plane * count + i] = (uint8_t)(value >> (8 * plane));                                    \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                \
    /* base_bytes and out_bytes may be one buffer (a delta applied in place): element i is read before written */ \
    static void decode_##BITS(const uint8_t *const *planes, const uint8_t *base_bytes,                          \
                              uint8_t *out_bytes,                                                               \
                              Py_ssize_t count, int op, int zigzag)                                             \
    {                                                                                                           \
        for (Py_ssize_t i = 0; i < count; i++) {                                                                \
            uint##BITS##_t value = 0, base;                                                                     \
            for (int plane = 0; plane < BITS / 8; plane++) {                                                    \
                value |= (uint##BITS##_t)planes[plane][i] << (8 * plane);                                       \
            }                                                                                                   \
            if (op != OP_PLAIN) {                                                                               \
                memcpy(&base, base_bytes + i * (BITS / 8), BITS / 8);                                           \
                if (op == OP_XOR) {                                                                             \
                    value ^= base;                                                                              \
                } else {                                                                                        \
                    if (zigzag) {                                                                               \
                        value = (value >> 1) ^ ((uint##BITS##_t)0 - (value & 1));                               \
                    }                                                                                           \
                    value += base;                                                                              \
                }                                                                                               \
            }                                                                                                   \
            memcpy(out_bytes + i * (BITS / 8), &value, BITS / 8);                                               \
        }                                                                                                       \
    }

DEFINE_KERNELS(8)
DEFINE_KERNELS(16)
DEFINE_KERNELS(32)
DEFINE_KERNELS(64)

/* Checks shared by both kernels: a supported element size and operation, and a base exactly when one is needed. */
static int check_arguments(Py_ssize_t itemsize, int op, int zigzag, const Py_buffer *base, Py_ssize_t nbytes)
{
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "element size %zd is not 1, 2, 4 or 8 bytes", itemsize);
        return -1;
    }
    if (op != OP_PLAIN && op != OP_XOR && op != OP_SUB) {
        PyErr_Format(PyExc_ValueError, "operation %d is not plain (0), xor (1) or sub (2)", op);
        return -1;
    }
    if (zigzag && op != OP_SUB) {
        PyErr_SetString(PyExc_ValueError, "zig-zag goes only with sub");
        return -1;
    }
    if ((op == OP_PLAIN) != (base->buf == NULL)) {
        PyErr_SetString(PyExc_ValueError, "plain takes no base; xor and sub need one");
        return -1;
    }
    if (base->buf != NULL && base->len != nbytes) {
        PyErr_Format(PyExc_ValueError, "the base holds %zd bytes where %zd are needed", base->len, nbytes);
        return -1;
    }
    if (nbytes % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole elements of %zd bytes", nbytes, itemsize);
        return -1;
    }
    return 0;
}

static PyObject *encode_planes(PyObject *module, PyObject *args)
{
    Py_buffer new_buffer = {0}, base = {0}, out = {0};
    Py_ssize_t itemsize;
    int op, zigzag;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*z*w*nip", &new_buffer, &base, &out, &itemsize, &op, &zigzag)) {
        return NULL;
    }
    if (check_arguments(itemsize, op, zigzag, &base, new_buffer.len) == 0) {
        if (out.len != new_buffer.len) {
            PyErr_Format(PyExc_ValueError, "the output holds %zd bytes where %zd are needed", out.len, new_buffer.len);
        } else {
            Py_ssize_t count = new_buffer.len / itemsize;
            const uint8_t *source = new_buffer.buf, *base_bytes = base.buf;
            uint8_t *planes = out.buf;
            Py_BEGIN_ALLOW_THREADS
            switch (itemsize) {
            case 1: encode_8(source, base_bytes, planes, count, op, zigzag); break;
            case 2: encode_16(source, base_bytes, planes, count, op, zigzag); break;
            case 4: encode_32(source, base_bytes, planes, count, op, zigzag); break;
            default: encode_64(source, base_bytes, planes, count, op, zigzag); break;
            }
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&new_buffer);
    if (base.buf != NULL) {
        PyBuffer_Release(&base);
    }
    PyBuffer_Release(&out);
    return result;
}

static PyObject *decode_planes(PyObject *module, PyObject *args)
{
    PyObject *plane_objects;
    Py_buffer base = {0}, out = {0}, planes[8];
    const uint8_t *plane_bytes[8];
    Py_ssize_t itemsize, held = 0;
    int op, zigzag;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "Oz*w*nip", &plane_objects, &base, &out, &itemsize, &op, &zigzag)) {
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(plane_objects, "the planes must be a sequence of buffers");
    if (sequence == NULL || check_arguments(itemsize, op, zigzag, &base, out.len) < 0) {
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(sequence) != itemsize) {
        PyErr_Format(PyExc_ValueError, "%zd planes given for elements of %zd bytes",
                     PySequence_Fast_GET_SIZE(sequence), itemsize);
        goto done;
    }
    Py_ssize_t count = out.len / itemsize;
    for (; held < itemsize; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(sequence, held), &planes[held], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        plane_bytes[held] = planes[held].buf;
        if (planes[held].len != count) {
            PyErr_Format(PyExc_ValueError, "plane %zd holds %zd bytes where %zd are needed", held,
                         planes[held].len, count);
            held++;
            goto done;
        }
    }
    const uint8_t *base_bytes = base.buf;
    uint8_t *out_bytes = out.buf;
    Py_BEGIN_ALLOW_THREADS
    switch (itemsize) {
    case 1: decode_8(plane_bytes, base_bytes, out_bytes, count, op, zigzag); break;
    case 2: decode_16(plane_bytes, base_bytes, out_bytes, count, op, zigzag); break;
    case 4: decode_32(plane_bytes, base_bytes, out_bytes, count, op, zigzag); break;
    default: decode_64(plane_bytes, base_bytes, out_bytes, count, op, zigzag); break;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t index = 0; index < held; index++) {
        PyBuffer_Release(&planes[index]);
    }
    Py_XDECREF(sequence);
    if (base.buf != NULL) {
        PyBuffer_Release(&base);
    }
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_planes", encode_planes, METH_VARARGS,
     "encode_planes(new, base, out, itemsize, op, zigzag): the byte planes of new's delta against base, into out."},
    {"decode_planes", decode_planes, METH_VARARGS,
     "decode_planes(planes, base, out, itemsize, op, zigzag): apply the delta held in byte planes to base, into "
     "out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "mmlib.util._delta_kernel",
    "One-pass delta + zig-zag + byte-shuffle kernels for mmlib.util.delta (GIL released).", -1, methods,
};

PyMODINIT_FUNC PyInit__delta_kernel(void)
{
    return PyModule_Create(&module_definition);
}
