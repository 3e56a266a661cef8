/* Claimed-phase teams for the small-batch kernels: the work of each phase (one step, or the
 * input projection) is claimed item by item, so no thread ever waits inside a call for a thread
 * that has not started; and a caller-led pool whose calls never wait for one at all.
 *
 * Why: with fixed per-thread slices and a barrier per step (the kernels before this file), a
 * call cannot pass a step before every team thread has run it, so when another thread holds a
 * core the whole call waits for the scheduler at every step. Measured on the 2-core AMD EPYC
 * (benchmarks/peers.py, B=1 one step per call, 2 threads): FusedLSTM ran 44 / 111 / 623 us at
 * H 256 / 512 / 1024 with only nn.LSTM in the process and 93 / 221 / 1635 us with onnxruntime in
 * it (its intra-op threads spin between its calls), slower than at 1 thread; beside a busy
 * process 2 threads took 1.9-2.6x the 1-thread time. onnxruntime itself stays fast there: its
 * caller runs the work items no worker has started. These teams do the same.
 *
 * Claimed phases (team_phases, TEAM_PHASES):
 * - A phase's N items are split into n ranges (range r: items [N r / n, N (r + 1) / n), the slice
 *   thread r would own); each range has a claim counter that only grows: in phase p range r's
 *   claim values [p len_r, (p + 1) len_r) are its items. A thread drains its own range first (its
 *   slice of W stays in its cache from step to step when nobody is late), then the ranges of
 *   threads not yet in the call (the started bits); a thread still short of a phase's end after
 *   twice its last phase (plus ~10 us) takes every item left unclaimed (a preempted thread's).
 * - Items done are added to one counter once per pass (release); a phase ends when it reaches
 *   (p + 1) N (acquire; spin, then yield). A thread that starts late begins at the first phase not
 *   yet complete, so one that starts after the call's last phase does nothing.
 * - Which thread computes an item never changes its bits (each item's arithmetic is fixed), so
 *   results stay bitwise independent of the team size and of who ran what.
 * - Cost when nobody is late, against a plain barrier: ~0.05-0.1 us a step (measured at H 64
 *   T 200, 2 threads: 1.21 -> 1.28 us a step; H 256 T 35: 15.1 -> 15.7).
 *
 * The runners (team_run, as a team_policy says: the one whose threads were there in the last
 * calls): torch's OpenMP team (GOMP_parallel), whose join still waits once per call for every
 * thread to have started; or the pool:
 * - One pool per extension module: up to TEAM_MAX - 1 worker threads, created on first need.
 *   A caller takes the pool with a try-lock; a second concurrent caller (several Python threads
 *   serving requests) runs its call alone instead of waiting.
 * - A call: the caller publishes (fn, arg, team size n) under a new generation in one 64-bit job
 *   word (generation << 32 | open << 16 | joined), wakes sleeping workers, and runs fn(arg, 0).
 *   A worker joins by one CAS on that word while it is open and fewer than n - 1 have joined, and
 *   runs fn(arg, tid) with tid = its join order. The caller, its own fn done, closes the word (CAS)
 *   and waits only for the workers that joined.
 * - Workers spin TEAM_SPIN_NS on the job word after a call (consecutive calls find them awake),
 *   then yield, then sleep on a futex.
 * - fork(): the child has no workers; an atfork handler resets the pool.
 * Uses kernel_support.h's OpenMP entry points (include it first).
 * Test hooks: team_test_join_delay_us (pool workers wait this long before joining: a late
 * thread on demand), team_test_mode (force a runner). */
#ifndef LSTM_FAST_THREAD_TEAM_H
#define LSTM_FAST_THREAD_TEAM_H
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TEAM_MAX 64
#define TEAM_SPIN_NS 50000L       /* a worker's pause-spin after a call: ~2 step calls' worth */
#define TEAM_YIELD_NS 2000000L    /* then sched_yield between looks, then the futex */
#define TEAM_OPEN (1ull << 16)

static inline void team_pause(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

static inline int64_t team_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A cheap clock for the steal budget: the TSC on x86-64 (constant rate), else nanoseconds. */
static inline uint64_t team_ticks(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return (uint64_t)team_now_ns();
#endif
}

typedef struct { _Alignas(128) int64_t v; } team_counter;   /* 128: adjacent-line prefetch pairs lines */

/* The claimed phases of one call (see the header): set up by team_phases_init, then team_run. */
typedef struct {
    int n;                  /* ranges (the team size asked for) */
    int64_t items;          /* items per phase */
    int alone;              /* the caller runs every item itself: plain loops */
    team_counter started;   /* bit tid: thread tid is in the call (its range is its own) */
    team_counter done;      /* items done in all phases, by everyone */
    team_counter stolen;    /* items taken from another thread's range, this call */
    int64_t phases;         /* this call's phases (team_went_well's yardstick) */
    team_counter claim[TEAM_MAX];
} team_phases;

static void team_phases_init(team_phases *s, int n, int64_t items, int64_t phases) {
    s->n = n < 1 ? 1 : (n > TEAM_MAX ? TEAM_MAX : n);
    s->items = items;
    s->phases = phases;
    s->alone = 1;
    s->started.v = s->done.v = s->stolen.v = 0;
    for (int r = 0; r < s->n; ++r) s->claim[r].v = 0;
}

typedef struct {
    _Alignas(64) uint64_t word;   /* generation << 32 | open << 16 | joined */
    _Alignas(64) int left;        /* joined workers done with the current call */
    _Alignas(64) int wake;        /* futex word, bumped at every publish */
    int sleepers;
    void (*fn)(void *, int);
    void *arg;
    int busy;                     /* the callers' try-lock */
    int nworkers;
    pthread_t threads[TEAM_MAX];
} team_pool;

static team_pool g_team;
static int team_test_join_delay_us;
/* Counts for tests and benchmarks (relaxed; approximate under concurrent callers): calls run on
 * the pool, workers that joined them, items taken by a thread other than their range's, calls
 * run on OpenMP's team. */
static int64_t team_stat_calls, team_stat_joined, team_stat_stolen, team_stat_gomp_calls;

/* gen0: the generation before the call that created the worker, so that call is new to it even
 * when the worker first runs after its publish. */
static void *team_worker(void *gen0) {
    uint32_t seen = (uint32_t)(uintptr_t)gen0;
    for (;;) {
        uint64_t w = __atomic_load_n(&g_team.word, __ATOMIC_ACQUIRE);
        if ((uint32_t)(w >> 32) == seen) {   /* no new call: spin, then yield, then sleep */
            const int64_t t0 = team_now_ns();
            for (int64_t el = 0;; el = team_now_ns() - t0) {
                for (int i = 0; i < 64 && (uint32_t)(__atomic_load_n(&g_team.word, __ATOMIC_ACQUIRE) >> 32) == seen; ++i)
                    team_pause();
                if ((uint32_t)(__atomic_load_n(&g_team.word, __ATOMIC_ACQUIRE) >> 32) != seen) break;
                if (el > TEAM_SPIN_NS + TEAM_YIELD_NS) {
                    const int wk = __atomic_load_n(&g_team.wake, __ATOMIC_SEQ_CST);
                    __atomic_add_fetch(&g_team.sleepers, 1, __ATOMIC_SEQ_CST);
                    if ((uint32_t)(__atomic_load_n(&g_team.word, __ATOMIC_SEQ_CST) >> 32) == seen)
                        syscall(SYS_futex, &g_team.wake, FUTEX_WAIT_PRIVATE, wk, NULL, NULL, 0);
                    __atomic_sub_fetch(&g_team.sleepers, 1, __ATOMIC_SEQ_CST);
                } else if (el > TEAM_SPIN_NS) {
                    sched_yield();
                }
            }
            continue;
        }
        seen = (uint32_t)(w >> 32);
        if (team_test_join_delay_us > 0) usleep((useconds_t)team_test_join_delay_us);
        for (;;) {   /* join this call if it is still open and has room */
            w = __atomic_load_n(&g_team.word, __ATOMIC_ACQUIRE);
            if ((uint32_t)(w >> 32) != seen || !(w & TEAM_OPEN)) break;
            const int joined = (int)(w & 0xffff);
            const int room = (int)((w >> 17) & 0x7fff);   /* team size - 1 */
            if (joined >= room) break;
            if (__atomic_compare_exchange_n(&g_team.word, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                g_team.fn(g_team.arg, joined + 1);
                __atomic_add_fetch(&g_team.left, 1, __ATOMIC_RELEASE);
                break;
            }
        }
    }
    return NULL;
}

static void team_atfork_child(void) { memset(&g_team, 0, sizeof g_team); }
static pthread_once_t team_atfork_once = PTHREAD_ONCE_INIT;
static void team_register_atfork(void) { pthread_atfork(NULL, NULL, team_atfork_child); }

/* Whether the runner had its threads there (read by the caller right after its own fn): every
 * thread had started by then, and at most 1% of the call's items were taken from another's
 * range (a worker that started but lost its core mid-call has its items stolen: measured at
 * B 1 T 1000 H 256 under autocast, where torch's casts leave OpenMP's threads spinning, 2.4% of
 * the items stolen a call on the pool, at 1.7x OpenMP's time; without autocast, 0.4%). */
static inline int team_went_well(const team_phases *s) {
    const uint64_t want = s->n >= 64 ? ~0ull : (1ull << s->n) - 1;
    return ((uint64_t)__atomic_load_n(&s->started.v, __ATOMIC_RELAXED) & want) == want
           && __atomic_load_n(&s->stolen.v, __ATOMIC_RELAXED) * 100 <= s->items * s->phases;
}

/* The pool's call: fn(arg, tid) on the caller (tid 0) and whichever workers join. -1: the pool
 * is taken by another caller (nothing run); else team_went_well. */
static int team_run_pool(void (*fn)(void *, int), void *arg, team_phases *s) {
    const int n = s->n;
    pthread_once(&team_atfork_once, team_register_atfork);   /* before busy: a fork never sees it taken */
    if (__atomic_exchange_n(&g_team.busy, 1, __ATOMIC_ACQUIRE)) return -1;
    while (g_team.nworkers < n - 1) {
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 1 << 20);
        const uint32_t gen0 = (uint32_t)(__atomic_load_n(&g_team.word, __ATOMIC_RELAXED) >> 32);
        int rc = pthread_create(&g_team.threads[g_team.nworkers], &at, team_worker, (void *)(uintptr_t)gen0);
        pthread_attr_destroy(&at);
        if (rc) break;   /* fewer workers: the caller does more */
        ++g_team.nworkers;
    }
    g_team.fn = fn;
    g_team.arg = arg;
    __atomic_store_n(&g_team.left, 0, __ATOMIC_RELAXED);
    const uint64_t gen = (__atomic_load_n(&g_team.word, __ATOMIC_RELAXED) >> 32) + 1;
    __atomic_store_n(&g_team.word, (gen << 32) | ((uint64_t)(n - 1) << 17) | TEAM_OPEN, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&g_team.wake, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&g_team.sleepers, __ATOMIC_SEQ_CST) > 0)
        syscall(SYS_futex, &g_team.wake, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    fn(arg, 0);
    const int full = team_went_well(s);
    uint64_t w = __atomic_load_n(&g_team.word, __ATOMIC_ACQUIRE);
    while (!__atomic_compare_exchange_n(&g_team.word, &w, w & ~TEAM_OPEN, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
    const int joined = (int)(w & 0xffff);
    __atomic_add_fetch(&team_stat_calls, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&team_stat_joined, joined, __ATOMIC_RELAXED);
    for (int spins = 0; __atomic_load_n(&g_team.left, __ATOMIC_ACQUIRE) < joined; ++spins) {
        if (spins < 4000) team_pause();
        else sched_yield();
    }
    __atomic_store_n(&g_team.busy, 0, __ATOMIC_RELEASE);
    return full;
}

/* torch's OpenMP team (kernel_support.h's GOMP_parallel): its threads are the ones spinning
 * after torch's own parallel ops, so a call between them finds its team awake; but its join waits
 * for every team thread to have run, even one the scheduler has not started. */
typedef struct { void (*fn)(void *, int); void *arg; const team_phases *s; int full; } team_gomp_call;
static void team_gomp_body(void *c) {
    team_gomp_call *g = (team_gomp_call *)c;
    const int tid = p_thread_num();
    g->fn(g->arg, tid);
    if (tid == 0) g->full = team_went_well(g->s);
}
/* -1: no OpenMP runtime found (nothing run); else team_went_well. */
static int team_run_gomp(void (*fn)(void *, int), void *arg, team_phases *s) {
    if (!p_parallel) return -1;   /* resolve_gomp ran before, under the GIL (launch_team) */
    team_gomp_call g = {fn, arg, s, 0};
    __atomic_add_fetch(&team_stat_gomp_calls, 1, __ATOMIC_RELAXED);
    p_parallel(team_gomp_body, &g, (unsigned)s->n, 0);
    return g.full;
}

/* Which team runs a call: the one whose threads were there. Each runner has its failure: the
 * pool's workers lose their core to torch's OpenMP threads, which spin ~8 ms after every torch
 * parallel op (measured on the AMD EPYC: a training loop at B 1 T 35 H 256 took 1.37x longer on
 * the pool, its worker joining 191 of 660 calls); OpenMP's join waits for a thread the scheduler
 * has not run (one step per call at H 256 beside a busy process: 183.7 us against the pool's
 * 56.7, quiet ~40). So a kernel kind keeps a team_policy: on OpenMP's team while its calls go
 * well (team_went_well: torch's spinning threads are there at once); after one that does not, on
 * the pool, trying OpenMP's team again after `backoff` pool calls in a row that did not go well
 * either. backoff doubles (up to TEAM_BACKOFF_MAX) at every OpenMP call that goes badly and is
 * back at TEAM_BACKOFF_MIN after TEAM_TRUSTED in a row went well: beside a busy process both
 * runners are late, OpenMP's team now and then on time, and the pool's lateness costs least.
 * Comparing the runners' times instead was tried and lost to both: each OpenMP call leaves its
 * threads spinning on the pool's cores for the next 8 ms, so the pool always looked slow. Both
 * runners give the same bits.
 * team_test_mode: tests force one (0: the policy, else 1 + TEAM_POOL or TEAM_OPENMP). */
enum { TEAM_POOL = 0, TEAM_OPENMP = 1 };
#define TEAM_BACKOFF_MIN 4
#define TEAM_BACKOFF_MAX 1024
typedef struct { int runner, late, good, backoff, fixed; } team_policy;   /* relaxed: racing callers only blur it */
#define TEAM_POLICY(runner, fixed) {runner, 0, 0, TEAM_BACKOFF_MIN, fixed}   /* fixed: always runner */
#define TEAM_TRUSTED 1024   /* calls in a row on OpenMP's team going well: its lateness was a passing one */
/* (TEAM_BACKOFF_MAX and TEAM_TRUSTED at 256 and 64: one step per call at H 256 beside a busy
 * process took 78.4 us, at 1024 and 1024 66.8, the pool alone 62.5; with onnxruntime in the
 * process 62.8, 50.9, 55.0: measured interleaved in one process on the AMD EPYC.) */
static int team_test_mode;
static int64_t team_stat_switches;

static void team_run(void (*fn)(void *, int), void *arg, team_phases *s, team_policy *pol) {
    s->alone = 0;
    if (s->n > 1) {
        team_policy p;
        p.runner = __atomic_load_n(&pol->runner, __ATOMIC_RELAXED);
        p.late = __atomic_load_n(&pol->late, __ATOMIC_RELAXED);
        p.good = __atomic_load_n(&pol->good, __ATOMIC_RELAXED);
        p.backoff = __atomic_load_n(&pol->backoff, __ATOMIC_RELAXED);
        if (p.backoff < TEAM_BACKOFF_MIN) p.backoff = TEAM_BACKOFF_MIN;
        const int trial = p.runner == TEAM_POOL && p.late >= p.backoff;   /* OpenMP's team again */
        const int use = team_test_mode ? team_test_mode - 1 : trial ? TEAM_OPENMP : p.runner;
        int well = use == TEAM_POOL ? team_run_pool(fn, arg, s) : team_run_gomp(fn, arg, s);
        if (well < 0 && use == TEAM_OPENMP) {   /* no OpenMP runtime found: the pool, for good */
            well = team_run_pool(fn, arg, s);
            if (!team_test_mode) {
                __atomic_store_n(&pol->runner, TEAM_POOL, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->late, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->backoff, INT_MAX, __ATOMIC_RELAXED);
            }
            if (well >= 0) return;
        } else if (well >= 0) {
            if (!team_test_mode && !pol->fixed) {
                const int was = p.runner;
                if (use == TEAM_OPENMP) {
                    if (well) {
                        p.runner = TEAM_OPENMP, p.late = 0;
                        if (++p.good >= TEAM_TRUSTED) p.good = 0, p.backoff = TEAM_BACKOFF_MIN;
                    } else {   /* late on OpenMP's team (a trial or a run): the pool, longer before the next try */
                        p.runner = TEAM_POOL, p.late = 0, p.good = 0;
                        if (p.backoff < TEAM_BACKOFF_MAX) p.backoff *= 2;
                    }
                } else {
                    p.late = well ? 0 : p.late + 1;
                }
                if (p.runner != was) __atomic_add_fetch(&team_stat_switches, 1, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->runner, p.runner, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->late, p.late, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->good, p.good, __ATOMIC_RELAXED);
                __atomic_store_n(&pol->backoff, p.backoff, __ATOMIC_RELAXED);
            }
            return;
        }
    }
    s->alone = 1;   /* one thread, or the pool taken by another caller */
    fn(arg, 0);
}

/* ---------------------------------------------------------------- claimed phases */
/* Blocks per claimed item for nb blocks on n threads: about TEAM_ITEMS_PER_THREAD items each.
 * A claim is a locked instruction, which waits for the item's stores before it to drain: per
 * block it cost ~10% at H 256 (measured, 2 threads on the AMD EPYC: 14.2 -> 15.7 us a step). */
#define TEAM_ITEMS_PER_THREAD 4

/* Threads for a call: the requested count, at least 1, at most one per unit of work (blocks). */
static inline int team_size(int requested, int64_t blocks) {
    return requested < 1 ? 1 : (requested > blocks ? (int)(blocks < 1 ? 1 : blocks) : requested);
}
static inline int64_t team_item_group(int64_t nb, int n) {
    const int64_t per = (int64_t)(n < 1 ? 1 : n) * TEAM_ITEMS_PER_THREAD;
    return nb > per ? (nb + per - 1) / per : 1;
}

static inline int64_t team_range_lo(const team_phases *s, int r) { return s->items * r / s->n; }

/* The next item of phase p for thread tid, or -1. Its own range first, then the ranges of team
 * slots no worker has joined (yet), then, with steal, any range. Which ranges are looked at only
 * changes who computes an item: the claim counters make every item taken exactly once. */
static inline int64_t team_claim(team_phases *s, int tid, int64_t p, int steal) {
    const uint64_t started = (uint64_t)__atomic_load_n(&s->started.v, __ATOMIC_RELAXED);
    for (int k = 0; k < s->n; ++k) {
        const int r = (tid + k) % s->n;
        if (k > 0 && !steal && (started >> r & 1)) continue;   /* tid r is in the call: its range is its own */
        const int64_t lo = team_range_lo(s, r), len = team_range_lo(s, r + 1) - lo;
        int64_t c = __atomic_load_n(&s->claim[r].v, __ATOMIC_RELAXED);
        while (c < (p + 1) * len)
            if (__atomic_compare_exchange_n(&s->claim[r].v, &c, c + 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                if (r != tid) {
                    __atomic_add_fetch(&s->stolen.v, 1, __ATOMIC_RELAXED);
                    __atomic_add_fetch(&team_stat_stolen, 1, __ATOMIC_RELAXED);
                }
                return lo + (c - p * len);
            }
    }
    return -1;
}

/* n more items of this thread are done: their stores are visible to whoever sees the count.
 * Added once per pass over the claims, not per item, and into one counter: with 2 threads that
 * is fewer cache-line transfers a phase than a counter per thread which the others poll (measured
 * at H 64, 2 threads: per-item publishing cost 15 -> 18 us a step at H 256; a counter per thread
 * ~0.1 us a step more than one shared one at H 64). */
static inline void team_items_done(team_phases *s, int64_t n) {
    if (n) __atomic_add_fetch(&s->done.v, n, __ATOMIC_RELEASE);
}

static inline int64_t team_done_sum(team_phases *s) { return __atomic_load_n(&s->done.v, __ATOMIC_ACQUIRE); }

#define TEAM_STEAL_SLACK 30000   /* ticks (~10 us at 3 GHz) on top of twice the thread's own pass */

/* Wait until every item of phases 0..p is done, pausing for up to budget ticks. Then: with
 * give_up, return 0 (the caller steals what is left unclaimed, and waits again); else yield
 * between looks until done. The budget is twice the waiter's last phase (its pass and its wait,
 * one clock read a phase) plus some slack: a thread at work ends its range well within it, a
 * preempted one (gone for milliseconds) does not.
 * (Measured at H 256 T 35, 2 threads: with a fixed ~8 us budget the threads' ordinary imbalance
 * set off stealing, and sched_yield after it, every few steps: 14.7 -> 17.5 us a step.) */
static inline int team_phase_wait(team_phases *s, int64_t p, uint64_t budget, int give_up) {
    const int64_t want = (p + 1) * s->items;
    const uint64_t t0 = team_ticks();
    int patient = 1;
    for (int spins = 0; team_done_sum(s) < want; ++spins) {
        if (patient && (spins & 15) == 15 && team_ticks() - t0 > budget) {
            if (give_up) return 0;
            patient = 0;
        }
        if (patient) team_pause();
        else sched_yield();
    }
    return 1;
}

/* The first phase not yet known to be complete: where a late thread starts. */
static inline int64_t team_first_open_phase(team_phases *s) {
    return s->items > 0 ? team_done_sum(s) / s->items : 0;
}

/* A thread's whole call: phases first_open .. phases-1, each: its items, then wait (stealing
 * once what a stalled thread left unclaimed), so every phase is complete when this returns; alone
 * (no pool), plain loops. ITEM(p, i): the body for item i of phase p. (Measured at H 64 T 200,
 * 2 threads: the claims, waits and clock reads cost ~0.05 us a step over a plain barrier.) */
#define TEAM_PHASES(s, tid, phases, ITEM)                                                           \
    if ((s)->alone) { /* nothing to claim from or wait for */                                  \
        for (int64_t p_ = 0; p_ < (phases); ++p_)                                                  \
            for (int64_t i_ = 0; i_ < (s)->items; ++i_) ITEM(p_, i_);                              \
    } else {                                                                                       \
        __atomic_or_fetch(&(s)->started.v, (int64_t)((uint64_t)1 << (tid)), __ATOMIC_RELAXED);     \
        uint64_t last_ = team_ticks(); /* the end of this thread's previous pass */                \
        for (int64_t p_ = team_first_open_phase(s); p_ < (phases); ++p_) {                         \
            for (int steal_ = 0;; steal_ = 1) {                                                    \
                int64_t n_ = 0;                                                                    \
                for (int64_t i_; (i_ = team_claim(s, tid, p_, steal_)) >= 0; ++n_) ITEM(p_, i_);   \
                team_items_done(s, n_);                                                            \
                const uint64_t now_ = team_ticks();                                                \
                const uint64_t budget_ = 2 * (now_ - last_) + TEAM_STEAL_SLACK;                    \
                last_ = now_;                                                                      \
                if (team_phase_wait(s, p_, budget_, !steal_)) break;                               \
            }                                                                                      \
        }                                                                                          \
    }

/* ---------------------------------------------------------------- the modules' Python side */
/* (every small-batch kernel module on these teams: small_batch_kernels.c, small_batch_avx2_kernels.c;
 * include Python.h first) */
/* The recurrences on a claimed-phase team (thread_team.h), the GIL released. Inference calls
 * follow the runner policy, starting on the pool (serving and generation loops have no torch
 * parallel op between their calls). Training calls (a forward that saves, every backward) always
 * run on torch's OpenMP team: the loop's own torch ops keep it spinning, and the policy, judging
 * by stolen items, moved them to the pool often enough to cost 1.16x (B 1 T 35 H 256, measured
 * on the AMD EPYC). */
static team_policy infer_policy = TEAM_POLICY(TEAM_POOL, 0), train_policy = TEAM_POLICY(TEAM_OPENMP, 1);
static void launch_team(void (*fn)(void *, int), void *arg, team_phases *ph, team_policy *pol) {
    resolve_gomp();   /* under the GIL: its lookup is not thread-safe */
    Py_BEGIN_ALLOW_THREADS
    team_run(fn, arg, ph, pol);
    Py_END_ALLOW_THREADS
}

/* Tests: pool workers wait this many microseconds before joining a call (a late thread). */
static PyObject *py_set_join_delay_us(PyObject *self, PyObject *arg) {
    long us = PyLong_AsLong(arg);
    if (us == -1 && PyErr_Occurred()) return NULL;
    team_test_join_delay_us = us < 0 ? 0 : (int)us;
    Py_RETURN_NONE;
}

/* Tests: which team the recurrences run on: 0 the runner policy (default), 1 the pool, 2 OpenMP's;
 * the inference policy starts over. */
static PyObject *py_set_team_mode(PyObject *self, PyObject *arg) {
    long m = PyLong_AsLong(arg);
    if (m == -1 && PyErr_Occurred()) return NULL;
    if (m < 0 || m > 2) { PyErr_SetString(PyExc_ValueError, "team mode must be 0, 1 or 2"); return NULL; }
    team_test_mode = (int)m;
    const team_policy fresh = TEAM_POLICY(TEAM_POOL, 0);
    infer_policy = fresh;   /* and the inference policy starts over */
    Py_RETURN_NONE;
}

/* Tests and benchmarks: counts since the module loaded (thread_team.h). */
static PyObject *py_team_stats(PyObject *self, PyObject *unused) {
    return Py_BuildValue("{sLsLsLsLsL}", "pool_calls", (long long)__atomic_load_n(&team_stat_calls, __ATOMIC_RELAXED),
                         "switches", (long long)__atomic_load_n(&team_stat_switches, __ATOMIC_RELAXED),
                         "joined", (long long)__atomic_load_n(&team_stat_joined, __ATOMIC_RELAXED),
                         "stolen", (long long)__atomic_load_n(&team_stat_stolen, __ATOMIC_RELAXED),
                         "openmp_calls", (long long)__atomic_load_n(&team_stat_gomp_calls, __ATOMIC_RELAXED));
}

/* The test hooks above as PyMethodDef entries. */
#define TEAM_TEST_METHODS                                                                            \
    {"_team_stats", py_team_stats, METH_NOARGS, "pool calls, runner switches, workers joined, items stolen, OpenMP calls so far"}, \
    {"_set_team_mode", py_set_team_mode, METH_O, "tests: 0 the runner policy, 1 the pool, 2 OpenMP's team"}, \
    {"_set_join_delay_us", py_set_join_delay_us, METH_O,                                             \
     "tests: team workers wait this long before joining a forward or backward call"},

#endif
