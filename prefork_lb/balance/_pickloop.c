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
 *   cfg   a bytes object built once per peer list at config load (``table.native_cfg``):
 *           header  CFG_HEADER int64: n, limit (max base + PEER_WORDS: every word touched
 *                   is below it), the word offsets P_CW, P_EW, P_CONNS, P_FAILS, P_CHECKED,
 *                   P_SLOW_START_MS (from zone/layout.py: the layout is defined in one place),
 *                   then P_HC_STATE, or -1 when the list's upstream is not actively checked
 *                   (a checked peer whose health word is not 0 is out, as in Peer.usable)
 *           hot     n records of 4 int32, read on every pass: base, weight, max_conns,
 *                   max_fails, where a down peer has weight 0 (a real weight is >= 1)
 *           cold    n records of 2 int64, read only when needed: fail_timeout_s, slow_start_ms
 *         Peers' zone records are PEER_WORDS (576 bytes) apart, so a pass over a large list
 *         touches one cache line per peer there; the hot records keep the configuration to a
 *         quarter line per peer, and the loops prefetch the zone lines a few peers ahead.
 *   tried the request's tried bitmap over positions (a Python int, usually 0)
 *
 * Returns the chosen position, or -1 when no position is usable.
 *
 * Also the zone lock (zone/zone.py): a futex word in the zone's header, see "zone lock" below.
 */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CFG_HEADER 9 /* int64 words */
#define PREFETCH 8   /* peers ahead */

enum { H_N, H_LIMIT, H_CW, H_EW, H_CONNS, H_FAILS, H_CHECKED, H_SLOW, H_HC };

typedef struct {
    int32_t base, weight, max_conns, max_fails; /* weight 0: down */
} Hot;

typedef struct {
    int64_t fail_timeout_s, slow_start_ms;
} Cold;

typedef struct {
    Py_buffer zone;
    Py_buffer cfg;
    int64_t *z;
    const int64_t *h; /* cfg header */
    const Hot *hot;
    const Cold *cold;
    Py_ssize_t n;
    PyObject *tried_bytes; /* little-endian bytes of a non-zero tried bitmap, else NULL */
    const unsigned char *tried;
} Pass;

static void pass_release(Pass *p) {
    Py_XDECREF(p->tried_bytes);
    if (p->cfg.obj) PyBuffer_Release(&p->cfg);
    if (p->zone.obj) PyBuffer_Release(&p->zone);
}

/* Acquire the buffers and check that every word the pass can touch lies inside the zone
 * (cfg comes from table.native_cfg: bases >= 0 and below the header's limit). */
static int pass_open(Pass *p, PyObject *zone, PyObject *cfg, PyObject *tried) {
    memset(p, 0, sizeof(*p));
    if (PyObject_GetBuffer(zone, &p->zone, PyBUF_WRITABLE) < 0) return -1;
    if (PyObject_GetBuffer(cfg, &p->cfg, PyBUF_SIMPLE) < 0) goto fail;
    if (p->cfg.len < (Py_ssize_t)(CFG_HEADER * 8) || p->cfg.len % 8) goto bad_cfg;
    p->h = (const int64_t *)p->cfg.buf;
    p->n = (Py_ssize_t)p->h[H_N];
    if (p->n < 0 || p->n > (1 << 24) ||
        (Py_ssize_t)(CFG_HEADER * 8 + p->n * (sizeof(Hot) + sizeof(Cold))) != p->cfg.len)
        goto bad_cfg;
    p->hot = (const Hot *)(p->h + CFG_HEADER);
    p->cold = (const Cold *)(p->hot + p->n);
    for (int f = H_CW; f <= H_SLOW; f++)
        if (p->h[f] < 0 || p->h[f] >= 128) goto bad_cfg; /* offsets inside a peer record */
    if (p->h[H_HC] < -1 || p->h[H_HC] >= 128) goto bad_cfg;
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
        PyObject *bits = PyObject_CallMethod(tried, "bit_length", NULL);
        if (bits == NULL) goto fail;
        Py_ssize_t nbits = PyLong_AsSsize_t(bits);
        Py_DECREF(bits);
        if (nbits < 0) goto fail; /* an error (bit_length is never negative) */
        Py_ssize_t nbytes = (nbits + 7) / 8; /* bits past n are never read */
        if (nbytes < (p->n + 7) / 8) nbytes = (p->n + 7) / 8;
        p->tried_bytes = PyObject_CallMethod(tried, "to_bytes", "ns", nbytes, "little");
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

/* Start loading the zone line of position i + PREFETCH (the loops walk positions in order). */
static inline void prefetch_ahead(const Pass *p, Py_ssize_t i) {
    if (i + PREFETCH < p->n) __builtin_prefetch(p->z + p->hot[i + PREFETCH].base + p->h[H_CW], 1, 0);
}

/* nginx's peer filter (Peer.usable) plus the tried bit, for position i. */
static inline int usable(const Pass *p, Py_ssize_t i, int64_t now_s) {
    const int64_t *z = p->z, *h = p->h;
    const Hot *r = &p->hot[i];
    int64_t b = r->base;
    if (!r->weight || tried_bit(p, i)) return 0; /* down, tried */
    if (h[H_HC] >= 0 && z[b + h[H_HC]]) return 0; /* actively checked: checking, unhealthy */
    if (r->max_fails && z[b + h[H_FAILS]] >= r->max_fails &&
        now_s - z[b + h[H_CHECKED]] <= p->cold[i].fail_timeout_s)
        return 0;
    if (r->max_conns && z[b + h[H_CONNS]] >= r->max_conns) return 0;
    return 1;
}

/* Python's floor division for a positive divisor. */
static inline int64_t floordiv(int64_t a, int64_t d) {
    int64_t q = a / d;
    return (a % d != 0 && a < 0) ? q - 1 : q;
}

/* Peer.weight_pct: slow_start's scale in percent; ends the ramp (word := 0) at 100. */
static inline int64_t weight_pct(const Pass *p, Py_ssize_t i, int64_t now_ms) {
    int64_t *t0 = p->z + p->hot[i].base + p->h[H_SLOW];
    int64_t slow_ms = p->cold[i].slow_start_ms;
    if (!*t0 || !slow_ms) return 100;
    int64_t pct = floordiv((now_ms - *t0) * 100, slow_ms);
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
        prefetch_ahead(&p, i);
        if (!usable(&p, i, now_s)) continue;
        int64_t b = p.hot[i].base;
        int64_t ew = z[b + ew_];
        int64_t w = scaled ? ew * weight_pct(&p, i, now_ms) : ew;
        int64_t cw = z[b + cw_] + w;
        z[b + cw_] = cw;
        total += w;
        if (ew < p.hot[i].weight) z[b + ew_] = ew + 1;
        if (best < 0 || cw > best_cw) {
            best = i;
            best_cw = cw;
        }
    }
    if (best >= 0) z[p.hot[best].base + cw_] = best_cw - total;
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
        prefetch_ahead(&p, i);
        if (!usable(&p, i, now_s)) continue;
        int64_t conns = z[p.hot[i].base + conns_], weight = p.hot[i].weight;
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
            prefetch_ahead(&p, i);
            if (!usable(&p, i, now_s)) continue;
            int64_t b = p.hot[i].base, weight = p.hot[i].weight;
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
        z[p.hot[best].base + cw_] = top_cw - total;
    }
    pass_release(&p);
    return PyLong_FromSsize_t(best);
}

/* ---- zone lock ----------------------------------------------------------------------------
 * One 32-bit word in the shared mapping: 0 when free, else the holder's pid, plus LK_WAITERS
 * once another process sleeps on it (Drepper's "mutex 2" over FUTEX_WAIT/FUTEX_WAKE, not
 * private: the word is shared by processes). Uncontended, lock and unlock are one atomic
 * instruction each and no syscall (flock: two syscalls per lock/unlock pair).
 * A holder killed inside its critical section: a waiter sleeps at most LK_CHECK_NS at a
 * time and then looks at the holder; gone or a zombie (the master may be the waiter, with
 * the child not reaped yet), it takes the lock over (lock() returns True). The master also
 * breaks a dead worker's hold when it reaps it (break_lock).
 * The pid is cached (getpid() is a syscall on this glibc) and refreshed in a forked child. */
#define LK_WAITERS 0x40000000u
#define LK_PID 0x3fffffffu
#define LK_SPINS 64
#define LK_CHECK_NS 10000000L

static uint32_t lk_pid;

static void lk_atfork_child(void) { lk_pid = (uint32_t)getpid() & LK_PID; }

static uint32_t *lk_word(PyObject *addr) {
    uint32_t *w = (uint32_t *)PyLong_AsVoidPtr(addr);
    if (w == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null lock address");
    return w;
}

static int lk_alive(uint32_t pid) {
    char path[40], buf[512];
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno != ENOENT;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') return 1;
    return p[2] != 'Z' && p[2] != 'X';
}

static PyObject *lk_lock_slow(uint32_t *w, uint32_t me) {
    uint32_t flag = 0; /* once we slept, take it with LK_WAITERS: others may still sleep */
    for (int i = 0;; i++) {
        uint32_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (v == 0) {
            if (__atomic_compare_exchange_n(w, &v, me | flag, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                Py_RETURN_FALSE;
            continue;
        }
        if (i < LK_SPINS) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__)
            __asm__ __volatile__("yield");
#endif
            continue;
        }
        if (!(v & LK_WAITERS)) {
            if (!__atomic_compare_exchange_n(w, &v, v | LK_WAITERS, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                continue;
            v |= LK_WAITERS;
        }
        flag = LK_WAITERS;
        struct timespec ts = {0, LK_CHECK_NS};
        long r;
        Py_BEGIN_ALLOW_THREADS
        r = syscall(SYS_futex, w, FUTEX_WAIT, v, &ts, NULL, 0);
        Py_END_ALLOW_THREADS
        if (r == -1 && errno == EINTR && PyErr_CheckSignals() < 0) return NULL; /* as flock */
        if (r == -1 && errno == ETIMEDOUT && !lk_alive(v & LK_PID)) {
            if (__atomic_compare_exchange_n(w, &v, me | LK_WAITERS, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                Py_RETURN_TRUE;
        }
    }
}

static PyObject *pl_zone_lock(PyObject *self, PyObject *addr) {
    uint32_t *w = lk_word(addr);
    if (w == NULL) return NULL;
    uint32_t expect = 0;
    if (__atomic_compare_exchange_n(w, &expect, lk_pid, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        Py_RETURN_FALSE;
    return lk_lock_slow(w, lk_pid);
}

static PyObject *pl_zone_unlock(PyObject *self, PyObject *addr) {
    uint32_t *w = lk_word(addr);
    if (w == NULL) return NULL;
    if (__atomic_exchange_n(w, 0, __ATOMIC_RELEASE) & LK_WAITERS)
        syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
    Py_RETURN_NONE;
}

static PyObject *pl_zone_break(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "break_lock(address, pid)");
        return NULL;
    }
    uint32_t *w = lk_word(args[0]);
    if (w == NULL) return NULL;
    long pid = PyLong_AsLong(args[1]);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    uint32_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
    if (pid <= 0 || (v & LK_PID) != ((uint32_t)pid & LK_PID)) Py_RETURN_FALSE;
    if (!__atomic_compare_exchange_n(w, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) Py_RETURN_FALSE;
    if (v & LK_WAITERS) syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
    Py_RETURN_TRUE;
}

static PyObject *pl_lock_address(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lock_address(buffer, byte_offset)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) return NULL;
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    PyObject *res = NULL;
    if (off == -1 && PyErr_Occurred()) {
    } else if (off < 0 || off % 8 || off + 8 > view.len) {
        PyErr_SetString(PyExc_ValueError, "lock word outside the buffer or unaligned");
    } else {
        res = PyLong_FromVoidPtr((char *)view.buf + off);
    }
    PyBuffer_Release(&view);
    return res;
}

static PyMethodDef methods[] = {
    {"smooth", (PyCFunction)(void (*)(void))pl_smooth, METH_FASTCALL,
     "smooth(zone, cfg, tried, now_s, now_ms, scaled) -> position: nginx's smooth WRR pass"},
    {"least_conn", (PyCFunction)(void (*)(void))pl_least_conn, METH_FASTCALL,
     "least_conn(zone, cfg, tried, now_s) -> position: nginx's least_conn pass"},
    {"lock_address", (PyCFunction)(void (*)(void))pl_lock_address, METH_FASTCALL,
     "lock_address(buffer, byte_offset) -> address of the zone lock word (the mapping must outlive it)"},
    {"zone_lock", pl_zone_lock, METH_O,
     "zone_lock(address) -> True if a dead holder's lock was taken over"},
    {"zone_unlock", pl_zone_unlock, METH_O, "zone_unlock(address)"},
    {"break_lock", (PyCFunction)(void (*)(void))pl_zone_break, METH_FASTCALL,
     "break_lock(address, pid) -> True if pid held the lock and it was released"},
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
    lk_atfork_child();
    if (pthread_atfork(NULL, NULL, lk_atfork_child) != 0) {
        Py_DECREF(m);
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "CFG_HEADER", CFG_HEADER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
