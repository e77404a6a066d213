/*
 * Runs the table of calls written by capi/tests/c_abi.rs (expected.h) on its data (data.bin, the
 * first argument) and compares every result bit, partial byte and buffer hash with what the Rust
 * API gave on the same data. Every case runs on a fresh copy of its buffers, under 1, 2, 3 and
 * the default number of threads.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradclip.h"

#define GC_NULL ((size_t)-1)

typedef struct {
    size_t offset; /* into data.bin, or GC_NULL: passed as data == NULL (len is then 0) */
    size_t len;
    unsigned dtype;
} tbuf;

typedef struct {
    size_t first; /* into BUFS */
    size_t count;
} tset;

enum {
    TOTAL_NORM,
    CLIP_GRAD_NORM,
    CLIP_WITH_NORM,
    SCALE,
    CLIP_VALUE,
    FIRST_NONFINITE,
    PARTIAL,
    TOTAL_NORM_WITH,
    CLIP_GRAD_NORM_WITH,
    EXACT_PARTIAL
};

typedef struct {
    unsigned op;
    size_t set, set_end;
    uint64_t a, b; /* double bits */
    unsigned policy;
    unsigned summation;
    int status;
    uint64_t r[12]; /* norm / report / partial bytes (40 or 96) */
    int clipped;
    int fin_status;
    uint64_t fin;
    uint64_t sum; /* gradclip_exact_partial_sum */
    uint64_t hash;
    int has_bad;
    size_t bad_buffer, bad_index;
    uint64_t bad_value;
} tcase;

#include "expected.h"

static unsigned char *data;
static int failures;

static double from_bits(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static size_t elem_size(unsigned dtype) { return dtype == GRADCLIP_F32 ? 4 : 2; }

/* A set's buffers, copied (NULL stays NULL; an empty non-NULL buffer gets a 1-byte block). */
typedef struct {
    gradclip_grad_mut g[8];
    gradclip_grad c[8];
    size_t n;
} copy_t;

static void copy_set(size_t set, copy_t *out) {
    const tset *s = &SETS[set];
    out->n = s->count;
    for (size_t i = 0; i < s->count; i++) {
        const tbuf *b = &BUFS[s->first + i];
        void *p = NULL;
        if (b->offset != GC_NULL) {
            size_t bytes = b->len * elem_size(b->dtype);
            p = malloc(bytes ? bytes : 1);
            if (!p) abort();
            memcpy(p, data + b->offset, bytes);
        }
        out->g[i].data = p;
        out->g[i].len = b->len;
        out->g[i].dtype = (gradclip_dtype)b->dtype;
        out->c[i].data = p;
        out->c[i].len = b->len;
        out->c[i].dtype = (gradclip_dtype)b->dtype;
    }
}

/* FNV-1a 64 over every buffer's bytes in order, as the Rust test computes it. */
static uint64_t hash_set(const copy_t *s) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < s->n; i++) {
        const unsigned char *p = s->g[i].data;
        size_t bytes = s->g[i].len * elem_size(s->g[i].dtype);
        for (size_t j = 0; j < bytes; j++) h = (h ^ p[j]) * 0x100000001b3u;
    }
    return h;
}

static void free_set(copy_t *s) {
    for (size_t i = 0; i < s->n; i++) free(s->g[i].data);
}

#define CHECK(k, cond)                                                                  \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "case %zu (op %u, set %zu): check failed: %s\n", (k), c->op, \
                    c->set, #cond);                                                     \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

static const gradclip_nonfinite BAD_SENTINEL = {777, 777, 7.0};
static const double NORM_SENTINEL = -7.0;

static void check_bad(size_t k, const tcase *c, const gradclip_nonfinite *bad) {
    if (c->has_bad) {
        CHECK(k, bad->buffer == c->bad_buffer);
        CHECK(k, bad->index == c->bad_index);
        CHECK(k, bits(bad->value) == c->bad_value);
    } else {
        CHECK(k, memcmp(bad, &BAD_SENTINEL, sizeof *bad) == 0);
    }
}

static void run_case(size_t k, const tcase *c) {
    copy_t s;
    copy_set(c->set, &s);
    double a = from_bits(c->a), b = from_bits(c->b);
    gradclip_nonfinite bad = BAD_SENTINEL;
    int st = 0;
    switch (c->op) {
    case TOTAL_NORM: {
        double v = NORM_SENTINEL;
        st = gradclip_total_norm(s.c, s.n, a, &v, &bad);
        CHECK(k, st == c->status);
        CHECK(k, st == GRADCLIP_OK ? bits(v) == c->r[0] : v == NORM_SENTINEL);
        check_bad(k, c, &bad);
        break;
    }
    case TOTAL_NORM_WITH: {
        double v = NORM_SENTINEL;
        st = gradclip_total_norm_with(s.c, s.n, a, (gradclip_summation)c->summation, &v, &bad);
        CHECK(k, st == c->status);
        CHECK(k, st == GRADCLIP_OK ? bits(v) == c->r[0] : v == NORM_SENTINEL);
        check_bad(k, c, &bad);
        break;
    }
    case CLIP_GRAD_NORM:
    case CLIP_GRAD_NORM_WITH: {
        gradclip_clip_report rep = {NORM_SENTINEL, NORM_SENTINEL, 7};
        gradclip_on_nonfinite policy = (gradclip_on_nonfinite)c->policy;
        if (c->op == CLIP_GRAD_NORM)
            st = gradclip_clip_grad_norm(s.g, s.n, a, b, policy, &rep, &bad);
        else
            st = gradclip_clip_grad_norm_with(s.g, s.n, a, b, policy,
                                              (gradclip_summation)c->summation, &rep, &bad);
        CHECK(k, st == c->status);
        /* SKIP fills the report with its NONFINITE status; ERROR leaves it alone. */
        if (st == GRADCLIP_OK || (st == GRADCLIP_NONFINITE && c->policy == 1)) {
            CHECK(k, bits(rep.total_norm) == c->r[0]);
            CHECK(k, bits(rep.clip_coef) == c->r[1]);
            CHECK(k, rep.clipped == c->clipped);
        } else {
            CHECK(k, rep.total_norm == NORM_SENTINEL && rep.clip_coef == NORM_SENTINEL &&
                         rep.clipped == 7);
        }
        check_bad(k, c, &bad);
        break;
    }
    case CLIP_WITH_NORM:
        st = gradclip_clip_grads_with_norm(s.g, s.n, a, b);
        CHECK(k, st == c->status);
        break;
    case SCALE:
        st = gradclip_scale(s.g, s.n, a);
        CHECK(k, st == c->status);
        break;
    case CLIP_VALUE:
        st = gradclip_clip_grad_value(s.g, s.n, a);
        CHECK(k, st == c->status);
        break;
    case FIRST_NONFINITE:
        st = gradclip_first_nonfinite(s.c, s.n, &bad);
        CHECK(k, st == c->status);
        check_bad(k, c, &bad);
        break;
    case PARTIAL: {
        gradclip_partial acc, part;
        memset(&acc, 0, sizeof acc);
        for (size_t i = c->set; i < c->set_end; i++) {
            copy_t piece;
            copy_set(i, &piece);
            memset(&part, 0xEE, sizeof part);
            st = gradclip_partial_compute(piece.c, piece.n, a, &part);
            if (st == GRADCLIP_OK) {
                CHECK(k, gradclip_partial_merge(&acc, &part) == GRADCLIP_OK);
            } else {
                /* nothing written on failure */
                unsigned char ee[40];
                memset(ee, 0xEE, sizeof ee);
                CHECK(k, memcmp(part.bytes, ee, 40) == 0);
            }
            free_set(&piece);
            if (st != GRADCLIP_OK) break;
        }
        CHECK(k, st == c->status);
        if (st == GRADCLIP_OK) {
            CHECK(k, memcmp(acc.bytes, c->r, 40) == 0);
            double v = NORM_SENTINEL;
            int fs = gradclip_partial_finish(&acc, &v);
            CHECK(k, fs == c->fin_status);
            CHECK(k, fs == GRADCLIP_OK ? bits(v) == c->fin : v == NORM_SENTINEL);
        }
        break;
    }
    case EXACT_PARTIAL: {
        /* merged in order, and (a second accumulator) in reverse order: the same bytes */
        gradclip_exact_partial acc, rev, part;
        memset(&acc, 0, sizeof acc);
        memset(&rev, 0, sizeof rev);
        for (size_t i = c->set; i < c->set_end; i++) {
            copy_t piece;
            copy_set(i, &piece);
            memset(&part, 0xEE, sizeof part);
            st = gradclip_exact_partial_compute(piece.c, piece.n, a, &part);
            if (st == GRADCLIP_OK) {
                CHECK(k, gradclip_exact_partial_merge(&acc, &part) == GRADCLIP_OK);
            } else {
                unsigned char ee[96];
                memset(ee, 0xEE, sizeof ee);
                CHECK(k, memcmp(part.bytes, ee, 96) == 0);
            }
            free_set(&piece);
            if (st != GRADCLIP_OK) break;
        }
        CHECK(k, st == c->status);
        if (st != GRADCLIP_OK) break;
        for (size_t i = c->set_end; i-- > c->set;) {
            copy_t piece;
            copy_set(i, &piece);
            CHECK(k, gradclip_exact_partial_compute(piece.c, piece.n, a, &part) == GRADCLIP_OK);
            CHECK(k, gradclip_exact_partial_merge(&rev, &part) == GRADCLIP_OK);
            free_set(&piece);
        }
        CHECK(k, memcmp(acc.bytes, c->r, 96) == 0);
        CHECK(k, memcmp(rev.bytes, c->r, 96) == 0);
        double v = NORM_SENTINEL, sum = NORM_SENTINEL;
        CHECK(k, gradclip_exact_partial_finish(&acc, &v) == GRADCLIP_OK && bits(v) == c->fin);
        CHECK(k, gradclip_exact_partial_sum(&acc, &sum) == GRADCLIP_OK && bits(sum) == c->sum);
        break;
    }
    default:
        CHECK(k, 0 && "unknown op");
    }
    CHECK(k, hash_set(&s) == c->hash);
    free_set(&s);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: abi_cases data.bin\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    data = aligned_alloc(64, (GC_DATA_BYTES + 63) / 64 * 64 + 64);
    if (!data || fread(data, 1, GC_DATA_BYTES, f) != (size_t)GC_DATA_BYTES) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    if (strcmp(gradclip_version(), GC_VERSION) != 0 || strcmp(gradclip_isa(), GC_ISA) != 0) {
        fprintf(stderr, "version %s isa %s, expected %s %s\n", gradclip_version(), gradclip_isa(),
                GC_VERSION, GC_ISA);
        failures++;
    }
    const size_t ncases = sizeof CASES / sizeof CASES[0];
    const size_t threads[] = {1, 2, 3, 0};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        if (gradclip_set_num_threads(threads[t]) != GRADCLIP_OK) {
            fprintf(stderr, "gradclip_set_num_threads(%zu) failed\n", threads[t]);
            failures++;
        }
        for (size_t k = 0; k < ncases; k++) run_case(k, &CASES[k]);
    }
    free(data);
    if (failures) {
        fprintf(stderr, "abi_cases: %d failed checks\n", failures);
        return 1;
    }
    printf("abi_cases: ok (%zu cases x 4 thread counts)\n", ncases);
    return 0;
}
