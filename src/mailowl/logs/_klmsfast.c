/* The KLMS verdict-line tokenizer of mailowl/logs/klms.py, in C: the same grammar, the same documents.
 *
 * parse_body(body) takes a line without its syslog prefix and returns the document (a dict with the grok
 * pattern's flat field names) or None when the line is not in the format. klms.py falls back to its
 * regular-expression version where this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *SEPARATOR;  /* ", " */

static int is_key_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static int is_key_char(char c) {
    return is_key_start(c) || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* a key=... at s[i]? returns the index after the key name, or -1 */
static Py_ssize_t key_end(const char *s, Py_ssize_t i, Py_ssize_t n) {
    if (i >= n || !is_key_start(s[i])) return -1;
    Py_ssize_t j = i + 1;
    while (j < n && is_key_char(s[j])) j++;
    return (j < n && s[j] == '=') ? j : -1;
}

/* end of a quoted string starting at s[i] == '"' (index after the closing quote), or -1 */
static Py_ssize_t quoted_end(const char *s, Py_ssize_t i, Py_ssize_t n) {
    Py_ssize_t j = i + 1;
    while (j < n) {
        if (s[j] == '\\') { j += 2; continue; }
        if (s[j] == '"') return j + 1;
        j++;
    }
    return -1;
}

/* a str from s[a:b]; with unescape, a backslash keeps the next character and drops itself */
static PyObject *text(const char *s, Py_ssize_t a, Py_ssize_t b, int unescape) {
    if (!unescape || memchr(s + a, '\\', (size_t)(b - a)) == NULL)
        return PyUnicode_DecodeUTF8(s + a, b - a, "surrogateescape");
    char *buf = PyMem_Malloc((size_t)(b - a) + 1);
    if (buf == NULL) return PyErr_NoMemory();
    Py_ssize_t k = 0;
    for (Py_ssize_t j = a; j < b; j++) {
        if (s[j] == '\\' && j + 1 < b) j++;
        buf[k++] = s[j];
    }
    PyObject *out = PyUnicode_DecodeUTF8(buf, k, "surrogateescape");
    PyMem_Free(buf);
    return out;
}

static int quoted_has_escape(const char *s, Py_ssize_t a, Py_ssize_t b, int quoted) {
    return quoted && memchr(s + a, '\\', (size_t)(b - a)) != NULL;
}

static PyObject *value_object(const char *name, const char *s, Py_ssize_t a, Py_ssize_t b, int quoted) {
    if (strcmp(name, "size") == 0 || strcmp(name, "rules") == 0) {
        int digits = b > a && !quoted_has_escape(s, a, b, quoted);
        for (Py_ssize_t j = a; j < b && digits; j++) digits = s[j] >= '0' && s[j] <= '9';
        if (digits) {
            PyObject *str = PyUnicode_DecodeUTF8(s + a, b - a, "strict");
            if (str == NULL) return NULL;
            PyObject *num = PyLong_FromUnicodeObject(str, 10);
            Py_DECREF(str);
            return num;
        }
    }
    if (strcmp(name, "rcpt_to") == 0 || strcmp(name, "threats") == 0) {
        /* unescape first, then split on ", ", dropping empty items (as klms.py does) */
        PyObject *whole = text(s, a, b, quoted);
        if (whole == NULL) return NULL;
        PyObject *items = PyUnicode_Split(whole, SEPARATOR, -1);
        Py_DECREF(whole);
        if (items == NULL) return NULL;
        PyObject *list = PyList_New(0);
        for (Py_ssize_t j = 0; list != NULL && j < PyList_GET_SIZE(items); j++) {
            PyObject *item = PyList_GET_ITEM(items, j);
            if (PyUnicode_GET_LENGTH(item) > 0 && PyList_Append(list, item) < 0) Py_CLEAR(list);
        }
        Py_DECREF(items);
        return list;
    }
    return text(s, a, b, quoted);
}

/* Parse the body s[0:n] into doc (which may already hold prefix fields). Returns doc (a new reference)
 * on success, Py_None when the body is not a verdict line, Py_NotImplemented to leave the line to klms.py,
 * or NULL with an exception set; doc's reference is consumed in every case. */
static PyObject *fill(PyObject *doc, const char *s, Py_ssize_t n) {
    /* status: up to the first ": " followed by key=, with no ':', '=' or '"' in it */
    Py_ssize_t i = 0;
    for (;; i++) {
        if (i >= n) { Py_DECREF(doc); Py_RETURN_NONE; }
        char c = s[i];
        if (c == ':' && i + 1 < n && s[i + 1] == ' ' && key_end(s, i + 2, n) >= 0) break;
        if (c == ':' || c == '=' || c == '"') { Py_DECREF(doc); Py_RETURN_NONE; }
    }
    PyObject *parts = NULL, *target = doc;
    PyObject *status = text(s, 0, i, 0);
    if (status == NULL || PyDict_SetItemString(doc, "status_letter", status) < 0) goto error;
    Py_CLEAR(status);
    i += 2;
    char name[64];
    while (1) {
        if (n - i >= 6 && memcmp(s + i, "part \"", 6) == 0) {
            Py_ssize_t end = quoted_end(s, i + 5, n);
            if (end < 0) goto invalid;
            PyObject *part = PyDict_New();
            if (part == NULL) goto error;
            PyObject *pname = text(s, i + 6, end - 1, 1);
            if (pname == NULL || PyDict_SetItemString(part, "name", pname) < 0) { Py_XDECREF(pname); Py_DECREF(part); goto error; }
            Py_DECREF(pname);
            if (parts == NULL && (parts = PyList_New(0)) == NULL) { Py_DECREF(part); goto error; }
            if (PyList_Append(parts, part) < 0) { Py_DECREF(part); goto error; }
            Py_DECREF(part);
            target = part;
            i = end;
        } else {
            Py_ssize_t k = key_end(s, i, n);
            if (k < 0) goto invalid;
            if (k - i >= (Py_ssize_t)sizeof(name)) goto fallback;  /* absurdly long key: let klms.py decide */
            for (Py_ssize_t j = i; j < k; j++) name[j - i] = s[j] == '-' ? '_' : s[j];
            name[k - i] = '\0';
            Py_ssize_t a = k + 1, b, end;
            int quoted = a < n && s[a] == '"';
            if (quoted) {
                end = quoted_end(s, a, n);
                if (end < 0) goto invalid;
                a += 1;
                b = end - 1;
            } else {
                b = a;
                while (b < n && s[b] != '"' && !((s[b] == ',' || s[b] == ':') && b + 1 < n && s[b + 1] == ' ')) b++;
                if (b < n && s[b] == '"') goto invalid;
                end = b;
            }
            PyObject *value = value_object(name, s, a, b, quoted);
            if (value == NULL || PyDict_SetItemString(target, name, value) < 0) { Py_XDECREF(value); goto error; }
            Py_DECREF(value);
            i = end;
        }
        if (i == n) break;
        if (n - i < 2 || !((s[i] == ':' || s[i] == ',') && s[i + 1] == ' ')) goto invalid;
        i += 2;
    }
    PyObject *from = PyDict_GetItemString(doc, "mail_from");  /* borrowed */
    if (from != NULL && PyUnicode_Check(from) && PyUnicode_GET_LENGTH(from) == 0) {
        PyObject *null_sender = PyUnicode_FromString("NULL_SENDER_RFC5321");
        if (null_sender == NULL || PyDict_SetItemString(doc, "mail_from", null_sender) < 0) { Py_XDECREF(null_sender); goto error; }
        Py_DECREF(null_sender);
    }
    if (parts != NULL) {
        if (PyDict_SetItemString(doc, "part", parts) < 0) goto error;
        Py_DECREF(parts);
    }
    return doc;
invalid:
    Py_XDECREF(parts);
    Py_DECREF(doc);
    Py_RETURN_NONE;
fallback:
    Py_XDECREF(parts);
    Py_DECREF(doc);
    Py_RETURN_NOTIMPLEMENTED;
error:
    Py_XDECREF(status);
    Py_XDECREF(parts);
    Py_DECREF(doc);
    return NULL;
}

static PyObject *parse_body(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL) return NULL;
    PyObject *doc = PyDict_New();
    return doc == NULL ? NULL : fill(doc, s, n);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int set_text(PyObject *doc, const char *key, const char *s, Py_ssize_t a, Py_ssize_t b) {
    PyObject *value = PyUnicode_DecodeUTF8(s + a, b - a, "surrogateescape");
    if (value == NULL) return -1;
    int rc = PyDict_SetItemString(doc, key, value);
    Py_DECREF(value);
    return rc;
}

/* A whole line with an RFC 3164 prefix ("<13>Nov 23 10:00:00 host prog[pid]: ") or none; other prefixes
 * and anything unusual in the prefix are left to klms.py (NotImplemented). None: not a verdict line. */
static PyObject *parse_line(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL) return NULL;
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    if (n == 0 || !strchr("<ADFJMNOS0123456789", s[0])) {
        PyObject *doc = PyDict_New();
        return doc == NULL ? NULL : fill(doc, s, n);
    }
    Py_ssize_t i = 0;
    if (s[0] == '<') {
        i = 1;
        while (i < n && i <= 3 && is_digit(s[i])) i++;
        if (i == 1 || i >= n || s[i] != '>') Py_RETURN_NOTIMPLEMENTED;
        i++;
    }
    /* "Mmm dd hh:mm:ss " */
    const char *t = s + i;
    if (n - i < 16 || !(t[0] >= 'A' && t[0] <= 'Z') || !(t[1] >= 'a' && t[1] <= 'z') || !(t[2] >= 'a' && t[2] <= 'z')
        || t[3] != ' ' || !(t[4] == ' ' || is_digit(t[4])) || !is_digit(t[5]) || t[6] != ' ' || !is_digit(t[7]) || !is_digit(t[8])
        || t[9] != ':' || !is_digit(t[10]) || !is_digit(t[11]) || t[12] != ':' || !is_digit(t[13]) || !is_digit(t[14])
        || t[15] != ' ')
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t ts_a = i, ts_b = i + 15, host_a = i + 16, j = host_a;
    while (j < n && s[j] != ' ' && s[j] != '\t' && (unsigned char)s[j] < 0x80 && s[j] > ' ') j++;
    if (j == host_a || j >= n || s[j] != ' ') Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t host_b = j, prog_a = j + 1;
    j = prog_a;
    while (j < n && s[j] > ' ' && (unsigned char)s[j] < 0x80 && s[j] != '[' && s[j] != ':') j++;
    if (j == prog_a || j >= n) Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t prog_b = j, pid_a = -1, pid_b = -1;
    if (s[j] == '[') {
        pid_a = j + 1;
        j = pid_a;
        while (j < n && is_digit(s[j])) j++;
        if (j == pid_a || j >= n || s[j] != ']') Py_RETURN_NOTIMPLEMENTED;
        pid_b = j;
        j++;
    }
    if (n - j < 2 || s[j] != ':' || s[j + 1] != ' ') Py_RETURN_NOTIMPLEMENTED;
    PyObject *doc = PyDict_New();
    if (doc == NULL) return NULL;
    if (set_text(doc, "timestamp", s, ts_a, ts_b) < 0 || set_text(doc, "host", s, host_a, host_b) < 0
        || set_text(doc, "program", s, prog_a, prog_b) < 0) { Py_DECREF(doc); return NULL; }
    if (pid_a >= 0) {
        PyObject *str = PyUnicode_DecodeUTF8(s + pid_a, pid_b - pid_a, "strict");
        PyObject *pid = str == NULL ? NULL : PyLong_FromUnicodeObject(str, 10);
        Py_XDECREF(str);
        if (pid == NULL || PyDict_SetItemString(doc, "pid", pid) < 0) { Py_XDECREF(pid); Py_DECREF(doc); return NULL; }
        Py_DECREF(pid);
    }
    return fill(doc, s + j + 2, n - j - 2);
}

static PyMethodDef methods[] = {
    {"parse_body", parse_body, METH_O, "Parse a KLMS verdict line without its syslog prefix; None if not one."},
    {"parse_line", parse_line, METH_O, "Parse a whole line (RFC 3164 prefix or none); NotImplemented: ask klms.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_klmsfast", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__klmsfast(void) {
    SEPARATOR = PyUnicode_FromString(", ");
    if (SEPARATOR == NULL) return NULL;
    return PyModule_Create(&module);
}
