/* The hidden-split step protocols (kernels/grid_sync.py) as a model with real threads and C11
 * atomics, for tests/test_step_protocol_model.py.
 *
 * Shape legend: N programs (threads), W words per program slice, S steps; slot = step % 2 of the
 * two-slot exchange ring; a word is 64 bits: payload low 32, step tag high 32.
 *
 * Each thread is one program. Step t: wait until it holds all N slices of step t, check every
 * payload it consumed, then publish its own slice of step t+1. The payload of word j of program p
 * at step t is a hash of (p, j, t), so a stale word (an older step), a torn one (halves of two
 * steps) or one of another program shows up as a mismatch.
 *
 *   ll       every word stored with one relaxed 64-bit store (payload | tag << 32), as the GPU's
 *            plain st.global.b64; the reader polls each word with relaxed loads until its tag is
 *            t (the GPU's ld.volatile), never an atomic read-modify-write; ring of two slots.
 *   counter  data words stored relaxed, then a release fetch_add on one counter; the reader
 *            spins with acquire loads until the counter reaches (t+1)*N, then reads the data.
 *   broken   ll, but the reader checks only the first word's tag of each slice (a flag without a
 *            fence): must be caught; shows the check can fail.
 *
 * Random delays (spins and yields, per thread xorshift) between the stores of a slice and between
 * steps make readers see half-published slices and slow neighbours. Every wait is bounded
 * (max_spins polls); a missing program (--missing P: thread P never publishes after step
 * --stop) must end every waiter in the timeout error, not a hang.
 *
 * Exit: 0 all steps consumed correct data; 2 a stale/torn/foreign word was consumed; 3 a wait
 * timed out (the error flag); 1 bad arguments.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

enum { LL, COUNTER, BROKEN };

static int n_prog, n_words, protocol, missing = -1;
static long n_steps, max_spins, stop_step;
static _Atomic uint64_t *ring;          /* [2][n_prog * n_words] tagged words (ll) or payloads (counter) */
static _Atomic long counter;            /* counter protocol: arrivals */
static _Atomic int err_flag;            /* a wait timed out */
static _Atomic int bad_flag;            /* a wrong word was consumed */
static _Atomic int go;
static uint64_t seed;

static uint32_t payload(int p, int j, long t) {
    uint64_t x = ((uint64_t)p * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)j << 32) ^ (uint64_t)t * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 31; x *= 0x94D049BB133111EBull; x ^= x >> 29;
    return (uint32_t)x;
}

static uint64_t xorshift(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static void delay(uint64_t *rng) {
    uint64_t r = xorshift(rng);
    if ((r & 63) == 0) sched_yield();                    /* now and then lose the CPU */
    for (volatile unsigned i = 0; i < (r >> 58); i++) {}  /* 0-63 idle iterations */
}

static _Atomic uint64_t *word(int slot, int p, int j) { return &ring[((size_t)slot * n_prog + p) * n_words + j]; }

/* Wait for all slices of step t; 0 ok, -1 timed out. Checks every consumed payload. */
static int wait_and_check(long t, uint64_t *rng) {
    int slot = (int)(t % 2);
    if (protocol == COUNTER) {
        long spins = 0;
        while (atomic_load_explicit(&counter, memory_order_acquire) < t * n_prog) {
            if (++spins > max_spins || atomic_load_explicit(&err_flag, memory_order_relaxed)) return -1;
            if ((spins & 255) == 0) sched_yield();
        }
    }
    for (int p = 0; p < n_prog; p++) {
        for (int j = 0; j < n_words; j++) {
            uint64_t w = atomic_load_explicit(word(slot, p, j), memory_order_relaxed);
            if (protocol != COUNTER && (protocol == LL || j == 0)) {
                long spins = 0;
                while ((uint32_t)(w >> 32) != (uint32_t)t) {
                    if (++spins > max_spins || atomic_load_explicit(&err_flag, memory_order_relaxed)) return -1;
                    if ((spins & 255) == 0) sched_yield();
                    w = atomic_load_explicit(word(slot, p, j), memory_order_relaxed);
                }
            }
            if ((uint32_t)w != payload(p, j, t) || (protocol != COUNTER && (uint32_t)(w >> 32) != (uint32_t)t))
                atomic_store(&bad_flag, 1);
        }
        if ((xorshift(rng) & 7) == 0) delay(rng);
    }
    return 0;
}

static void publish(int p, long t, uint64_t *rng) {
    int slot = (int)(t % 2);
    for (int j = 0; j < n_words; j++) {
        uint64_t w = (uint64_t)payload(p, j, t) | (protocol == COUNTER ? 0 : (uint64_t)(uint32_t)t << 32);
        atomic_store_explicit(word(slot, p, j), w, memory_order_relaxed);
        if ((xorshift(rng) & 3) == 0) delay(rng);         /* readers see half-published slices */
    }
    if (protocol == COUNTER) atomic_fetch_add_explicit(&counter, 1, memory_order_release);
}

static void *program(void *arg) {
    int p = (int)(intptr_t)arg;
    uint64_t rng = (0x2545F4914F6CDD1Dull ^ seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)p << 17) | 1;
    while (!atomic_load(&go)) sched_yield();
    for (long t = 0; t < n_steps; t++) {       /* step t consumes step t's slices, publishes t+1 */
        if (wait_and_check(t, &rng)) { atomic_store(&err_flag, 1); return NULL; }
        if (atomic_load_explicit(&bad_flag, memory_order_relaxed)) return NULL;
        if (p == missing && t >= stop_step) return NULL;            /* this program dies */
        if ((xorshift(&rng) & 15) == 0) delay(&rng);
        publish(p, t + 1, &rng);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s ll|counter|broken N W STEPS MAX_SPINS SEED [MISSING STOP]\n", argv[0]);
        return 1;
    }
    protocol = !strcmp(argv[1], "ll") ? LL : !strcmp(argv[1], "counter") ? COUNTER : !strcmp(argv[1], "broken") ? BROKEN : -1;
    n_prog = atoi(argv[2]); n_words = atoi(argv[3]); n_steps = atol(argv[4]); max_spins = atol(argv[5]);
    seed = (uint64_t)atoll(argv[6]);
    if (argc >= 9) { missing = atoi(argv[7]); stop_step = atol(argv[8]); }
    if (protocol < 0 || n_prog < 1 || n_words < 1 || n_steps < 1 || max_spins < 1) return 1;
    ring = calloc((size_t)2 * n_prog * n_words, sizeof *ring);
    if (!ring) return 1;
    for (size_t i = 0; i < (size_t)2 * n_prog * n_words; i++)        /* poisoned: tag -1, never a step */
        atomic_init(&ring[i], ~(uint64_t)0);
    for (int p = 0; p < n_prog; p++)                                 /* slot 0: step 0, as ll_exchange */
        for (int j = 0; j < n_words; j++)
            atomic_store(word(0, p, j), (uint64_t)payload(p, j, 0));
    atomic_store(&counter, 0);
    pthread_t th[256];
    if (n_prog > 256) return 1;
    for (int p = 0; p < n_prog; p++) pthread_create(&th[p], NULL, program, (void *)(intptr_t)p);
    atomic_store(&go, 1);
    for (int p = 0; p < n_prog; p++) pthread_join(th[p], NULL);
    int bad = atomic_load(&bad_flag), err = atomic_load(&err_flag);
    printf("%s N=%d W=%d steps=%ld: %s\n", argv[1], n_prog, n_words, n_steps,
           bad ? "STALE OR TORN WORD CONSUMED" : err ? "timeout (error flag set)" : "ok");
    return bad ? 2 : err ? 3 : 0;
}
