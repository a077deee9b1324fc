/* FastCGI request parsing in C, for django_runfcgi.protocols.fastcgi.

   Optional: without it (no compiler at install, or RUNFCGI_PURE_PYTHON=1) the same
   work is done in Python, record by record. read_request() only takes the common,
   well-formed case within the bounds it is given (maxheadsize, maxheaders); for
   anything else it returns None and the Python code reads the input and reports what
   is wrong with it.

   Built against the stable ABI of Python 3.10, so one binary serves 3.10 and later.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define HEADER_LEN 8
#define VERSION_1 1
#define BEGIN_REQUEST 1
#define PARAMS 4
#define STDIN 5

/* One length of a name-value pair: one byte below 128, else four with the top bit
   set. -1 if the data ends inside it. */
static Py_ssize_t
pair_length(const unsigned char *data, Py_ssize_t end, Py_ssize_t *pos)
{
    Py_ssize_t at = *pos;
    if (at >= end) {
        return -1;
    }
    if (data[at] < 128) {
        *pos = at + 1;
        return data[at];
    }
    if (end - at < 4) {
        return -1;
    }
    *pos = at + 4;
    return ((Py_ssize_t)(data[at] & 0x7F) << 24) | ((Py_ssize_t)data[at + 1] << 16)
           | ((Py_ssize_t)data[at + 2] << 8) | (Py_ssize_t)data[at + 3];
}

#define KEPT_PAIRS 64
#define KEPT_LENGTH 1024

/* The names and values of the last request's pairs, by position. A front end sends the
   same names in the same order every time, and many of the same values (its software,
   the server's name and port, the document root), so most strings are taken from here,
   hashes already computed, instead of being made anew. Only ASCII text is kept, whose
   UTF-8 form is its bytes. Not interned: names come from clients (HTTP_*), and interned
   strings are never freed. Only called with the GIL held. */
static PyObject *kept[2 * KEPT_PAIRS];

static int
is_ascii(const unsigned char *data, Py_ssize_t length)
{
    unsigned char any = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        any |= data[i];
    }
    return any < 128;
}

/* data[0:length] decoded as latin-1, the one kept at `slot` if it is the same text. */
static PyObject *
latin1_text(Py_ssize_t slot, const unsigned char *data, Py_ssize_t length)
{
    if (slot >= 2 * KEPT_PAIRS || length > KEPT_LENGTH) {
        return PyUnicode_DecodeLatin1((const char *)data, length, NULL);
    }
    PyObject *known = kept[slot];
    if (known != NULL) {
        Py_ssize_t known_length;
        const char *text = PyUnicode_AsUTF8AndSize(known, &known_length);
        if (text == NULL) {
            return NULL;
        }
        if (known_length == length && memcmp(text, data, (size_t)length) == 0) {
            Py_INCREF(known);
            return known;
        }
    }
    PyObject *text = PyUnicode_DecodeLatin1((const char *)data, length, NULL);
    if (text != NULL && is_ascii(data, length)) {
        Py_INCREF(text);
        kept[slot] = text;
        Py_XDECREF(known);
    }
    return text;
}

/* Add the pairs of data[0:end] to dict, names and values decoded as latin-1; `index`
   counts the request's pairs across its records, at most `max_pairs`. 0 on success, 1
   if a pair is cut short or overruns, or there are too many, -1 with an exception set. */
static int
add_pairs(PyObject *dict, const unsigned char *data, Py_ssize_t end, Py_ssize_t *index,
          Py_ssize_t max_pairs)
{
    Py_ssize_t pos = 0;
    while (pos < end) {
        if (*index >= max_pairs) {
            return 1;
        }
        Py_ssize_t name_length = pair_length(data, end, &pos);
        if (name_length < 0) {
            return 1;
        }
        Py_ssize_t value_length = pair_length(data, end, &pos);
        if (value_length < 0 || end - pos < name_length
            || end - pos - name_length < value_length) {
            return 1;
        }
        PyObject *name = latin1_text(2 * *index, data + pos, name_length);
        if (name == NULL) {
            return -1;
        }
        pos += name_length;
        PyObject *value = latin1_text(2 * *index + 1, data + pos, value_length);
        if (value == NULL) {
            Py_DECREF(name);
            return -1;
        }
        pos += value_length;
        *index += 1;
        int failed = PyDict_SetItem(dict, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (failed) {
            return -1;
        }
    }
    return 0;
}

/* The header of the record at data[pos:end]: 0 if the whole record is there. */
static int
record_at(const unsigned char *data, Py_ssize_t end, Py_ssize_t pos, int *kind,
          int *request_id, Py_ssize_t *length, Py_ssize_t *total)
{
    if (end - pos < HEADER_LEN || data[pos] != VERSION_1) {
        return -1;
    }
    *kind = data[pos + 1];
    *request_id = (data[pos + 2] << 8) | data[pos + 3];
    *length = (data[pos + 4] << 8) | data[pos + 5];
    *total = HEADER_LEN + *length + data[pos + 6];
    return end - pos < *total ? -1 : 0;
}

PyDoc_STRVAR(read_request_doc,
"read_request(buffer: bytes, pos: int, max_head_size: int, max_pairs: int)\n"
"    -> tuple[int, int, int, int, dict[str, str], bool] | None\n\n"
"A request that starts at buffer[pos:] and has fully arrived: its FCGI_BEGIN_REQUEST\n"
"and its FCGI_PARAMS records up to the empty one, and an empty FCGI_STDIN record if\n"
"one follows at once. Returns (end, request_id, role, flags, params, body_ended),\n"
"end being where the next record starts; None if the records are anything else, or\n"
"the parameters are more than max_head_size bytes or max_pairs pairs.");

static PyObject *
read_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "read_request() takes a buffer, a position and two bounds");
        return NULL;
    }
    char *buffer;
    Py_ssize_t end;
    if (PyBytes_AsStringAndSize(args[0], &buffer, &end) < 0) {
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pos < 0 || pos > end) {
        PyErr_SetString(PyExc_ValueError, "position outside the buffer");
        return NULL;
    }
    Py_ssize_t max_head_size = PyLong_AsSsize_t(args[2]);
    if (max_head_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t max_pairs = PyLong_AsSsize_t(args[3]);
    if (max_pairs == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)buffer;
    int kind, request_id, other_id;
    Py_ssize_t length, total;
    /* Request id 0 is the null id of management records, never a request's. */
    if (record_at(data, end, pos, &kind, &request_id, &length, &total) < 0
        || kind != BEGIN_REQUEST || length != 8 || request_id == 0) {
        Py_RETURN_NONE;
    }
    int role = (data[pos + HEADER_LEN] << 8) | data[pos + HEADER_LEN + 1];
    int flags = data[pos + HEADER_LEN + 2];
    pos += total;

    PyObject *params = PyDict_New();
    if (params == NULL) {
        return NULL;
    }
    Py_ssize_t index = 0;
    Py_ssize_t head_size = 0;
    for (;;) {
        if (record_at(data, end, pos, &kind, &other_id, &length, &total) < 0
            || kind != PARAMS || other_id != request_id) {
            Py_DECREF(params);
            Py_RETURN_NONE;
        }
        if (length == 0) {
            pos += total;
            break;
        }
        head_size += length;
        if (head_size > max_head_size) {
            Py_DECREF(params);
            Py_RETURN_NONE;
        }
        int result = add_pairs(params, data + pos + HEADER_LEN, length, &index, max_pairs);
        if (result != 0) {
            Py_DECREF(params);
            if (result < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        pos += total;
    }
    int body_ended = 0;
    if (record_at(data, end, pos, &kind, &other_id, &length, &total) == 0 && kind == STDIN
        && other_id == request_id && length == 0) {
        body_ended = 1;
        pos += total;
    }
    PyObject *ended = PyBool_FromLong(body_ended);
    return Py_BuildValue("(niiiNN)", pos, request_id, role, flags, params, ended);
}

static PyMethodDef methods[] = {
    {"read_request", (PyCFunction)(void (*)(void))read_request, METH_FASTCALL, read_request_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "django_runfcgi.protocols.fastcgi._speedups",
    .m_doc = "FastCGI request parsing in C; see django_runfcgi.protocols.fastcgi.connection.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}
