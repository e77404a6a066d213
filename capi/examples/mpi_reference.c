/*
 * What mpi_clip.c computes with N ranks, in one process. Prints the lines every rank of
 * `mpirun -np N mpi_clip [--exact]` prints (.ci/mpi.sh compares them).
 *
 *   mpi_reference N          the compensated partial of each rank's shard, merged in rank
 *                            order, finished; each shard clipped with that norm. Also checks the
 *                            sharded norm against the unsharded one (within 1e-14 relative; the
 *                            reduction trees differ, so the last bits may too).
 *   mpi_reference N --exact  the whole, unsharded set clipped in one process with the exact
 *                            norm (gradclip_clip_grad_norm_with, GRADCLIP_SUMMATION_EXACT), then
 *                            cut into the N shards: the lines the ranks must print, bit for bit.
 *                            Also checks that the exact partials of the N shards, merged in
 *                            reverse rank order, finish to the unsharded norm's bits.
 *   mpi_reference --exact-norm
 *                            the bits of gradclip_total_norm_with(whole set, 2, EXACT).
 */
#include <math.h>

#include "shards.h"

static double whole_exact_norm(void) {
    shard_t whole;
    shard_build(&whole, 0, 1);
    double norm;
    check(gradclip_total_norm_with(whole.c, whole.n, 2.0, GRADCLIP_SUMMATION_EXACT, &norm, NULL),
          "gradclip_total_norm_with");
    shard_free(&whole);
    return norm;
}

static int compensated(int nranks) {
    gradclip_partial acc, part;
    memset(&acc, 0, sizeof acc);
    for (int r = 0; r < nranks; r++) {
        shard_t s;
        shard_build(&s, r, nranks);
        check(gradclip_partial_compute(s.c, s.n, 2.0, &part), "gradclip_partial_compute");
        check(gradclip_partial_merge(&acc, &part), "gradclip_partial_merge");
        shard_free(&s);
    }
    double norm;
    check(gradclip_partial_finish(&acc, &norm), "gradclip_partial_finish");
    for (int r = 0; r < nranks; r++) {
        shard_t s;
        shard_build(&s, r, nranks);
        check(gradclip_clip_grads_with_norm(s.g, s.n, MAX_NORM, norm), "clip");
        print_rank(r, nranks, norm, shard_hash(&s));
        shard_free(&s);
    }

    shard_t whole;
    shard_build(&whole, 0, 1);
    double one;
    check(gradclip_total_norm(whole.c, whole.n, 2.0, &one, NULL), "gradclip_total_norm");
    shard_free(&whole);
    double rel = fabs(norm - one) / one;
    fprintf(stderr, "# %d shards: norm %.17g, unsharded %.17g, relative difference %.3g\n", nranks,
            norm, one, rel);
    return rel <= 1e-14 ? 0 : 1;
}

static int exact(int nranks) {
    /* The whole set, clipped in one process with its exact norm. */
    shard_t whole;
    shard_build(&whole, 0, 1);
    gradclip_clip_report rep;
    check(gradclip_clip_grad_norm_with(whole.g, whole.n, MAX_NORM, 2.0,
                                       GRADCLIP_ON_NONFINITE_ERROR, GRADCLIP_SUMMATION_EXACT, &rep,
                                       NULL),
          "gradclip_clip_grad_norm_with");
    double norm = rep.total_norm;
    /* Each rank's shard, cut from the clipped whole. */
    for (int r = 0; r < nranks; r++) {
        shard_t s;
        shard_build(&s, r, nranks);
        for (size_t i = 0; i < s.n; i++) {
            size_t size = elem_size(s.g[i].dtype);
            memcpy(s.g[i].data, (char *)whole.g[s.tensor[i]].data + s.start[i] * size,
                   s.g[i].len * size);
        }
        print_rank(r, nranks, norm, shard_hash(&s));
        shard_free(&s);
    }
    shard_free(&whole);

    /* The shards' exact partials, merged in reverse rank order: the unsharded bits. */
    gradclip_exact_partial acc, part;
    memset(&acc, 0, sizeof acc);
    for (int r = nranks - 1; r >= 0; r--) {
        shard_t s;
        shard_build(&s, r, nranks);
        check(gradclip_exact_partial_compute(s.c, s.n, 2.0, &part),
              "gradclip_exact_partial_compute");
        check(gradclip_exact_partial_merge(&acc, &part), "gradclip_exact_partial_merge");
        shard_free(&s);
    }
    double sharded, one = whole_exact_norm();
    check(gradclip_exact_partial_finish(&acc, &sharded), "gradclip_exact_partial_finish");
    int same = double_bits(sharded) == double_bits(one) && double_bits(norm) == double_bits(one);
    fprintf(stderr, "# %d shards, exact: norm %016llx, unsharded %016llx: %s\n", nranks,
            (unsigned long long)double_bits(sharded), (unsigned long long)double_bits(one),
            same ? "identical" : "DIFFERENT");
    return same ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--exact-norm") == 0) {
        printf("%016llx\n", (unsigned long long)double_bits(whole_exact_norm()));
        return 0;
    }
    int nranks = argc >= 2 ? atoi(argv[1]) : 0;
    int is_exact = argc == 3 && strcmp(argv[2], "--exact") == 0;
    if (nranks < 1 || argc > 3 || (argc == 3 && !is_exact)) {
        fprintf(stderr, "usage: mpi_reference NRANKS [--exact] | mpi_reference --exact-norm\n");
        return 2;
    }
    return is_exact ? exact(nranks) : compensated(nranks);
}
