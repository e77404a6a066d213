/*
 * The C contract of gradclip.h, from C: every status code, the NULL / length / dtype / alignment /
 * overlap rules and their order, "nothing is modified on a non-zero status", the layout and merge
 * identity of both partials (40-byte and exact 96-byte), the summation values, the strings, and
 * the thread-count setter called while other threads compute. Built with -fsanitize=address,undefined by capi/tests/c_abi.rs.
 */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid, alarm */
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <threads.h>
#include <unistd.h>

#include "gradclip.h"

/* The layout the contract promises. */
_Static_assert(sizeof(gradclip_partial) == 40, "gradclip_partial is 40 bytes");
_Static_assert(alignof(gradclip_partial) == 1, "gradclip_partial is a byte array");
_Static_assert(sizeof(gradclip_exact_partial) == 96, "gradclip_exact_partial is 96 bytes");
_Static_assert(alignof(gradclip_exact_partial) == 1, "gradclip_exact_partial is a byte array");
_Static_assert(sizeof(gradclip_summation) == 4, "C enums are int-sized");
_Static_assert(sizeof(gradclip_dtype) == 4, "C enums are int-sized");
_Static_assert(offsetof(gradclip_grad, data) == 0, "data first");
_Static_assert(offsetof(gradclip_grad, len) == sizeof(void *), "then len");
_Static_assert(offsetof(gradclip_grad, dtype) == sizeof(void *) + sizeof(size_t), "then dtype");
_Static_assert(sizeof(gradclip_grad) == sizeof(gradclip_grad_mut), "same layout");
_Static_assert(offsetof(gradclip_nonfinite, value) == 2 * sizeof(size_t), "buffer, index, value");
_Static_assert(offsetof(gradclip_clip_report, clipped) == 2 * sizeof(double), "norm, coef, clipped");
_Static_assert(GRADCLIP_OK == 0 && GRADCLIP_NONFINITE == 1 && GRADCLIP_ERR_NULL == -1 &&
                   GRADCLIP_ERR_ARG == -2 && GRADCLIP_ERR_OVERLAP == -3 &&
                   GRADCLIP_ERR_ALIGN == -4 && GRADCLIP_ERR_OVERFLOW == -5 &&
                   GRADCLIP_ERR_INTERNAL == -99,
               "status codes");
_Static_assert(GRADCLIP_F32 == 0 && GRADCLIP_F16 == 1 && GRADCLIP_BF16 == 2, "dtype values");
_Static_assert(GRADCLIP_ON_NONFINITE_ERROR == 0 && GRADCLIP_ON_NONFINITE_SKIP == 1 &&
                   GRADCLIP_ON_NONFINITE_PROPAGATE == 2,
               "policy values");
_Static_assert(GRADCLIP_SUMMATION_COMPENSATED == 0 && GRADCLIP_SUMMATION_EXACT == 1,
               "summation values");

static int failures;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* IEEE bit patterns: f16 and bf16 are handled as uint16_t. */
#define F16_ONE 0x3C00u
#define F16_INF 0x7C00u
#define BF16_ONE 0x3F80u
#define BF16_NAN 0x7FC0u

/* One 64-byte-aligned arena holds every buffer; its copy detects any write. */
static alignas(64) unsigned char arena[4096];
static unsigned char arena_copy[sizeof arena];

static float *f32_at(size_t byte) { return (float *)(void *)(arena + byte); }
static uint16_t *u16_at(size_t byte) { return (uint16_t *)(void *)(arena + byte); }

static void fill(void) {
    for (size_t i = 0; i < 256; i++) f32_at(0)[i] = (float)(i % 7) - 3.0f; /* bytes 0..1024 */
    for (size_t i = 0; i < 256; i++) u16_at(1024)[i] = F16_ONE;          /* f16 1024..1536 */
    for (size_t i = 0; i < 256; i++) u16_at(1536)[i] = BF16_ONE;         /* bf16 1536..2048 */
    for (size_t i = 0; i < 64; i++) f32_at(2048)[i] = 3e38f;             /* huge 2048..2304 */
    memcpy(arena_copy, arena, sizeof arena);
}

static int untouched(void) { return memcmp(arena, arena_copy, sizeof arena) == 0; }

static gradclip_grad_mut gm(size_t byte, size_t len, gradclip_dtype d) {
    gradclip_grad_mut g = {arena + byte, len, d};
    return g;
}

static gradclip_grad gc(size_t byte, size_t len, gradclip_dtype d) {
    gradclip_grad g = {arena + byte, len, d};
    return g;
}

/* Calls every function that takes `const gradclip_grad_mut *` on `g[0..n]`, expecting `want`
 * from each and no byte of the arena changed. */
static void all_mut_calls(const gradclip_grad_mut *g, size_t n, int want, int line) {
    gradclip_clip_report rep = {-7.0, -7.0, 7};
    gradclip_nonfinite bad = {7, 7, 7.0};
    int st[5];
    st[0] = gradclip_clip_grad_norm(g, n, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, &rep, &bad);
    st[1] = gradclip_clip_grads_with_norm(g, n, 1.0, 100.0);
    st[2] = gradclip_scale(g, n, 0.5);
    st[3] = gradclip_clip_grad_value(g, n, 0.25);
    st[4] = gradclip_clip_grad_norm_with(g, n, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR,
                                         GRADCLIP_SUMMATION_EXACT, &rep, &bad);
    for (int i = 0; i < 5; i++) {
        if (st[i] != want) {
            fprintf(stderr, "line %d: mutating call %d gave %d, want %d\n", line, i, st[i], want);
            failures++;
        }
    }
    if (want != GRADCLIP_OK) {
        CHECK(untouched());
        CHECK(rep.total_norm == -7.0 && rep.clip_coef == -7.0 && rep.clipped == 7);
        CHECK(bad.buffer == 7 && bad.index == 7 && bad.value == 7.0);
    }
}

/* The same for every function that takes `const gradclip_grad *`. */
static void all_const_calls(const gradclip_grad *g, size_t n, int want, int line) {
    double norm = -7.0;
    gradclip_nonfinite bad = {7, 7, 7.0};
    gradclip_partial p;
    gradclip_exact_partial e;
    memset(&p, 0xEE, sizeof p);
    memset(&e, 0xEE, sizeof e);
    int st[6];
    st[0] = gradclip_total_norm(g, n, 2.0, &norm, &bad);
    st[1] = gradclip_first_nonfinite(g, n, &bad);
    st[2] = gradclip_partial_compute(g, n, 2.0, &p);
    st[3] = gradclip_exact_partial_compute(g, n, 2.0, &e);
    st[4] = gradclip_total_norm_with(g, n, 2.0, GRADCLIP_SUMMATION_EXACT, &norm, &bad);
    st[5] = gradclip_total_norm_with(g, n, 1.0, GRADCLIP_SUMMATION_COMPENSATED, &norm, &bad);
    for (int i = 0; i < 6; i++) {
        if (st[i] != want) {
            fprintf(stderr, "line %d: read-only call %d gave %d, want %d\n", line, i, st[i], want);
            failures++;
        }
    }
    CHECK(untouched());
    if (want != GRADCLIP_OK) {
        CHECK(norm == -7.0 && bad.buffer == 7 && bad.index == 7 && bad.value == 7.0);
        for (int i = 0; i < 40; i++) CHECK(p.bytes[i] == 0xEE);
        for (int i = 0; i < 96; i++) CHECK(e.bytes[i] == 0xEE);
    }
}

static void test_null(void) {
    gradclip_grad_mut m[2] = {gm(0, 4, GRADCLIP_F32), gm(1024, 4, GRADCLIP_F16)};
    gradclip_grad c[2] = {gc(0, 4, GRADCLIP_F32), gc(1024, 4, GRADCLIP_F16)};
    double norm = -7.0;
    gradclip_clip_report rep;
    gradclip_nonfinite bad;
    gradclip_partial p;

    /* the arrays: NULL with n > 0 */
    all_mut_calls(NULL, 1, GRADCLIP_ERR_NULL, __LINE__);
    all_const_calls(NULL, 1, GRADCLIP_ERR_NULL, __LINE__);
    /* ... and NULL with n == 0 is an empty set */
    all_mut_calls(NULL, 0, GRADCLIP_OK, __LINE__);
    all_const_calls(NULL, 0, GRADCLIP_OK, __LINE__);
    CHECK(gradclip_total_norm(NULL, 0, 2.0, &norm, NULL) == GRADCLIP_OK && norm == 0.0);

    /* data == NULL with len > 0, in the second buffer */
    m[1].data = NULL;
    c[1].data = NULL;
    all_mut_calls(m, 2, GRADCLIP_ERR_NULL, __LINE__);
    all_const_calls(c, 2, GRADCLIP_ERR_NULL, __LINE__);
    /* ... and with len == 0 an empty buffer */
    m[1].len = 0;
    c[1].len = 0;
    all_mut_calls(m, 2, GRADCLIP_OK, __LINE__);
    fill();
    all_const_calls(c, 2, GRADCLIP_OK, __LINE__);

    /* required out pointers */
    CHECK(gradclip_total_norm(c, 1, 2.0, NULL, &bad) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_total_norm(c, 1, 2.0, &norm, NULL) == GRADCLIP_OK); /* out_bad may be NULL */
    CHECK(gradclip_clip_grad_norm(m, 1, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, NULL, &bad) ==
          GRADCLIP_ERR_NULL);
    CHECK(untouched());
    CHECK(gradclip_first_nonfinite(c, 1, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_partial_compute(c, 1, 2.0, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_partial_compute(NULL, 0, 2.0, NULL) == GRADCLIP_ERR_NULL);
    memset(&p, 0, sizeof p);
    CHECK(gradclip_partial_merge(NULL, &p) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_partial_merge(&p, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_partial_finish(NULL, &norm) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_partial_finish(&p, NULL) == GRADCLIP_ERR_NULL);
    gradclip_exact_partial e;
    memset(&e, 0, sizeof e);
    CHECK(gradclip_exact_partial_compute(c, 1, 2.0, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_compute(NULL, 0, 2.0, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_compute(NULL, 0, 3.0, NULL) == GRADCLIP_ERR_NULL); /* NULL first */
    CHECK(gradclip_exact_partial_merge(NULL, &e) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_merge(&e, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_finish(NULL, &norm) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_finish(&e, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_sum(NULL, &norm) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_exact_partial_sum(&e, NULL) == GRADCLIP_ERR_NULL);
    CHECK(gradclip_total_norm_with(c, 1, 2.0, GRADCLIP_SUMMATION_EXACT, NULL, &bad) ==
          GRADCLIP_ERR_NULL);
    CHECK(gradclip_clip_grad_norm_with(m, 1, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR,
                                       GRADCLIP_SUMMATION_EXACT, NULL, &bad) == GRADCLIP_ERR_NULL);
    /* NULL before a bad summation value */
    CHECK(gradclip_total_norm_with(c, 1, 2.0, (gradclip_summation)7, NULL, &bad) ==
          GRADCLIP_ERR_NULL);
    CHECK(untouched());
    for (int i = 0; i < 96; i++) CHECK(e.bytes[i] == 0);

    /* NULL is reported before any other failure: a bad dtype in another buffer, a NULL out */
    m[1].len = 4;
    m[0].dtype = (gradclip_dtype)9;
    all_mut_calls(m, 2, GRADCLIP_ERR_NULL, __LINE__);
    CHECK(gradclip_clip_grad_norm(m, 2, -1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, &rep, NULL) ==
          GRADCLIP_ERR_NULL);
    CHECK(untouched());
}

static void test_arg(void) {
    const size_t huge_f32 = (size_t)PTRDIFF_MAX / 4 + 1; /* PTRDIFF_MAX + 1 bytes or more */
    const size_t huge_u16 = (size_t)PTRDIFF_MAX / 2 + 1;
    const unsigned bad_dtypes[] = {3, 4, 0x7FFFFFFF, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad_dtypes / sizeof bad_dtypes[0]; i++) {
        gradclip_grad_mut m[2] = {gm(0, 4, GRADCLIP_F32), gm(1024, 4, GRADCLIP_F16)};
        gradclip_grad c[2] = {gc(0, 4, GRADCLIP_F32), gc(1024, 4, GRADCLIP_F16)};
        m[1].dtype = (gradclip_dtype)bad_dtypes[i];
        c[1].dtype = (gradclip_dtype)bad_dtypes[i];
        all_mut_calls(m, 2, GRADCLIP_ERR_ARG, __LINE__);
        all_const_calls(c, 2, GRADCLIP_ERR_ARG, __LINE__);
        /* even for an empty buffer */
        m[1].len = 0;
        all_mut_calls(m, 2, GRADCLIP_ERR_ARG, __LINE__);
    }
    /* absurd lengths: byte size beyond PTRDIFF_MAX, overflowing size_t, or wrapping memory */
    const size_t lens[] = {SIZE_MAX, SIZE_MAX / 2, huge_f32};
    for (size_t i = 0; i < 3; i++) {
        gradclip_grad_mut m = gm(0, lens[i], GRADCLIP_F32);
        gradclip_grad c = gc(0, lens[i], GRADCLIP_F32);
        all_mut_calls(&m, 1, GRADCLIP_ERR_ARG, __LINE__);
        all_const_calls(&c, 1, GRADCLIP_ERR_ARG, __LINE__);
    }
    {
        gradclip_grad_mut m = gm(1024, huge_u16, GRADCLIP_BF16);
        all_mut_calls(&m, 1, GRADCLIP_ERR_ARG, __LINE__);
        gradclip_grad c = gc(1024, huge_u16, GRADCLIP_F16);
        all_const_calls(&c, 1, GRADCLIP_ERR_ARG, __LINE__);
    }
    /* an absurd number of descriptors is refused before any is read */
    {
        gradclip_grad_mut m = gm(0, 4, GRADCLIP_F32);
        gradclip_grad c = gc(0, 4, GRADCLIP_F32);
        all_mut_calls(&m, SIZE_MAX / 8, GRADCLIP_ERR_ARG, __LINE__);
        all_const_calls(&c, SIZE_MAX / 8, GRADCLIP_ERR_ARG, __LINE__);
    }
    /* numeric arguments */
    gradclip_grad_mut m = gm(0, 256, GRADCLIP_F32);
    gradclip_grad c = gc(0, 256, GRADCLIP_F32);
    gradclip_clip_report rep = {-7.0, -7.0, 7};
    double norm = -7.0;
    gradclip_partial p;
    memset(&p, 0xEE, sizeof p);
    const double bad_p[] = {0.0, -0.0, -1.0, -INFINITY, NAN};
    for (size_t i = 0; i < 5; i++) {
        CHECK(gradclip_total_norm(&c, 1, bad_p[i], &norm, NULL) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_partial_compute(&c, 1, bad_p[i], &p) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_partial_compute(NULL, 0, bad_p[i], &p) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_clip_grad_norm(&m, 1, 1.0, bad_p[i], GRADCLIP_ON_NONFINITE_ERROR, &rep,
                                      NULL) == GRADCLIP_ERR_ARG);
    }
    const double bad_max[] = {0.0, -1.0, INFINITY, NAN};
    for (size_t i = 0; i < 4; i++) {
        CHECK(gradclip_clip_grad_norm(&m, 1, bad_max[i], 2.0, GRADCLIP_ON_NONFINITE_ERROR, &rep,
                                      NULL) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_clip_grads_with_norm(&m, 1, bad_max[i], 100.0) == GRADCLIP_ERR_ARG);
    }
    CHECK(gradclip_clip_grads_with_norm(&m, 1, 1.0, -1.0) == GRADCLIP_ERR_ARG);
    CHECK(gradclip_scale(&m, 1, NAN) == GRADCLIP_ERR_ARG);
    CHECK(gradclip_scale(&m, 1, INFINITY) == GRADCLIP_ERR_ARG);
    CHECK(gradclip_scale(&m, 1, 1e39) == GRADCLIP_ERR_ARG); /* infinite once rounded to float */
    CHECK(gradclip_clip_grad_value(&m, 1, -1.0) == GRADCLIP_ERR_ARG);
    CHECK(gradclip_clip_grad_value(&m, 1, NAN) == GRADCLIP_ERR_ARG);
    const unsigned bad_policy[] = {3, 0xFFFFFFFFu};
    for (size_t i = 0; i < 2; i++)
        CHECK(gradclip_clip_grad_norm(&m, 1, 1.0, 2.0, (gradclip_on_nonfinite)bad_policy[i], &rep,
                                      NULL) == GRADCLIP_ERR_ARG);
    CHECK(norm == -7.0 && rep.total_norm == -7.0 && rep.clipped == 7);
    for (int i = 0; i < 40; i++) CHECK(p.bytes[i] == 0xEE);
    CHECK(untouched());

    /* the exact functions: the same bad norm types, and every P norm for an exact partial */
    gradclip_exact_partial e;
    memset(&e, 0xEE, sizeof e);
    gradclip_nonfinite bad = {7, 7, 7.0};
    for (size_t i = 0; i < 5; i++) {
        for (unsigned sm = 0; sm < 2; sm++) {
            CHECK(gradclip_total_norm_with(&c, 1, bad_p[i], (gradclip_summation)sm, &norm, &bad) ==
                  GRADCLIP_ERR_ARG);
            CHECK(gradclip_clip_grad_norm_with(&m, 1, 1.0, bad_p[i], GRADCLIP_ON_NONFINITE_ERROR,
                                               (gradclip_summation)sm, &rep,
                                               NULL) == GRADCLIP_ERR_ARG);
        }
        CHECK(gradclip_exact_partial_compute(&c, 1, bad_p[i], &e) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_exact_partial_compute(NULL, 0, bad_p[i], &e) == GRADCLIP_ERR_ARG);
    }
    const double p_norms[] = {3.0, 0.5, 1.5, 0.01, 100.0};
    for (size_t i = 0; i < 5; i++) {
        CHECK(gradclip_exact_partial_compute(&c, 1, p_norms[i], &e) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_exact_partial_compute(NULL, 0, p_norms[i], &e) == GRADCLIP_ERR_ARG);
    }
    /* summation values outside the enum, after the buffers were checked */
    const unsigned bad_summation[] = {2, 3, 0x7FFFFFFF, 0xFFFFFFFFu};
    for (size_t i = 0; i < 4; i++) {
        gradclip_summation sm = (gradclip_summation)bad_summation[i];
        CHECK(gradclip_total_norm_with(&c, 1, 2.0, sm, &norm, &bad) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_total_norm_with(NULL, 0, 2.0, sm, &norm, &bad) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_clip_grad_norm_with(&m, 1, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, sm, &rep,
                                           &bad) == GRADCLIP_ERR_ARG);
        CHECK(gradclip_clip_grad_norm_with(&m, 1, 1.0, 2.0, GRADCLIP_ON_NONFINITE_PROPAGATE, sm,
                                           &rep, &bad) == GRADCLIP_ERR_ARG);
        /* a misaligned buffer is reported before the summation */
        gradclip_grad odd = gc(2, 4, GRADCLIP_F32);
        CHECK(gradclip_total_norm_with(&odd, 1, 2.0, sm, &norm, &bad) == GRADCLIP_ERR_ALIGN);
    }
    /* and a bad policy with a good summation */
    CHECK(gradclip_clip_grad_norm_with(&m, 1, 1.0, 2.0, (gradclip_on_nonfinite)3,
                                       GRADCLIP_SUMMATION_EXACT, &rep, &bad) == GRADCLIP_ERR_ARG);
    CHECK(norm == -7.0 && rep.total_norm == -7.0 && rep.clip_coef == -7.0 && rep.clipped == 7);
    CHECK(bad.buffer == 7 && bad.index == 7 && bad.value == 7.0);
    for (int i = 0; i < 96; i++) CHECK(e.bytes[i] == 0xEE);
    CHECK(untouched());
    /* a P norm in exact mode is the compensated P norm (exact covers L1, L2 and Inf) */
    double pc = -1.0, pe = -2.0;
    CHECK(gradclip_total_norm(&c, 1, 3.0, &pc, NULL) == GRADCLIP_OK);
    CHECK(gradclip_total_norm_with(&c, 1, 3.0, GRADCLIP_SUMMATION_EXACT, &pe, NULL) == GRADCLIP_OK);
    CHECK(memcmp(&pc, &pe, sizeof pc) == 0);
    /* the valid norm types */
    const double good_p[] = {2.0, 1.0, INFINITY, 3.0, 0.5, 0.1, 100.0};
    for (size_t i = 0; i < 7; i++)
        CHECK(gradclip_total_norm(&c, 1, good_p[i], &norm, NULL) == GRADCLIP_OK);
}

static void test_overlap_and_align(void) {
    /* the same buffer twice */
    gradclip_grad_mut same[2] = {gm(0, 8, GRADCLIP_F32), gm(0, 8, GRADCLIP_F32)};
    all_mut_calls(same, 2, GRADCLIP_ERR_OVERLAP, __LINE__);
    /* a bf16 view sharing one f32 element with an f32 buffer, in a set of three */
    gradclip_grad_mut part[3] = {gm(1024, 4, GRADCLIP_F16), gm(0, 8, GRADCLIP_F32),
                                 gm(28, 4, GRADCLIP_BF16)};
    all_mut_calls(part, 3, GRADCLIP_ERR_OVERLAP, __LINE__);
    /* adjacent buffers and empty buffers at the same address are fine */
    gradclip_grad_mut adjacent[4] = {gm(0, 8, GRADCLIP_F32), gm(32, 4, GRADCLIP_BF16),
                                     gm(0, 0, GRADCLIP_F32), gm(0, 0, GRADCLIP_F16)};
    all_mut_calls(adjacent, 4, GRADCLIP_OK, __LINE__);
    fill();
    /* read-only buffers may share memory */
    gradclip_grad shared[2] = {gc(0, 8, GRADCLIP_F32), gc(0, 8, GRADCLIP_F32)};
    all_const_calls(shared, 2, GRADCLIP_OK, __LINE__);

    /* misaligned data: f32 at 1, 2 and 3 bytes past alignment, f16 / bf16 at 1; overlap is
     * checked after alignment */
    const size_t offs[] = {1, 2, 3};
    for (size_t i = 0; i < 3; i++) {
        gradclip_grad_mut m[2] = {gm(offs[i], 4, GRADCLIP_F32), gm(offs[i], 4, GRADCLIP_F32)};
        gradclip_grad c = gc(offs[i], 4, GRADCLIP_F32);
        all_mut_calls(m, 2, GRADCLIP_ERR_ALIGN, __LINE__);
        all_const_calls(&c, 1, GRADCLIP_ERR_ALIGN, __LINE__);
    }
    gradclip_grad_mut h = gm(1025, 4, GRADCLIP_F16);
    all_mut_calls(&h, 1, GRADCLIP_ERR_ALIGN, __LINE__);
    gradclip_grad b = gc(1537, 4, GRADCLIP_BF16);
    all_const_calls(&b, 1, GRADCLIP_ERR_ALIGN, __LINE__);
    /* a misaligned non-NULL pointer is refused even with len == 0 */
    gradclip_grad_mut e = gm(2, 0, GRADCLIP_F32);
    all_mut_calls(&e, 1, GRADCLIP_ERR_ALIGN, __LINE__);
    /* 2-byte alignment is enough for f16 and bf16 */
    gradclip_grad_mut ok[2] = {gm(1026, 4, GRADCLIP_F16), gm(1538, 4, GRADCLIP_BF16)};
    all_mut_calls(ok, 2, GRADCLIP_OK, __LINE__);
    fill();
}

static void test_nonfinite_and_overflow(void) {
    u16_at(1024)[5] = F16_INF;
    u16_at(1536)[2] = BF16_NAN;
    memcpy(arena_copy, arena, sizeof arena);
    gradclip_grad c[3] = {gc(0, 256, GRADCLIP_F32), gc(1024, 256, GRADCLIP_F16),
                          gc(1536, 256, GRADCLIP_BF16)};
    gradclip_grad_mut m[3] = {gm(0, 256, GRADCLIP_F32), gm(1024, 256, GRADCLIP_F16),
                              gm(1536, 256, GRADCLIP_BF16)};
    double norm = -7.0;
    gradclip_nonfinite bad = {7, 7, 7.0};
    CHECK(gradclip_total_norm(c, 3, 2.0, &norm, &bad) == GRADCLIP_NONFINITE);
    CHECK(norm == -7.0 && bad.buffer == 1 && bad.index == 5 && bad.value == INFINITY);
    CHECK(gradclip_total_norm(c, 3, 2.0, &norm, NULL) == GRADCLIP_NONFINITE);
    CHECK(gradclip_first_nonfinite(c, 3, &bad) == 1 && bad.buffer == 1 && bad.index == 5);
    CHECK(gradclip_first_nonfinite(c + 2, 1, &bad) == 1 && bad.buffer == 0 && bad.index == 2 &&
          isnan(bad.value));
    bad.buffer = 7;
    CHECK(gradclip_first_nonfinite(c, 1, &bad) == 0 && bad.buffer == 7);

    gradclip_clip_report rep = {-7.0, -7.0, 7};
    CHECK(gradclip_clip_grad_norm(m, 3, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, &rep, &bad) ==
          GRADCLIP_NONFINITE);
    CHECK(rep.total_norm == -7.0 && rep.clipped == 7 && bad.buffer == 1 && bad.index == 5);
    CHECK(untouched());
    bad.buffer = 7;
    CHECK(gradclip_clip_grad_norm(m, 3, 1.0, 2.0, GRADCLIP_ON_NONFINITE_SKIP, &rep, &bad) ==
          GRADCLIP_NONFINITE);
    CHECK(isnan(rep.total_norm) && rep.clip_coef == 1.0 && rep.clipped == 0 && bad.buffer == 1);
    CHECK(untouched());
    CHECK(gradclip_clip_grad_norm(m + 1, 1, 1.0, 2.0, GRADCLIP_ON_NONFINITE_SKIP, &rep, NULL) ==
          GRADCLIP_NONFINITE);
    CHECK(rep.total_norm == INFINITY && rep.clipped == 0);
    CHECK(gradclip_clip_grad_norm(m, 3, 1.0, 2.0, GRADCLIP_ON_NONFINITE_PROPAGATE, &rep, &bad) ==
          GRADCLIP_OK);
    CHECK(isnan(rep.total_norm) && isnan(rep.clip_coef) && rep.clipped == 1);
    CHECK(isnan(f32_at(0)[1])); /* PyTorch's behaviour: everything is multiplied by NaN */

    /* A P norm beyond double (64 * 3e38 with p = 0.005: 3e38 * 64^200): GRADCLIP_ERR_OVERFLOW, nothing
     * written. */
    fill();
    gradclip_grad hc = gc(2048, 64, GRADCLIP_F32);
    gradclip_grad_mut hm = gm(2048, 64, GRADCLIP_F32);
    norm = -7.0;
    CHECK(gradclip_total_norm(&hc, 1, 0.005, &norm, NULL) == GRADCLIP_ERR_OVERFLOW && norm == -7.0);
    CHECK(gradclip_clip_grad_norm(&hm, 1, 1.0, 0.005, GRADCLIP_ON_NONFINITE_ERROR, &rep, NULL) ==
          GRADCLIP_ERR_OVERFLOW);
    CHECK(untouched());
    gradclip_partial p;
    CHECK(gradclip_partial_compute(&hc, 1, 0.005, &p) == GRADCLIP_OK);
    CHECK(gradclip_partial_finish(&p, &norm) == GRADCLIP_ERR_OVERFLOW && norm == -7.0);
    CHECK(gradclip_total_norm_with(&hc, 1, 0.005, GRADCLIP_SUMMATION_EXACT, &norm, NULL) ==
          GRADCLIP_ERR_OVERFLOW); /* P norms are compensated in exact mode too */
    CHECK(norm == -7.0);
    CHECK(gradclip_total_norm(&hc, 1, 2.0, &norm, NULL) == GRADCLIP_OK && isfinite(norm));
    /* exact L2 of 64 x 3e38 (f32): finite, the correctly rounded sqrt of the rounded sum */
    double en = -7.0, es = -7.0;
    gradclip_exact_partial e;
    CHECK(gradclip_total_norm_with(&hc, 1, 2.0, GRADCLIP_SUMMATION_EXACT, &en, NULL) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_compute(&hc, 1, 2.0, &e) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_sum(&e, &es) == GRADCLIP_OK && isfinite(es) && en == sqrt(es));
    CHECK(fabs(en - norm) <= 1e-14 * norm);
}

/* NaN / inf in exact mode: reported by the norm functions, recorded by the exact partial. */
static void test_exact_nonfinite(void) {
    fill();
    u16_at(1024)[5] = F16_INF;
    u16_at(1536)[2] = BF16_NAN;
    memcpy(arena_copy, arena, sizeof arena);
    gradclip_grad c[3] = {gc(0, 256, GRADCLIP_F32), gc(1024, 256, GRADCLIP_F16),
                          gc(1536, 256, GRADCLIP_BF16)};
    gradclip_grad_mut m[3] = {gm(0, 256, GRADCLIP_F32), gm(1024, 256, GRADCLIP_F16),
                              gm(1536, 256, GRADCLIP_BF16)};
    double norm = -7.0;
    gradclip_nonfinite bad = {7, 7, 7.0};
    CHECK(gradclip_total_norm_with(c, 3, 2.0, GRADCLIP_SUMMATION_EXACT, &norm, &bad) ==
          GRADCLIP_NONFINITE);
    CHECK(norm == -7.0 && bad.buffer == 1 && bad.index == 5 && bad.value == INFINITY);
    gradclip_clip_report rep = {-7.0, -7.0, 7};
    bad.buffer = 7;
    CHECK(gradclip_clip_grad_norm_with(m, 3, 1.0, 1.0, GRADCLIP_ON_NONFINITE_ERROR,
                                       GRADCLIP_SUMMATION_EXACT, &rep, &bad) == GRADCLIP_NONFINITE);
    CHECK(rep.total_norm == -7.0 && rep.clipped == 7 && bad.buffer == 1 && bad.index == 5);
    CHECK(gradclip_clip_grad_norm_with(m, 3, 1.0, 2.0, GRADCLIP_ON_NONFINITE_SKIP,
                                       GRADCLIP_SUMMATION_EXACT, &rep, &bad) == GRADCLIP_NONFINITE);
    CHECK(isnan(rep.total_norm) && rep.clip_coef == 1.0 && rep.clipped == 0);
    CHECK(untouched());
    /* the exact partial records NaN / inf and returns OK: every rank still sends its partial */
    gradclip_exact_partial e, inf_only;
    double v = -7.0;
    CHECK(gradclip_exact_partial_compute(c, 3, 2.0, &e) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_finish(&e, &v) == GRADCLIP_OK && isnan(v));
    CHECK(gradclip_exact_partial_compute(c + 1, 1, 1.0, &inf_only) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_finish(&inf_only, &v) == GRADCLIP_OK && v == INFINITY);
    CHECK(gradclip_exact_partial_sum(&inf_only, &v) == GRADCLIP_OK && v == INFINITY);
    CHECK(untouched());
    CHECK(gradclip_clip_grad_norm_with(m, 3, 1.0, 2.0, GRADCLIP_ON_NONFINITE_PROPAGATE,
                                       GRADCLIP_SUMMATION_EXACT, &rep, &bad) == GRADCLIP_OK);
    CHECK(isnan(rep.total_norm) && isnan(rep.clip_coef) && rep.clipped == 1);
    fill();
}

/* The exact partial: identity, any merge order, the norm of the whole however it is split. */
static void test_exact_partials(void) {
    fill();
    gradclip_grad c[3] = {gc(0, 256, GRADCLIP_F32), gc(1024, 256, GRADCLIP_F16),
                          gc(1536, 256, GRADCLIP_BF16)};
    gradclip_exact_partial zero, x, tmp, fwd, rev;
    memset(&zero, 0x55, sizeof zero);
    CHECK(gradclip_exact_partial_compute(NULL, 0, 2.0, &zero) == GRADCLIP_OK);
    for (int i = 0; i < 96; i++) CHECK(zero.bytes[i] == 0);
    double v = -7.0;
    CHECK(gradclip_exact_partial_finish(&zero, &v) == GRADCLIP_OK && v == 0.0);
    CHECK(gradclip_exact_partial_sum(&zero, &v) == GRADCLIP_OK && v == 0.0);
    const double types[] = {2.0, 1.0, INFINITY};
    for (size_t t = 0; t < 3; t++) {
        CHECK(gradclip_exact_partial_compute(c, 3, types[t], &x) == GRADCLIP_OK);
        double whole = -1.0, fin = -2.0, comp = -3.0;
        CHECK(gradclip_total_norm_with(c, 3, types[t], GRADCLIP_SUMMATION_EXACT, &whole, NULL) ==
              GRADCLIP_OK);
        CHECK(gradclip_total_norm(c, 3, types[t], &comp, NULL) == GRADCLIP_OK);
        CHECK(gradclip_exact_partial_finish(&x, &fin) == GRADCLIP_OK);
        CHECK(memcmp(&fin, &whole, sizeof fin) == 0);
        CHECK(fabs(whole - comp) <= 1e-14 * whole);
        /* the all-zero partial is the identity on both sides */
        tmp = zero;
        CHECK(gradclip_exact_partial_merge(&tmp, &x) == GRADCLIP_OK && memcmp(&tmp, &x, 96) == 0);
        tmp = x;
        CHECK(gradclip_exact_partial_merge(&tmp, &zero) == GRADCLIP_OK && memcmp(&tmp, &x, 96) == 0);
        /* acc and other may be the same pointer: x + x */
        tmp = x;
        CHECK(gradclip_exact_partial_merge(&tmp, &tmp) == GRADCLIP_OK);
        fwd = x;
        CHECK(gradclip_exact_partial_merge(&fwd, &x) == GRADCLIP_OK && memcmp(&tmp, &fwd, 96) == 0);
        /* pieces cut at arbitrary element boundaries (inside buffers), merged forwards and
         * backwards: the bytes of the whole, hence its norm bit for bit */
        gradclip_grad pieces[5] = {gc(0, 100, GRADCLIP_F32), gc(400, 156, GRADCLIP_F32),
                                   gc(1024, 77, GRADCLIP_F16), gc(1178, 179, GRADCLIP_F16),
                                   gc(1536, 256, GRADCLIP_BF16)};
        gradclip_exact_partial part[4];
        CHECK(gradclip_exact_partial_compute(pieces, 1, types[t], &part[0]) == GRADCLIP_OK);
        CHECK(gradclip_exact_partial_compute(pieces + 1, 2, types[t], &part[1]) == GRADCLIP_OK);
        CHECK(gradclip_exact_partial_compute(pieces + 3, 2, types[t], &part[2]) == GRADCLIP_OK);
        CHECK(gradclip_exact_partial_compute(NULL, 0, types[t], &part[3]) == GRADCLIP_OK);
        memset(&fwd, 0, sizeof fwd);
        memset(&rev, 0, sizeof rev);
        for (int i = 0; i < 4; i++) {
            CHECK(gradclip_exact_partial_merge(&fwd, &part[i]) == GRADCLIP_OK);
            CHECK(gradclip_exact_partial_merge(&rev, &part[3 - i]) == GRADCLIP_OK);
        }
        CHECK(memcmp(&fwd, &x, 96) == 0 && memcmp(&rev, &x, 96) == 0);
        CHECK(gradclip_exact_partial_finish(&rev, &fin) == GRADCLIP_OK);
        CHECK(memcmp(&fin, &whole, sizeof fin) == 0);
        /* L2: the norm is the IEEE square root of the rounded sum of squares */
        double sum = -1.0;
        CHECK(gradclip_exact_partial_sum(&x, &sum) == GRADCLIP_OK);
        CHECK(types[t] == 2.0 ? fin == sqrt(sum) : fin == sum);
    }
    /* partials of different norm types poison the merge: NaN, in either order */
    gradclip_exact_partial y;
    CHECK(gradclip_exact_partial_compute(c, 3, 2.0, &x) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_compute(c, 3, 1.0, &y) == GRADCLIP_OK);
    tmp = x;
    CHECK(gradclip_exact_partial_merge(&tmp, &y) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_finish(&tmp, &v) == GRADCLIP_OK && isnan(v));
    CHECK(gradclip_exact_partial_merge(&y, &x) == GRADCLIP_OK && memcmp(&tmp, &y, 96) == 0);
    /* bytes that are no partial give some number, never a crash */
    memset(&tmp, 0xFF, sizeof tmp);
    CHECK(gradclip_exact_partial_finish(&tmp, &v) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_merge(&tmp, &x) == GRADCLIP_OK);
    CHECK(gradclip_exact_partial_finish(&tmp, &v) == GRADCLIP_OK && isnan(v));
    CHECK(untouched());
}

static void test_partials(void) {
    fill();
    gradclip_grad c[3] = {gc(0, 256, GRADCLIP_F32), gc(1024, 256, GRADCLIP_F16),
                          gc(1536, 256, GRADCLIP_BF16)};
    gradclip_partial zero, x, y, tmp;
    memset(&zero, 0x55, sizeof zero);
    CHECK(gradclip_partial_compute(NULL, 0, 2.0, &zero) == GRADCLIP_OK);
    for (int i = 0; i < 40; i++) CHECK(zero.bytes[i] == 0);
    double v = -7.0;
    CHECK(gradclip_partial_finish(&zero, &v) == GRADCLIP_OK && v == 0.0);
    const double types[] = {2.0, 1.0, INFINITY, 3.0};
    for (size_t t = 0; t < 4; t++) {
        CHECK(gradclip_partial_compute(c, 3, types[t], &x) == GRADCLIP_OK);
        double whole, fin;
        CHECK(gradclip_total_norm(c, 3, types[t], &whole, NULL) == GRADCLIP_OK);
        CHECK(gradclip_partial_finish(&x, &fin) == GRADCLIP_OK && fin == whole);
        /* the all-zero partial is the identity on both sides, for every type */
        tmp = zero;
        CHECK(gradclip_partial_merge(&tmp, &x) == GRADCLIP_OK && memcmp(&tmp, &x, 40) == 0);
        tmp = x;
        CHECK(gradclip_partial_merge(&tmp, &zero) == GRADCLIP_OK && memcmp(&tmp, &x, 40) == 0);
        /* acc and other may be the same pointer */
        tmp = x;
        y = x;
        CHECK(gradclip_partial_merge(&tmp, &tmp) == GRADCLIP_OK);
        CHECK(gradclip_partial_merge(&y, &x) == GRADCLIP_OK && memcmp(&tmp, &y, 40) == 0);
        /* merging the partials of the three buffers in order gives a norm close to the whole */
        gradclip_partial acc = zero;
        for (int b = 0; b < 3; b++) {
            CHECK(gradclip_partial_compute(c + b, 1, types[t], &tmp) == GRADCLIP_OK);
            CHECK(gradclip_partial_merge(&acc, &tmp) == GRADCLIP_OK);
        }
        CHECK(gradclip_partial_finish(&acc, &fin) == GRADCLIP_OK);
        CHECK(fabs(fin - whole) <= 1e-12 * whole);
    }
    /* partials of different norm types poison the merge: NaN */
    CHECK(gradclip_partial_compute(c, 3, 2.0, &x) == GRADCLIP_OK);
    CHECK(gradclip_partial_compute(c, 3, 1.0, &y) == GRADCLIP_OK);
    CHECK(gradclip_partial_merge(&x, &y) == GRADCLIP_OK);
    CHECK(gradclip_partial_finish(&x, &v) == GRADCLIP_OK && isnan(v));
}

static void test_strings(void) {
    const int codes[] = {GRADCLIP_OK,          GRADCLIP_NONFINITE,    GRADCLIP_ERR_NULL,
                         GRADCLIP_ERR_ARG,     GRADCLIP_ERR_OVERLAP,  GRADCLIP_ERR_ALIGN,
                         GRADCLIP_ERR_OVERFLOW, GRADCLIP_ERR_INTERNAL};
    const char *unknown = gradclip_status_str(12345);
    CHECK(unknown != NULL && strcmp(unknown, "unknown status") == 0);
    CHECK(gradclip_status_str(-12345) != NULL && gradclip_status_str(INT32_MIN) != NULL);
    for (size_t i = 0; i < 8; i++) {
        const char *s = gradclip_status_str(codes[i]);
        CHECK(s != NULL && s[0] != '\0' && strcmp(s, unknown) != 0);
        CHECK(s == gradclip_status_str(codes[i])); /* static */
        for (size_t j = 0; j < i; j++) CHECK(strcmp(s, gradclip_status_str(codes[j])) != 0);
    }
    unsigned maj, min, pat;
    CHECK(sscanf(gradclip_version(), "%u.%u.%u", &maj, &min, &pat) == 3);
    const char *isa = gradclip_isa();
    CHECK(isa != NULL && (strcmp(isa, "avx512") == 0 || strcmp(isa, "avx2") == 0 ||
                          strcmp(isa, "neon") == 0 || strcmp(isa, "portable") == 0));
}

/* Norms computed on several threads while the main thread swaps the pool: the same bits. */
static float big[1 << 20]; /* 4 MiB: the parallel path */
static uint64_t reference_bits;

static int worker(void *arg) {
    (void)arg;
    gradclip_grad g = {big, sizeof big / sizeof big[0], GRADCLIP_F32};
    for (int i = 0; i < 20; i++) {
        double v;
        uint64_t b;
        if (gradclip_total_norm(&g, 1, 2.0, &v, NULL) != GRADCLIP_OK) return 1;
        memcpy(&b, &v, 8);
        if (b != reference_bits) return 1;
    }
    return 0;
}

static void test_threads(void) {
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        big[i] = (float)((i * 2654435761u) % 1000) / 7.0f;
    gradclip_grad g = {big, sizeof big / sizeof big[0], GRADCLIP_F32};
    double v;
    CHECK(gradclip_set_num_threads(1) == GRADCLIP_OK);
    CHECK(gradclip_total_norm(&g, 1, 2.0, &v, NULL) == GRADCLIP_OK);
    memcpy(&reference_bits, &v, 8);
    thrd_t t[3];
    for (int i = 0; i < 3; i++) CHECK(thrd_create(&t[i], worker, NULL) == thrd_success);
    for (int i = 0; i < 30; i++) CHECK(gradclip_set_num_threads((size_t)(i % 4)) == GRADCLIP_OK);
    for (int i = 0; i < 3; i++) {
        int r = 1;
        CHECK(thrd_join(t[i], &r) == thrd_success && r == 0);
    }
    /* a child made by fork() after the pool started (the parent's pool threads do not exist
     * there) gets a pool of its own */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60); /* a hang fails the test instead of blocking it */
        double cv = 0.0, cv2 = 0.0;
        int ok = gradclip_total_norm(&g, 1, 2.0, &cv, NULL) == GRADCLIP_OK &&
                 gradclip_set_num_threads(2) == GRADCLIP_OK &&
                 gradclip_total_norm(&g, 1, 2.0, &cv2, NULL) == GRADCLIP_OK;
        uint64_t cb, cb2;
        memcpy(&cb, &cv, 8);
        memcpy(&cb2, &cv2, 8);
        _exit(ok && cb == reference_bits && cb2 == reference_bits ? 0 : 1);
    }
    int wst = 0;
    CHECK(pid > 0 && waitpid(pid, &wst, 0) == pid && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    /* a thread count the pool cannot have is refused, and the pool kept */
    CHECK(gradclip_set_num_threads(SIZE_MAX) == GRADCLIP_ERR_ARG);
    CHECK(gradclip_total_norm(&g, 1, 2.0, &v, NULL) == GRADCLIP_OK);
    CHECK(gradclip_set_num_threads(0) == GRADCLIP_OK);
}

int main(void) {
    fill();
    test_null();
    fill();
    test_arg();
    fill();
    test_overlap_and_align();
    test_nonfinite_and_overflow();
    test_partials();
    test_exact_nonfinite();
    test_exact_partials();
    test_strings();
    test_threads();
    if (failures) {
        fprintf(stderr, "abi_contract: %d failed checks\n", failures);
        return 1;
    }
    printf("abi_contract: ok\n");
    return 0;
}
