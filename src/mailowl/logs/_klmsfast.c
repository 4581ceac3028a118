/* The KLMS verdict-line tokenizer of mailowl/logs/klms.py, in C: the same grammar, the same documents.
 *
 * parse_body(body) takes a line without its syslog prefix and returns the document (a dict with the grok
 * pattern's flat field names) or None when the line is not in the format. klms.py falls back to its
 * regular-expression version where this module was not built.
 *
 * ndjson(lines, fallback) writes the NDJSON of the klms schema for a block of lines straight from the text,
 * byte for byte what orjson.dumps(parse(line), option=OPT_APPEND_NEWLINE) gives: building a dict per line
 * and serialising it again was most of the command's time. Lines it does not handle are fallback(line).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *SEPARATOR;  /* ", " */

/* Field names as str objects made once: PyDict_SetItemString makes and interns a new str for every
 * field of every line, which was a fifth of parse()'s time. The table is bounded, so a log full of made-up
 * keys only stops filling it. */
#define KEY_SLOTS 512
#define KEY_LIMIT 384
static struct {
    char name[64];
    PyObject *object;
} KEY_CACHE[KEY_SLOTS];
static int key_count;

static PyObject *key_object(const char *name) {  /* a new reference */
    size_t length = strlen(name), h = 2166136261u;
    for (size_t j = 0; j < length; j++) h = (h ^ (unsigned char)name[j]) * 16777619u;
    if (length < sizeof(KEY_CACHE[0].name)) {
        for (size_t slot = h % KEY_SLOTS;; slot = (slot + 1) % KEY_SLOTS) {
            if (KEY_CACHE[slot].object == NULL) {
                if (key_count >= KEY_LIMIT) break;
                PyObject *key = PyUnicode_InternFromString(name);
                if (key == NULL) return NULL;
                memcpy(KEY_CACHE[slot].name, name, length + 1);
                KEY_CACHE[slot].object = key;
                key_count++;
                Py_INCREF(key);
                return key;
            }
            if (strcmp(KEY_CACHE[slot].name, name) == 0) {
                Py_INCREF(KEY_CACHE[slot].object);
                return KEY_CACHE[slot].object;
            }
        }
    }
    return PyUnicode_InternFromString(name);
}

static int set_item(PyObject *dict, const char *name, PyObject *value) {
    PyObject *key = key_object(name);
    if (key == NULL) return -1;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(key);
    return rc;
}

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

/* The ASCII digits s[a:b] without their leading zeros (as int() drops them) if the number is in orjson's
 * range (0 to 2**64 - 1), else 0: a larger one stays a string, so a hostile line cannot stop the command
 * (klms.py's _number decides the same). */
static int in_range(const char *s, Py_ssize_t *a, Py_ssize_t b) {
    Py_ssize_t i = *a;
    while (i < b - 1 && s[i] == '0') i++;
    if (b - i > 20 || (b - i == 20 && memcmp(s + i, "18446744073709551615", 20) > 0)) return 0;
    *a = i;
    return 1;
}

static PyObject *number(const char *s, Py_ssize_t a, Py_ssize_t b) {
    char digits[21];
    memcpy(digits, s + a, (size_t)(b - a));
    digits[b - a] = '\0';
    return PyLong_FromUnsignedLongLong(strtoull(digits, NULL, 10));
}

static int all_digits(const char *s, Py_ssize_t a, Py_ssize_t b) {
    if (b <= a) return 0;
    for (Py_ssize_t j = a; j < b; j++)
        if (s[j] < '0' || s[j] > '9') return 0;
    return 1;
}

static int is_int_field(const char *name) { return strcmp(name, "size") == 0 || strcmp(name, "rules") == 0; }
static int is_list_field(const char *name) { return strcmp(name, "rcpt_to") == 0 || strcmp(name, "threats") == 0; }

static PyObject *value_object(const char *name, const char *s, Py_ssize_t a, Py_ssize_t b, int quoted) {
    if (is_int_field(name) && !quoted_has_escape(s, a, b, quoted) && all_digits(s, a, b)) {
        Py_ssize_t start = a;
        if (in_range(s, &start, b)) return number(s, start, b);
    }
    if (is_list_field(name)) {
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
    if (status == NULL || set_item(doc, "status_letter", status) < 0) goto error;
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
            if (pname == NULL || set_item(part, "name", pname) < 0) { Py_XDECREF(pname); Py_DECREF(part); goto error; }
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
            if (value == NULL || set_item(target, name, value) < 0) { Py_XDECREF(value); goto error; }
            Py_DECREF(value);
            i = end;
        }
        if (i == n) break;
        if (n - i < 2 || !((s[i] == ':' || s[i] == ',') && s[i + 1] == ' ')) goto invalid;
        i += 2;
    }
    PyObject *from_key = key_object("mail_from");
    if (from_key == NULL) goto error;
    PyObject *from = PyDict_GetItem(doc, from_key);  /* borrowed */
    Py_DECREF(from_key);
    if (from != NULL && PyUnicode_Check(from) && PyUnicode_GET_LENGTH(from) == 0) {
        PyObject *null_sender = key_object("NULL_SENDER_RFC5321");  /* made once, like the keys */
        if (null_sender == NULL || set_item(doc, "mail_from", null_sender) < 0) { Py_XDECREF(null_sender); goto error; }
        Py_DECREF(null_sender);
    }
    if (parts != NULL) {
        if (set_item(doc, "part", parts) < 0) goto error;
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
    int rc = set_item(doc, key, value);
    Py_DECREF(value);
    return rc;
}

typedef struct {
    Py_ssize_t ts_a, ts_b, host_a, host_b, prog_a, prog_b, pid_a, pid_b, body;
} prefix_t;

/* An RFC 3164 prefix ("<13>Nov 23 10:00:00 host prog[pid]: ") of s[0:n]: 1 with its fields in p, 0 when
 * the line cannot have a prefix (p->body is then 0), -1 when klms.py must decide (other prefixes,
 * anything unusual in this one). */
static int split_prefix(const char *s, Py_ssize_t n, prefix_t *p) {
    p->body = 0;
    p->pid_a = p->pid_b = -1;
    if (n == 0 || !strchr("<ADFJMNOS0123456789", s[0])) return 0;
    Py_ssize_t i = 0;
    if (s[0] == '<') {
        i = 1;
        while (i < n && i <= 3 && is_digit(s[i])) i++;
        if (i == 1 || i >= n || s[i] != '>') return -1;
        i++;
    }
    /* "Mmm dd hh:mm:ss " */
    const char *t = s + i;
    if (n - i < 16 || !(t[0] >= 'A' && t[0] <= 'Z') || !(t[1] >= 'a' && t[1] <= 'z') || !(t[2] >= 'a' && t[2] <= 'z')
        || t[3] != ' ' || !(t[4] == ' ' || is_digit(t[4])) || !is_digit(t[5]) || t[6] != ' ' || !is_digit(t[7]) || !is_digit(t[8])
        || t[9] != ':' || !is_digit(t[10]) || !is_digit(t[11]) || t[12] != ':' || !is_digit(t[13]) || !is_digit(t[14])
        || t[15] != ' ')
        return -1;
    p->ts_a = i;
    p->ts_b = i + 15;
    p->host_a = i + 16;
    Py_ssize_t j = p->host_a;
    while (j < n && s[j] != ' ' && s[j] != '\t' && (unsigned char)s[j] < 0x80 && s[j] > ' ') j++;
    if (j == p->host_a || j >= n || s[j] != ' ') return -1;
    p->host_b = j;
    p->prog_a = j = j + 1;
    while (j < n && s[j] > ' ' && (unsigned char)s[j] < 0x80 && s[j] != '[' && s[j] != ':') j++;
    if (j == p->prog_a || j >= n) return -1;
    p->prog_b = j;
    if (s[j] == '[') {
        p->pid_a = j = j + 1;
        while (j < n && is_digit(s[j])) j++;
        if (j == p->pid_a || j >= n || s[j] != ']') return -1;
        p->pid_b = j;
        j++;
    }
    if (n - j < 2 || s[j] != ':' || s[j + 1] != ' ') return -1;
    p->body = j + 2;
    return 1;
}

/* A whole line with an RFC 3164 prefix or none; other prefixes and anything unusual in the prefix are
 * left to klms.py (NotImplemented). None: not a verdict line. */
static PyObject *parse_line(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL) return NULL;
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    prefix_t p;
    int found = split_prefix(s, n, &p);
    if (found < 0) Py_RETURN_NOTIMPLEMENTED;
    PyObject *doc = PyDict_New();
    if (doc == NULL) return NULL;
    if (found) {
        if (set_text(doc, "timestamp", s, p.ts_a, p.ts_b) < 0 || set_text(doc, "host", s, p.host_a, p.host_b) < 0
            || set_text(doc, "program", s, p.prog_a, p.prog_b) < 0) { Py_DECREF(doc); return NULL; }
        if (p.pid_a >= 0) {
            Py_ssize_t start = p.pid_a;
            PyObject *pid = in_range(s, &start, p.pid_b) ? number(s, start, p.pid_b)
                                                           : PyUnicode_DecodeUTF8(s + p.pid_a, p.pid_b - p.pid_a, "strict");
            if (pid == NULL || set_item(doc, "pid", pid) < 0) { Py_XDECREF(pid); Py_DECREF(doc); return NULL; }
            Py_DECREF(pid);
        }
    }
    return fill(doc, s + p.body, n - p.body);
}

/* ---- NDJSON straight from the text ---- */

typedef struct {
    char *data;
    size_t len, cap;
} buffer_t;

static int reserve(buffer_t *out, size_t extra) {
    if (out->len + extra <= out->cap) return 0;
    size_t cap = out->cap ? out->cap : 1 << 16;
    while (cap < out->len + extra) cap *= 2;
    char *data = PyMem_Realloc(out->data, cap);
    if (data == NULL) { PyErr_NoMemory(); return -1; }
    out->data = data;
    out->cap = cap;
    return 0;
}

static int put(buffer_t *out, const char *s, size_t n) {
    if (reserve(out, n) < 0) return -1;
    memcpy(out->data + out->len, s, n);
    out->len += n;
    return 0;
}

#define PUT_LITERAL(out, lit) put((out), (lit), sizeof(lit) - 1)

/* orjson's escapes: the short forms it uses, \u00xx (lowercase hex) for the other control characters,
 * everything else (DEL, non-ASCII as UTF-8) as it is. 0: as it is. */
static char ESCAPE[256];

static void init_escapes(void) {
    for (int c = 0; c < 0x20; c++) ESCAPE[c] = 'u';
    ESCAPE['"'] = '"';
    ESCAPE['\\'] = '\\';
    ESCAPE['\n'] = 'n';
    ESCAPE['\r'] = 'r';
    ESCAPE['\t'] = 't';
    ESCAPE['\b'] = 'b';
    ESCAPE['\f'] = 'f';
}

/* the JSON string of s[a:b] (quotes included); with unescape, a backslash keeps the next byte and drops
 * itself, as text() does */
static int put_string(buffer_t *out, const char *s, Py_ssize_t a, Py_ssize_t b, int unescape) {
    if (reserve(out, 6 * (size_t)(b - a) + 2) < 0) return -1;
    char *w = out->data + out->len;
    *w++ = '"';
    for (Py_ssize_t j = a; j < b; j++) {
        if (unescape && s[j] == '\\' && j + 1 < b) j++;
        unsigned char c = (unsigned char)s[j];
        char e = ESCAPE[c];
        if (e == 0) {
            *w++ = (char)c;
        } else if (e == 'u') {
            static const char hex[] = "0123456789abcdef";
            memcpy(w, "\\u00", 4);
            w[4] = hex[c >> 4];
            w[5] = hex[c & 15];
            w += 6;
        } else {
            *w++ = '\\';
            *w++ = e;
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->data);
    return 0;
}

/* digits as a JSON number when in range, else as a string (the same choice as value_object) */
static int put_number(buffer_t *out, const char *s, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t start = a;
    if (in_range(s, &start, b)) return put(out, s + start, (size_t)(b - start));
    return put_string(out, s, a, b, 0);
}

typedef struct {
    Py_ssize_t ka, kb;  /* key name; ka == -1: a part, its name in a:b */
    Py_ssize_t a, b;
    int quoted;
} token_t;

#define MAX_TOKENS 128

/* key s[a:b] (with '-' read as '_') equals the field name lit? */
static int key_is(const char *s, Py_ssize_t a, Py_ssize_t b, const char *lit) {
    for (Py_ssize_t j = a; j < b; j++, lit++) {
        char c = s[j] == '-' ? '_' : s[j];
        if (*lit != c) return 0;
    }
    return *lit == '\0';
}

static int keys_equal(const char *s, const token_t *x, const token_t *y) {
    if (x->kb - x->ka != y->kb - y->ka) return 0;
    for (Py_ssize_t j = 0; j < x->kb - x->ka; j++) {
        char c = s[x->ka + j], d = s[y->ka + j];
        if ((c == '-' ? '_' : c) != (d == '-' ? '_' : d)) return 0;
    }
    return 1;
}

static int put_key(buffer_t *out, const char *s, Py_ssize_t a, Py_ssize_t b) {
    if (reserve(out, (size_t)(b - a) + 3) < 0) return -1;
    char *w = out->data + out->len;
    *w++ = '"';
    for (Py_ssize_t j = a; j < b; j++) *w++ = s[j] == '-' ? '_' : s[j];
    *w++ = '"';
    *w++ = ':';
    out->len = (size_t)(w - out->data);
    return 0;
}

/* the list a rcpt_to or threats value becomes: unescaped, split on ", ", empty items dropped */
static int put_list(buffer_t *out, const char *s, Py_ssize_t a, Py_ssize_t b, int quoted) {
    char *plain = NULL;
    if (quoted && memchr(s + a, '\\', (size_t)(b - a)) != NULL) {
        plain = PyMem_Malloc((size_t)(b - a) + 1);
        if (plain == NULL) { PyErr_NoMemory(); return -1; }
        Py_ssize_t k = 0;
        for (Py_ssize_t j = a; j < b; j++) {
            if (s[j] == '\\' && j + 1 < b) j++;
            plain[k++] = s[j];
        }
        s = plain;
        a = 0;
        b = k;
    }
    int rc = PUT_LITERAL(out, "[");
    int first = 1;
    Py_ssize_t item = a;
    for (Py_ssize_t j = a; rc == 0 && j <= b; j++) {
        int at_end = j == b;
        if (!at_end && !(s[j] == ',' && j + 1 < b && s[j + 1] == ' ')) continue;
        if (j > item) {
            if (!first) rc = PUT_LITERAL(out, ",");
            if (rc == 0) rc = put_string(out, s, item, j, 0);
            first = 0;
        }
        item = j + 2;
        j++;
    }
    if (rc == 0) rc = PUT_LITERAL(out, "]");
    PyMem_Free(plain);
    return rc;
}

static int put_value(buffer_t *out, const char *s, const token_t *t, int top) {
    Py_ssize_t ka = t->ka, kb = t->kb;
    if ((key_is(s, ka, kb, "size") || key_is(s, ka, kb, "rules")) && !quoted_has_escape(s, t->a, t->b, t->quoted)
        && all_digits(s, t->a, t->b))
        return put_number(out, s, t->a, t->b);
    if (key_is(s, ka, kb, "rcpt_to") || key_is(s, ka, kb, "threats")) return put_list(out, s, t->a, t->b, t->quoted);
    /* only an empty value unescapes to an empty string */
    if (top && t->a == t->b && key_is(s, ka, kb, "mail_from")) return PUT_LITERAL(out, "\"NULL_SENDER_RFC5321\"");
    return put_string(out, s, t->a, t->b, t->quoted);
}

static int put_prefix(buffer_t *out, const char *s, const prefix_t *p) {
    if (PUT_LITERAL(out, "\"timestamp\":") < 0 || put_string(out, s, p->ts_a, p->ts_b, 0) < 0
        || PUT_LITERAL(out, ",\"host\":") < 0 || put_string(out, s, p->host_a, p->host_b, 0) < 0
        || PUT_LITERAL(out, ",\"program\":") < 0 || put_string(out, s, p->prog_a, p->prog_b, 0) < 0)
        return -1;
    if (p->pid_a >= 0 && (PUT_LITERAL(out, ",\"pid\":") < 0 || put_number(out, s, p->pid_a, p->pid_b) < 0)) return -1;
    return 0;
}

/* One line's document, as klms.parse builds it and orjson writes it, appended to out: 1, or 0 when the
 * line is left to the fallback (out unchanged), or -1 with an exception set. */
static int put_line(buffer_t *out, const char *s, Py_ssize_t n) {
    size_t start = out->len;
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    prefix_t p;
    int found = split_prefix(s, n, &p);
    if (found < 0) return 0;
    const char *body = s + p.body;
    Py_ssize_t m = n - p.body, i = 0;
    token_t tokens[MAX_TOKENS];
    int count = 0;
    /* the status and the tokens as fill() reads them */
    for (;; i++) {
        if (i >= m) goto invalid;
        char c = body[i];
        if (c == ':' && i + 1 < m && body[i + 1] == ' ' && key_end(body, i + 2, m) >= 0) break;
        if (c == ':' || c == '=' || c == '"') goto invalid;
    }
    Py_ssize_t status_end = i;
    i += 2;
    while (1) {
        if (count == MAX_TOKENS) return 0;
        token_t *t = &tokens[count++];
        if (m - i >= 6 && memcmp(body + i, "part \"", 6) == 0) {
            Py_ssize_t end = quoted_end(body, i + 5, m);
            if (end < 0) goto invalid;
            t->ka = t->kb = -1;
            t->a = i + 6;
            t->b = end - 1;
            t->quoted = 1;
            i = end;
        } else {
            Py_ssize_t k = key_end(body, i, m);
            if (k < 0) goto invalid;
            if (k - i >= 64) return 0;  /* fill() leaves these to klms.py */
            t->ka = i;
            t->kb = k;
            Py_ssize_t a = k + 1, b, end;
            t->quoted = a < m && body[a] == '"';
            if (t->quoted) {
                end = quoted_end(body, a, m);
                if (end < 0) goto invalid;
                a += 1;
                b = end - 1;
            } else {
                b = a;
                while (b < m && body[b] != '"' && !((body[b] == ',' || body[b] == ':') && b + 1 < m && body[b + 1] == ' ')) b++;
                if (b < m && body[b] == '"') goto invalid;
                end = b;
            }
            t->a = a;
            t->b = b;
            i = end;
        }
        if (i == m) break;
        if (m - i < 2 || !((body[i] == ':' || body[i] == ',') && body[i + 1] == ' ')) goto invalid;
        i += 2;
    }
    /* A key twice in one object overwrites in place in the dict, and "part" collides with the list of
     * parts: rare enough to leave to the fallback rather than mimic. So are the prefix's and the part's own
     * field names used as keys. */
    int object_start = 0, top = 1;
    for (int x = 0; x < count; x++) {
        Py_ssize_t ka = tokens[x].ka, kb = tokens[x].kb;
        if (ka < 0) {
            object_start = x;
            top = 0;
            continue;
        }
        if (key_is(body, ka, kb, "part")) return 0;
        if (top ? key_is(body, ka, kb, "status_letter")
                      || (found && (key_is(body, ka, kb, "timestamp") || key_is(body, ka, kb, "host")
                                    || key_is(body, ka, kb, "program") || (p.pid_a >= 0 && key_is(body, ka, kb, "pid"))))
                : key_is(body, ka, kb, "name"))
            return 0;
        for (int y = object_start; y < x; y++)
            if (tokens[y].ka >= 0 && keys_equal(body, &tokens[x], &tokens[y])) return 0;
    }
    if (PUT_LITERAL(out, "{") < 0 || (found && (put_prefix(out, s, &p) < 0 || PUT_LITERAL(out, ",") < 0))
        || PUT_LITERAL(out, "\"status_letter\":") < 0 || put_string(out, body, 0, status_end, 0) < 0)
        goto error;
    int in_parts = 0;
    for (int x = 0; x < count; x++) {
        const token_t *t = &tokens[x];
        if (t->ka < 0) {
            if ((in_parts ? PUT_LITERAL(out, "},{\"name\":") : PUT_LITERAL(out, ",\"part\":[{\"name\":")) < 0
                || put_string(out, body, t->a, t->b, 1) < 0)
                goto error;
            in_parts = 1;
            continue;
        }
        if (PUT_LITERAL(out, ",") < 0 || put_key(out, body, t->ka, t->kb) < 0 || put_value(out, body, t, !in_parts) < 0)
            goto error;
    }
    if ((in_parts && PUT_LITERAL(out, "}]") < 0) || PUT_LITERAL(out, "}\n") < 0) goto error;
    return 1;
invalid:
    /* {"message": line, "tags": ["_grokparsefailure"], **prefix} */
    if (PUT_LITERAL(out, "{\"message\":") < 0 || put_string(out, s, 0, n, 0) < 0
        || PUT_LITERAL(out, ",\"tags\":[\"_grokparsefailure\"]") < 0
        || (found && (PUT_LITERAL(out, ",") < 0 || put_prefix(out, s, &p) < 0)) || PUT_LITERAL(out, "}\n") < 0)
        goto error;
    return 1;
error:
    out->len = start;
    return -1;
}

static PyObject *ndjson(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *lines, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:ndjson", &PyList_Type, &lines, &fallback)) return NULL;
    buffer_t out = {NULL, 0, 0};
    /* the fallback may run any Python code: hold each line, read the list's length afresh */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_INCREF(line);
        int done = 0;
        if (PyUnicode_Check(line)) {
            Py_ssize_t n;
            const char *s = PyUnicode_AsUTF8AndSize(line, &n);
            if (s == NULL) PyErr_Clear();  /* lone surrogates: the fallback says what they give */
            else done = put_line(&out, s, n);
        }
        if (done == 0) {
            PyObject *doc = PyObject_CallOneArg(fallback, line);
            if (doc != NULL && !PyBytes_Check(doc)) {
                PyErr_SetString(PyExc_TypeError, "ndjson: fallback must return bytes");
                Py_CLEAR(doc);
            }
            done = doc == NULL ? -1 : put(&out, PyBytes_AS_STRING(doc), (size_t)PyBytes_GET_SIZE(doc));
            Py_XDECREF(doc);
        }
        Py_DECREF(line);
        if (done < 0) {
            PyMem_Free(out.data);
            return NULL;
        }
    }
    PyObject *result = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
    PyMem_Free(out.data);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_body", parse_body, METH_O, "Parse a KLMS verdict line without its syslog prefix; None if not one."},
    {"parse_line", parse_line, METH_O, "Parse a whole line (RFC 3164 prefix or none); NotImplemented: ask klms.py."},
    {"ndjson", ndjson, METH_VARARGS,
     "ndjson(lines, fallback): the klms-schema NDJSON of a list of lines; fallback(line) -> bytes for the rest."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_klmsfast", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__klmsfast(void) {
    init_escapes();
    SEPARATOR = PyUnicode_FromString(", ");
    if (SEPARATOR == NULL) return NULL;
    return PyModule_Create(&module);
}
