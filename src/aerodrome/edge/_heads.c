/* `header_lines` in C: the upstream response head's header lines, read from its raw bytes.

   What it returns and why are in aerodrome/edge/upstream.py (`header_lines`, the same function
   in Python, which the edge uses when this module is not built). Compiled Python pays a
   generic, argument-parsing call for each `bytes.find` (docs/decisions/0008), so a scan there
   costs more than httptools' per-header callbacks; here it is one call per response.

   The parser has already accepted the head (httptools raises on anything else): every line
   ends in CRLF, every header line holds a colon after a token. A head that breaks this anyway
   raises ValueError, and the edge treats it as an invalid response. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static inline char
lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Whether `name` (as received) is `lowercase` in any case. */
static int
name_is(const char *name, Py_ssize_t size, const char *lowercase, Py_ssize_t lowercase_size)
{
    if (size != lowercase_size) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        if (lower(name[i]) != lowercase[i]) {
            return 0;
        }
    }
    return 1;
}

/* Whether `value` holds "chunked" in any case. */
static int
holds_chunked(const char *value, Py_ssize_t size)
{
    static const char word[] = "chunked";
    for (Py_ssize_t i = 0; i + 7 <= size; i++) {
        Py_ssize_t j = 0;
        while (j < 7 && lower(value[i + j]) == word[j]) {
            j++;
        }
        if (j == 7) {
            return 1;
        }
    }
    return 0;
}

static int
append_slice(PyObject *pieces, const char *raw, Py_ssize_t from, Py_ssize_t to)
{
    PyObject *piece = PyBytes_FromStringAndSize(raw + from, to - from);
    if (piece == NULL) {
        return -1;
    }
    int failed = PyList_Append(pieces, piece);
    Py_DECREF(piece);
    return failed;
}

static PyObject *
header_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "header_lines(raw: bytes, start: int, cut: tuple[bytes, ...])");
        return NULL;
    }
    const char *raw = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *cut = args[2];
    Py_ssize_t cut_count = PyTuple_GET_SIZE(cut);
    for (Py_ssize_t i = 0; i < cut_count; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(cut, i))) {
            PyErr_SetString(PyExc_TypeError, "header_lines: `cut` holds bytes only");
            return NULL;
        }
    }
    if (pos < 0 || pos > size) {
        PyErr_SetString(PyExc_ValueError, "header_lines: start out of range");
        return NULL;
    }
    while (pos + 1 < size && raw[pos] == '\r' && raw[pos + 1] == '\n') {
        pos += 2; /* empty lines before a message, which the parser skips */
    }
    const char *end = memchr(raw + pos, '\n', (size_t)(size - pos));
    if (end == NULL) {
        goto malformed;
    }
    pos = end - raw + 1; /* after the status line */

    PyObject *pieces = PyList_New(0);
    if (pieces == NULL) {
        return NULL;
    }
    Py_ssize_t kept = pos; /* the start of the lines kept and not yet in `pieces` */
    int has_length = 0;
    int chunked = 0;
    while (!(pos + 1 < size && raw[pos] == '\r' && raw[pos + 1] == '\n')) {
        end = memchr(raw + pos, '\n', (size_t)(size - pos));
        if (end == NULL) {
            Py_DECREF(pieces);
            goto malformed;
        }
        Py_ssize_t after = end - raw + 1;
        const char *name = raw + pos;
        const char *colon = memchr(name, ':', (size_t)(after - pos));
        if (colon == NULL) {
            Py_DECREF(pieces);
            goto malformed;
        }
        Py_ssize_t name_size = colon - name;
        int left_out = 0;
        if (name_is(name, name_size, "content-length", 14)) {
            has_length = 1;
        }
        else {
            if (name_is(name, name_size, "transfer-encoding", 17)) {
                chunked = holds_chunked(colon, end - colon);
            }
            for (Py_ssize_t i = 0; i < cut_count; i++) {
                PyObject *lowercase = PyTuple_GET_ITEM(cut, i);
                if (name_is(name, name_size, PyBytes_AS_STRING(lowercase),
                            PyBytes_GET_SIZE(lowercase))) {
                    left_out = 1;
                    break;
                }
            }
        }
        if (left_out) {
            if (kept < pos && append_slice(pieces, raw, kept, pos) < 0) {
                Py_DECREF(pieces);
                return NULL;
            }
            kept = after;
        }
        pos = after;
    }
    if (kept < pos && append_slice(pieces, raw, kept, pos) < 0) {
        Py_DECREF(pieces);
        return NULL;
    }
    return Py_BuildValue("(nNOO)", pos + 2, pieces, has_length ? Py_True : Py_False,
                         chunked ? Py_True : Py_False);

malformed:
    PyErr_SetString(PyExc_ValueError, "header_lines: not a complete response head");
    return NULL;
}

static PyMethodDef methods[] = {
    {"header_lines", (PyCFunction)(void (*)(void))header_lines, METH_FASTCALL,
     "header_lines(raw, start, cut) -> (next, pieces, has_length, chunked): see upstream.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aerodrome.edge._heads",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__heads(void)
{
    return PyModule_Create(&module);
}
