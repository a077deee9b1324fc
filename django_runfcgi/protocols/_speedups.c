/* Request parsing and response encoding in C, for django_runfcgi.protocols (FastCGI
   and SCGI; see accelerator.py for which function serves which).

   Optional: without it (no compiler at install, or RUNFCGI_PURE_PYTHON=1) the same
   work is done in Python. read_request() (a FastCGI request's records) and
   scgi_request() (an SCGI request's netstring) only take the common, well-formed case
   within the bounds they are given (maxheadsize, maxheaders); for anything else they
   return None and the Python code reads the input and reports what is wrong with it.
   response_head() likewise encodes only ASCII status and headers; head_records()
   frames a FastCGI response's header block and first piece of body, cgi_response()
   joins an SCGI response's.

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


/* The digits of `limit`: how long a netstring's length may be. */
static Py_ssize_t
digits_of(Py_ssize_t limit)
{
    Py_ssize_t width = 1;
    while (limit >= 10) {
        limit /= 10;
        width++;
    }
    return width;
}

PyDoc_STRVAR(scgi_request_doc,
"scgi_request(buffer: bytes, max_head_size: int, max_pairs: int)\n"
"    -> tuple[dict[str, str], int, int] | None\n\n"
"An SCGI request head that has fully arrived at the start of buffer: the netstring of\n"
"NUL-terminated names and values, at most max_head_size bytes and max_pairs pairs,\n"
"with REQUEST_METHOD and a CONTENT_LENGTH of ASCII digits. Returns (environ, body_at,\n"
"content_length), body_at being where the body starts; None for anything else (more\n"
"to come, or input the Python code reports as wrong).");

static PyObject *
scgi_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scgi_request() takes a buffer and two bounds");
        return NULL;
    }
    char *buffer;
    Py_ssize_t end;
    if (PyBytes_AsStringAndSize(args[0], &buffer, &end) < 0) {
        return NULL;
    }
    Py_ssize_t max_head_size = PyLong_AsSsize_t(args[1]);
    if (max_head_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t max_pairs = PyLong_AsSsize_t(args[2]);
    if (max_pairs == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_head_size < 0) {
        Py_RETURN_NONE;
    }
    const unsigned char *data = (const unsigned char *)buffer;
    Py_ssize_t width = digits_of(max_head_size);
    Py_ssize_t at = 0, size = 0;
    while (at < end && at < width && data[at] >= '0' && data[at] <= '9') {
        size = size * 10 + (data[at] - '0');
        at++;
    }
    if (at == 0 || at >= end || data[at] != ':' || size > max_head_size || size == 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = at + 1;
    Py_ssize_t head_end = pos + size;
    if (end <= head_end || data[head_end] != ',' || data[head_end - 1] != 0) {
        Py_RETURN_NONE;
    }
    PyObject *environ = PyDict_New();
    if (environ == NULL) {
        return NULL;
    }
    const unsigned char *length_text = NULL;
    Py_ssize_t length_size = 0;
    int has_method = 0;
    Py_ssize_t index = 0;
    while (pos < head_end) {
        const unsigned char *name_at = data + pos;
        const unsigned char *name_nul = memchr(name_at, 0, (size_t)(head_end - pos));
        Py_ssize_t name_length = name_nul - name_at;
        Py_ssize_t value_pos = pos + name_length + 1;
        if (index >= max_pairs || value_pos >= head_end) {
            goto not_taken;
        }
        const unsigned char *value_at = data + value_pos;
        const unsigned char *value_nul = memchr(value_at, 0, (size_t)(head_end - value_pos));
        Py_ssize_t value_length = value_nul - value_at;
        if (name_length == 14 && memcmp(name_at, "CONTENT_LENGTH", 14) == 0) {
            length_text = value_at;
            length_size = value_length;
        }
        else if (name_length == 14 && memcmp(name_at, "REQUEST_METHOD", 14) == 0) {
            has_method = 1;
        }
        PyObject *name = latin1_text(2 * index, name_at, name_length);
        if (name == NULL) {
            goto failed;
        }
        PyObject *value = latin1_text(2 * index + 1, value_at, value_length);
        if (value == NULL) {
            Py_DECREF(name);
            goto failed;
        }
        int set_failed = PyDict_SetItem(environ, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (set_failed) {
            goto failed;
        }
        index++;
        pos = value_pos + value_length + 1;
    }
    /* At most 18 digits, so the length fits; a longer one goes to the Python code. */
    if (!has_method || length_text == NULL || length_size == 0 || length_size > 18) {
        goto not_taken;
    }
    Py_ssize_t content_length = 0;
    for (Py_ssize_t i = 0; i < length_size; i++) {
        if (length_text[i] < '0' || length_text[i] > '9') {
            goto not_taken;
        }
        content_length = content_length * 10 + (length_text[i] - '0');
    }
    return Py_BuildValue("(Nnn)", environ, head_end + 1, content_length);

not_taken:
    Py_DECREF(environ);
    Py_RETURN_NONE;
failed:
    Py_DECREF(environ);
    return NULL;
}


/* An ASCII str's bytes (its UTF-8 form, which the str caches), or NULL without an
   exception if `text` is not an exact str or holds anything but ASCII. */
static const char *
ascii_of(PyObject *text, Py_ssize_t *length)
{
    if (!PyUnicode_CheckExact(text)) {
        return NULL;
    }
    const char *data = PyUnicode_AsUTF8AndSize(text, length);
    if (data == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!is_ascii((const unsigned char *)data, *length)) {
        return NULL;
    }
    return data;
}

PyDoc_STRVAR(response_head_doc,
"response_head(status: str, headers: list[tuple[str, str]]) -> tuple[bytes, bytes] | None\n\n"
"The status and the header lines of a WSGI start_response() call as bytes: the status\n"
"as given, the block 'Name: value\\r\\n' per header. None unless the status is ASCII\n"
"text of three digits, a space and a reason, and the headers a list of pairs of ASCII\n"
"text: the Python code then encodes them, or says what is wrong.");

static PyObject *
response_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "response_head() takes a status and headers");
        return NULL;
    }
    Py_ssize_t status_length;
    const char *status = ascii_of(args[0], &status_length);
    if (status == NULL || status_length < 4 || status[3] != ' ') {
        Py_RETURN_NONE;
    }
    for (int i = 0; i < 3; i++) {
        if (status[i] < '0' || status[i] > '9') {
            Py_RETURN_NONE;
        }
    }
    PyObject *headers = args[1];
    if (!PyList_CheckExact(headers)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_Size(headers);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GetItem(headers, i);
        if (item == NULL || !PyTuple_CheckExact(item) || PyTuple_Size(item) != 2) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        Py_ssize_t name_length, value_length;
        if (ascii_of(PyTuple_GetItem(item, 0), &name_length) == NULL
            || ascii_of(PyTuple_GetItem(item, 1), &value_length) == NULL) {
            Py_RETURN_NONE;
        }
        total += name_length + value_length + 4;
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, total);
    if (block == NULL) {
        return NULL;
    }
    char *out = PyBytes_AsString(block);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GetItem(headers, i);
        Py_ssize_t name_length, value_length;
        const char *name = ascii_of(PyTuple_GetItem(item, 0), &name_length);
        const char *value = ascii_of(PyTuple_GetItem(item, 1), &value_length);
        memcpy(out, name, (size_t)name_length);
        out += name_length;
        memcpy(out, ": ", 2);
        out += 2;
        memcpy(out, value, (size_t)value_length);
        out += value_length;
        memcpy(out, "\r\n", 2);
        out += 2;
    }
    PyObject *status_bytes = PyBytes_FromStringAndSize(status, status_length);
    if (status_bytes == NULL) {
        Py_DECREF(block);
        return NULL;
    }
    return Py_BuildValue("(NN)", status_bytes, block);
}

/* Whether the header block has a Content-Length line, its name in any case. */
static int
has_content_length(const char *block, Py_ssize_t length)
{
    static const char name[] = "content-length:";
    const Py_ssize_t name_length = (Py_ssize_t)sizeof(name) - 1;
    for (Py_ssize_t at = 0; at + name_length <= length; at++) {
        if (at > 0 && block[at - 1] != '\n') {
            continue;
        }
        Py_ssize_t i = 0;
        while (i < name_length) {
            char c = block[at + i];
            if (c >= 'A' && c <= 'Z') {
                c = (char)(c - 'A' + 'a');
            }
            if (c != name[i]) {
                break;
            }
            i++;
        }
        if (i == name_length) {
            return 1;
        }
    }
    return 0;
}

/* The record headers and padding around `length` bytes of content cut in records of
   `step` bytes: how many bytes they all take. */
static Py_ssize_t
framed_size(Py_ssize_t length, Py_ssize_t step)
{
    Py_ssize_t records = length == 0 ? 1 : (length + step - 1) / step;
    Py_ssize_t size = 0;
    for (Py_ssize_t r = 0; r < records; r++) {
        Py_ssize_t piece = r == records - 1 ? length - r * step : step;
        size += HEADER_LEN + piece + (-piece & 7);
    }
    return size;
}

#define HEAD_PARTS 7

/* A response as CGI puts it, in the order it goes out: 'Status: ', the status, CRLF,
   the header lines, a Content-Length line (or nothing), CRLF, then the body's first
   piece. Both head_records() and cgi_response() write these parts. */
struct cgi_parts {
    const char *data[HEAD_PARTS];
    Py_ssize_t size[HEAD_PARTS];
    Py_ssize_t total;
    char length_line[48];
};

/* The parts from (status: bytes, block: bytes, body_length: int, data: bytes): a
   Content-Length of body_length unless it is negative or the block has one. 0, or -1
   with an exception set. */
static int
cgi_parts_of(PyObject *const *args, struct cgi_parts *parts)
{
    char *status, *block, *data;
    Py_ssize_t status_length, block_length, data_length;
    if (PyBytes_AsStringAndSize(args[0], &status, &status_length) < 0
        || PyBytes_AsStringAndSize(args[1], &block, &block_length) < 0
        || PyBytes_AsStringAndSize(args[3], &data, &data_length) < 0) {
        return -1;
    }
    Py_ssize_t body_length = PyLong_AsSsize_t(args[2]);
    if (body_length == -1 && PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t length_line_size = 0;
    parts->length_line[0] = '\0';
    if (body_length >= 0 && !has_content_length(block, block_length)) {
        length_line_size = snprintf(parts->length_line, sizeof(parts->length_line),
                                    "Content-Length: %zd\r\n", body_length);
    }
    const char *pieces[HEAD_PARTS] = {"Status: ", status, "\r\n", block,
                                      parts->length_line, "\r\n", data};
    Py_ssize_t sizes[HEAD_PARTS] = {8, status_length, 2, block_length, length_line_size, 2,
                                    data_length};
    parts->total = 0;
    for (int i = 0; i < HEAD_PARTS; i++) {
        parts->data[i] = pieces[i];
        parts->size[i] = sizes[i];
        parts->total += sizes[i];
    }
    return 0;
}

PyDoc_STRVAR(head_records_doc,
"head_records(request_id: int, status: bytes, block: bytes, body_length: int,\n"
"             data: bytes, step: int) -> bytes\n\n"
"FCGI_STDOUT records holding the CGI header block of a response ('Status: ' status,\n"
"the header lines of `block`, a Content-Length of `body_length` unless it is negative\n"
"or the block has one, the empty line) followed by `data`, cut in records of at most\n"
"`step` bytes, each padded to a multiple of eight: what the Python code frames.");

static PyObject *
head_records(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "head_records() takes six arguments");
        return NULL;
    }
    long request_id = PyLong_AsLong(args[0]);
    if (request_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    struct cgi_parts parts;
    if (cgi_parts_of(args + 1, &parts) < 0) {
        return NULL;
    }
    Py_ssize_t step = PyLong_AsSsize_t(args[5]);
    if (step == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (request_id < 0 || request_id > 0xFFFF || step < 8 || step > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "request id or record size out of range");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, framed_size(parts.total, step));
    if (result == NULL) {
        return NULL;
    }
    /* The payload is written in place, then each record's header and padding are made
       room for by writing piece by piece from the parts in order. */
    char *out = PyBytes_AsString(result);
    int part = 0;
    Py_ssize_t offset = 0; /* within parts.data[part] */
    Py_ssize_t left = parts.total;
    do {
        Py_ssize_t piece = left < step ? left : step;
        Py_ssize_t padding = -piece & 7;
        out[0] = 1;
        out[1] = 6; /* FCGI_STDOUT */
        out[2] = (char)(request_id >> 8);
        out[3] = (char)(request_id & 0xFF);
        out[4] = (char)(piece >> 8);
        out[5] = (char)(piece & 0xFF);
        out[6] = (char)padding;
        out[7] = 0;
        out += HEADER_LEN;
        Py_ssize_t need = piece;
        while (need > 0) {
            Py_ssize_t available = parts.size[part] - offset;
            Py_ssize_t take = available < need ? available : need;
            memcpy(out, parts.data[part] + offset, (size_t)take);
            out += take;
            need -= take;
            offset += take;
            if (take == available) {
                part++;
                offset = 0;
            }
        }
        memset(out, 0, (size_t)padding);
        out += padding;
        left -= piece;
    } while (left > 0);
    return result;
}

PyDoc_STRVAR(cgi_response_doc,
"cgi_response(status: bytes, block: bytes, body_length: int, data: bytes) -> bytes\n\n"
"A response as SCGI sends it: 'Status: ' status, the header lines of `block`, a\n"
"Content-Length of `body_length` unless it is negative or the block has one, the empty\n"
"line, then `data`: what the Python code joins.");

static PyObject *
cgi_response(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "cgi_response() takes four arguments");
        return NULL;
    }
    struct cgi_parts parts;
    if (cgi_parts_of(args, &parts) < 0) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, parts.total);
    if (result == NULL) {
        return NULL;
    }
    char *out = PyBytes_AsString(result);
    for (int i = 0; i < HEAD_PARTS; i++) {
        memcpy(out, parts.data[i], (size_t)parts.size[i]);
        out += parts.size[i];
    }
    return result;
}

static PyMethodDef methods[] = {
    {"read_request", (PyCFunction)(void (*)(void))read_request, METH_FASTCALL, read_request_doc},
    {"scgi_request", (PyCFunction)(void (*)(void))scgi_request, METH_FASTCALL, scgi_request_doc},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL,
     response_head_doc},
    {"cgi_response", (PyCFunction)(void (*)(void))cgi_response, METH_FASTCALL, cgi_response_doc},
    {"head_records", (PyCFunction)(void (*)(void))head_records, METH_FASTCALL,
     head_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "django_runfcgi.protocols._speedups",
    .m_doc = "FastCGI and SCGI request parsing and response encoding in C; see accelerator.py.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}
