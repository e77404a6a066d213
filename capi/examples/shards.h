/*
 * The gradient set of the MPI example, and how N ranks split it: shared by mpi_clip.c (one
 * shard per MPI rank) and mpi_reference.c (every shard in one process).
 *
 * Six tensors of mixed dtypes, with values that are a pure function of (tensor, index), laid end
 * to end and cut into N contiguous ranges at arbitrary element boundaries: a rank may hold the
 * tail of one tensor and the head of the next, and a tensor may span several ranks.
 */
#ifndef GRADCLIP_EXAMPLE_SHARDS_H
#define GRADCLIP_EXAMPLE_SHARDS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradclip.h"

#define NTENSORS 6
static const gradclip_dtype TENSOR_DTYPE[NTENSORS] = {GRADCLIP_F32,  GRADCLIP_BF16,
                                                      GRADCLIP_F16,  GRADCLIP_F32,
                                                      GRADCLIP_F32,  GRADCLIP_BF16};
static const size_t TENSOR_LEN[NTENSORS] = {300007, 70001, 12345, 1, 200000, 2 * 65536 + 3};

static inline size_t total_len(void) {
    size_t t = 0;
    for (int i = 0; i < NTENSORS; i++) t += TENSOR_LEN[i];
    return t;
}

/* Where rank r's range starts (r = nranks: the end); deliberately not on any round boundary. */
static inline size_t cut(int r, int nranks) {
    if (r <= 0) return 0;
    if (r >= nranks) return total_len();
    return total_len() / (size_t)nranks * (size_t)r + ((size_t)r * 7919u) % 1013u;
}

/* Element i of tensor t as raw bits: finite; f32 and bf16 magnitudes 2^-15 .. 1, f16 from
 * subnormals up to 1. */
static inline uint32_t mix(int t, size_t i) {
    uint64_t x = ((uint64_t)i + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)t << 56);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return (uint32_t)x;
}

static inline uint32_t f32_bits(int t, size_t i) {
    uint32_t x = mix(t, i);
    return (x & 0x80000000u) | ((112u + ((x >> 23) & 15u)) << 23) | (x & 0x7FFFFFu);
}

static inline uint16_t f16_bits(int t, size_t i) {
    uint32_t x = mix(t, i);
    return (uint16_t)(((x >> 16) & 0x8000u) | (((x >> 10) & 15u) << 10) | (x & 0x3FFu));
}

static inline size_t elem_size(gradclip_dtype d) { return d == GRADCLIP_F32 ? 4 : 2; }

/* One rank's part of the gradient set: its pieces of the tensors, as gradclip buffers. */
typedef struct {
    size_t n;
    gradclip_grad_mut g[NTENSORS];
    gradclip_grad c[NTENSORS];
    int tensor[NTENSORS];   /* piece i is elements start[i] .. start[i] + g[i].len */
    size_t start[NTENSORS]; /* of tensor tensor[i] */
} shard_t;

static inline void shard_build(shard_t *s, int rank, int nranks) {
    size_t lo = cut(rank, nranks), hi = cut(rank + 1, nranks), base = 0;
    s->n = 0;
    for (int t = 0; t < NTENSORS; t++) {
        size_t a = lo > base ? lo - base : 0;
        size_t b = hi - base < TENSOR_LEN[t] ? hi - base : TENSOR_LEN[t];
        if (hi > base && a < b) {
            gradclip_dtype d = TENSOR_DTYPE[t];
            void *p = malloc((b - a) * elem_size(d));
            if (!p) abort();
            for (size_t i = a; i < b; i++) {
                if (d == GRADCLIP_F32) {
                    uint32_t u = f32_bits(t, i);
                    memcpy((char *)p + (i - a) * 4, &u, 4);
                } else {
                    /* bf16: the upper half of an f32; f16: its own bits */
                    uint16_t h = d == GRADCLIP_BF16 ? (uint16_t)(f32_bits(t, i) >> 16)
                                                    : f16_bits(t, i);
                    memcpy((char *)p + (i - a) * 2, &h, 2);
                }
            }
            gradclip_grad_mut gm = {p, b - a, d};
            gradclip_grad gc = {p, b - a, d};
            s->g[s->n] = gm;
            s->c[s->n] = gc;
            s->tensor[s->n] = t;
            s->start[s->n] = a;
            s->n++;
        }
        base += TENSOR_LEN[t];
    }
}

static inline void shard_free(shard_t *s) {
    for (size_t i = 0; i < s->n; i++) free(s->g[i].data);
    s->n = 0;
}

/* FNV-1a 64 over the shard's bytes: shows that every rank clipped with the same coefficient. */
static inline uint64_t shard_hash(const shard_t *s) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < s->n; i++) {
        const unsigned char *p = s->g[i].data;
        for (size_t j = 0; j < s->g[i].len * elem_size(s->g[i].dtype); j++)
            h = (h ^ p[j]) * 0x100000001b3u;
    }
    return h;
}

static inline uint64_t double_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

static inline void check(int status, const char *what) {
    if (status != GRADCLIP_OK) {
        fprintf(stderr, "%s: %s\n", what, gradclip_status_str(status));
        exit(1);
    }
}

/* The line each rank prints (mpi_reference.c prints the same lines for every rank). */
static inline void print_rank(int rank, int nranks, double norm, uint64_t hash) {
    printf("rank %d/%d norm %016llx hash %016llx (norm %.17g)\n", rank, nranks,
           (unsigned long long)double_bits(norm), (unsigned long long)hash, norm);
    fflush(stdout);
}

#define MAX_NORM 1.0

#endif
