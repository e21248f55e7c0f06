/* _pickloop: nginx's per-peer selection loops over the shared zone's int64 words.
 *
 * The optional compiled half of balance/round_robin.py and balance/least_conn.py (see
 * balance/native.py): the same passes as their pure-Python loops (``smooth_rows``,
 * ``least_conn_rows`` + ``PeerTable.smooth_among``), word for word: same position chosen,
 * same words written, in the same cases. Callers hold the zone lock (zone/layout.py rule 1);
 * the GIL is held throughout, so a pass is never interleaved with Python code.
 *
 * Arguments shared by every function:
 *   zone  a writable buffer of int64 words (the zone's memoryview, cast "q")
 *   cfg   a bytes object of int64 words built once per peer list at config load
 *         (``PeerTable.cfg``): a header of CFG_HEADER words, then CFG_PEER words per
 *         position, in position order:
 *           header  n, limit (max base + PEER_WORDS: every word touched is below it),
 *                   the word offsets P_CW, P_EW, P_CONNS, P_FAILS, P_CHECKED, P_SLOW_START_MS
 *                   (from zone/layout.py, so the layout stays defined in one place)
 *           peer    base, weight, max_fails, fail_timeout_s, max_conns, down, slow_start_ms, 0
 *   tried the request's tried bitmap over positions (a Python int, usually 0)
 *
 * Returns the chosen position, or -1 when no position is usable.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CFG_HEADER 8
#define CFG_PEER 8

enum { H_N, H_LIMIT, H_CW, H_EW, H_CONNS, H_FAILS, H_CHECKED, H_SLOW };
enum { C_BASE, C_WEIGHT, C_MAX_FAILS, C_FAIL_TIMEOUT, C_MAX_CONNS, C_DOWN, C_SLOW_MS };

typedef struct {
    Py_buffer zone;
    Py_buffer cfg;
    int64_t *z;
    const int64_t *h;   /* cfg header */
    const int64_t *rec; /* cfg peer records */
    Py_ssize_t n;
    PyObject *tried_bytes; /* little-endian bytes of a non-zero tried bitmap, else NULL */
    const unsigned char *tried;
} Pass;

static void pass_release(Pass *p) {
    Py_XDECREF(p->tried_bytes);
    if (p->cfg.obj) PyBuffer_Release(&p->cfg);
    if (p->zone.obj) PyBuffer_Release(&p->zone);
}

/* Acquire the buffers and check that every word the pass can touch lies inside the zone. */
static int pass_open(Pass *p, PyObject *zone, PyObject *cfg, PyObject *tried) {
    memset(p, 0, sizeof(*p));
    if (PyObject_GetBuffer(zone, &p->zone, PyBUF_WRITABLE) < 0) return -1;
    if (PyObject_GetBuffer(cfg, &p->cfg, PyBUF_SIMPLE) < 0) goto fail;
    if (p->cfg.len < (Py_ssize_t)(CFG_HEADER * 8) || p->cfg.len % 8) goto bad_cfg;
    p->h = (const int64_t *)p->cfg.buf;
    p->rec = p->h + CFG_HEADER;
    p->n = (Py_ssize_t)p->h[H_N];
    if (p->n < 0 || (Py_ssize_t)((CFG_HEADER + p->n * CFG_PEER) * 8) != p->cfg.len) goto bad_cfg;
    if (p->h[H_LIMIT] < 0 || p->h[H_LIMIT] > (int64_t)(p->zone.len / 8)) {
        PyErr_SetString(PyExc_ValueError, "_pickloop: peer table reaches past the zone");
        goto fail;
    }
    p->z = (int64_t *)p->zone.buf;
    if (!PyLong_Check(tried)) {
        PyErr_SetString(PyExc_TypeError, "_pickloop: tried must be an int");
        goto fail;
    }
    int nonzero = PyObject_IsTrue(tried);
    if (nonzero < 0) goto fail;
    if (nonzero) { /* a retry: rare, so the bitmap goes through int.to_bytes */
        p->tried_bytes = PyObject_CallMethod(tried, "to_bytes", "ns", (p->n + 7) / 8, "little");
        if (p->tried_bytes == NULL) goto fail;
        p->tried = (const unsigned char *)PyBytes_AS_STRING(p->tried_bytes);
    }
    return 0;
bad_cfg:
    PyErr_SetString(PyExc_ValueError, "_pickloop: malformed peer table");
fail:
    pass_release(p);
    return -1;
}

static inline int tried_bit(const Pass *p, Py_ssize_t i) {
    return p->tried != NULL && (p->tried[i >> 3] >> (i & 7)) & 1;
}

/* nginx's peer filter (Peer.usable) plus the tried bit. */
static inline int usable(const Pass *p, const int64_t *r, int64_t now_s) {
    const int64_t *z = p->z, *h = p->h;
    int64_t b = r[C_BASE];
    int64_t mf = r[C_MAX_FAILS];
    if (r[C_DOWN]) return 0;
    if (mf && z[b + h[H_FAILS]] >= mf && now_s - z[b + h[H_CHECKED]] <= r[C_FAIL_TIMEOUT]) return 0;
    if (r[C_MAX_CONNS] && z[b + h[H_CONNS]] >= r[C_MAX_CONNS]) return 0;
    return 1;
}

/* Python's floor division for a positive divisor. */
static inline int64_t floordiv(int64_t a, int64_t d) {
    int64_t q = a / d;
    return (a % d != 0 && a < 0) ? q - 1 : q;
}

/* Peer.weight_pct: slow_start's scale in percent; ends the ramp (word := 0) at 100. */
static inline int64_t weight_pct(const Pass *p, const int64_t *r, int64_t now_ms) {
    int64_t *t0 = p->z + r[C_BASE] + p->h[H_SLOW];
    if (!*t0 || !r[C_SLOW_MS]) return 100;
    int64_t pct = floordiv((now_ms - *t0) * 100, r[C_SLOW_MS]);
    if (pct >= 100) {
        *t0 = 0;
        return 100;
    }
    return pct > 0 ? pct : 0;
}

/* smooth(zone, cfg, tried, now_s, now_ms, scaled) -> position: round_robin.smooth_rows. */
static PyObject *pl_smooth(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "smooth(zone, cfg, tried, now_s, now_ms, scaled)");
        return NULL;
    }
    int64_t now_s = PyLong_AsLongLong(args[3]);
    if (now_s == -1 && PyErr_Occurred()) return NULL;
    int64_t now_ms = PyLong_AsLongLong(args[4]);
    if (now_ms == -1 && PyErr_Occurred()) return NULL;
    int scaled = PyObject_IsTrue(args[5]);
    if (scaled < 0) return NULL;
    Pass p;
    if (pass_open(&p, args[0], args[1], args[2]) < 0) return NULL;
    int64_t *z = p.z;
    const int64_t cw_ = p.h[H_CW], ew_ = p.h[H_EW];
    Py_ssize_t best = -1;
    int64_t best_cw = 0, total = 0;
    for (Py_ssize_t i = 0; i < p.n; i++) {
        const int64_t *r = p.rec + i * CFG_PEER;
        if (tried_bit(&p, i) || !usable(&p, r, now_s)) continue;
        int64_t b = r[C_BASE];
        int64_t ew = z[b + ew_];
        int64_t w = scaled ? ew * weight_pct(&p, r, now_ms) : ew;
        int64_t cw = z[b + cw_] + w;
        z[b + cw_] = cw;
        total += w;
        if (ew < r[C_WEIGHT]) z[b + ew_] = ew + 1;
        if (best < 0 || cw > best_cw) {
            best = i;
            best_cw = cw;
        }
    }
    if (best >= 0) z[p.rec[best * CFG_PEER + C_BASE] + cw_] = best_cw - total;
    pass_release(&p);
    return PyLong_FromSsize_t(best);
}

/* least_conn(zone, cfg, tried, now_s) -> position: least_conn.least_conn_rows, with
 * PeerTable.smooth_among (unscaled smooth WRR among the tied, from the first of them). */
static PyObject *pl_least_conn(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "least_conn(zone, cfg, tried, now_s)");
        return NULL;
    }
    int64_t now_s = PyLong_AsLongLong(args[3]);
    if (now_s == -1 && PyErr_Occurred()) return NULL;
    Pass p;
    if (pass_open(&p, args[0], args[1], args[2]) < 0) return NULL;
    int64_t *z = p.z;
    const int64_t cw_ = p.h[H_CW], ew_ = p.h[H_EW], conns_ = p.h[H_CONNS];
    Py_ssize_t best = -1;
    int64_t best_conns = 0, best_weight = 0;
    int many = 0;
    for (Py_ssize_t i = 0; i < p.n; i++) {
        const int64_t *r = p.rec + i * CFG_PEER;
        if (tried_bit(&p, i) || !usable(&p, r, now_s)) continue;
        int64_t conns = z[r[C_BASE] + conns_], weight = r[C_WEIGHT];
        if (best < 0 || conns * best_weight < best_conns * weight) {
            best = i;
            best_conns = conns;
            best_weight = weight;
            many = 0;
        } else if (conns * best_weight == best_conns * weight) {
            many = 1;
        }
    }
    if (many) {
        Py_ssize_t first = best;
        int64_t top_cw = 0, total = 0;
        for (Py_ssize_t i = first; i < p.n; i++) {
            const int64_t *r = p.rec + i * CFG_PEER;
            if (tried_bit(&p, i) || !usable(&p, r, now_s)) continue;
            int64_t b = r[C_BASE], weight = r[C_WEIGHT];
            if (z[b + conns_] * best_weight != best_conns * weight) continue;
            int64_t ew = z[b + ew_];
            int64_t cw = z[b + cw_] + ew;
            z[b + cw_] = cw;
            total += ew;
            if (ew < weight) z[b + ew_] = ew + 1;
            if (i == first || cw > top_cw) {
                best = i;
                top_cw = cw;
            }
        }
        z[p.rec[best * CFG_PEER + C_BASE] + cw_] = top_cw - total;
    }
    pass_release(&p);
    return PyLong_FromSsize_t(best);
}

static PyMethodDef methods[] = {
    {"smooth", (PyCFunction)(void (*)(void))pl_smooth, METH_FASTCALL,
     "smooth(zone, cfg, tried, now_s, now_ms, scaled) -> position: nginx's smooth WRR pass"},
    {"least_conn", (PyCFunction)(void (*)(void))pl_least_conn, METH_FASTCALL,
     "least_conn(zone, cfg, tried, now_s) -> position: nginx's least_conn pass"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_pickloop",
    .m_doc = "nginx's per-peer balancing loops over the zone words",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__pickloop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "CFG_HEADER", CFG_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "CFG_PEER", CFG_PEER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
