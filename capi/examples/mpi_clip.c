/*
 * Distributed gradient clipping on MPI: each rank holds a shard of one gradient set (cut at
 * arbitrary element boundaries, mixed dtypes; see shards.h), computes the partial of its shard,
 * all-gathers the partials, merges them, finishes, and clips its shard with the global norm.
 *
 * - Default: the 40-byte compensated partial, merged in rank order. Every rank gets the same
 *   norm bits (the merge order is the same everywhere), equal to the same partition computed in
 *   one process; a different number of ranks may differ in the last bits.
 * - --exact: the 96-byte exact partial (gradclip_exact_partial), merged by each rank in its own
 *   order (starting from itself: merging is exact, so the order does not matter). Every rank
 *   gets the bits of the whole, unsharded set computed in one process, for any number of ranks.
 *
 *   cargo build --release -p gradclip-capi
 *   mpicc -std=c11 -O2 -I capi/include capi/examples/mpi_clip.c target/release/libgradclip.a \
 *         -lpthread -ldl -lm -o mpi_clip
 *   mpirun -np 3 ./mpi_clip [--exact]
 *
 * .ci/mpi.sh runs both modes with 1, 2 and 3 ranks and compares the output with mpi_reference.c.
 */
#include <math.h>
#include <mpi.h>

#include "shards.h"

/* The global norm of every rank's shard: all-gather the partials, merge them in rank order. */
static double global_norm(const shard_t *s, int nranks) {
    gradclip_partial mine, acc;
    check(gradclip_partial_compute(s->c, s->n, 2.0, &mine), "gradclip_partial_compute");
    gradclip_partial *all = malloc((size_t)nranks * sizeof *all);
    if (!all) abort();
    MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                  MPI_COMM_WORLD);
    memset(&acc, 0, sizeof acc); /* all-zero: the identity of merge */
    for (int r = 0; r < nranks; r++) check(gradclip_partial_merge(&acc, &all[r]), "merge");
    free(all);
    double norm;
    check(gradclip_partial_finish(&acc, &norm), "gradclip_partial_finish");
    return norm;
}

/* The same with exact partials (96 bytes), each rank merging from its own rank onwards. */
static double global_norm_exact(const shard_t *s, int rank, int nranks) {
    gradclip_exact_partial mine, acc;
    check(gradclip_exact_partial_compute(s->c, s->n, 2.0, &mine),
          "gradclip_exact_partial_compute");
    gradclip_exact_partial *all = malloc((size_t)nranks * sizeof *all);
    if (!all) abort();
    MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                  MPI_COMM_WORLD);
    memset(&acc, 0, sizeof acc); /* all-zero: the identity of merge */
    for (int i = 0; i < nranks; i++)
        check(gradclip_exact_partial_merge(&acc, &all[(rank + i) % nranks]), "merge");
    free(all);
    double norm;
    check(gradclip_exact_partial_finish(&acc, &norm), "gradclip_exact_partial_finish");
    return norm;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    int exact = argc == 2 && strcmp(argv[1], "--exact") == 0;
    if (argc > 2 || (argc == 2 && !exact)) {
        if (rank == 0) fprintf(stderr, "usage: mpi_clip [--exact]\n");
        MPI_Finalize();
        return 2;
    }

    shard_t shard;
    shard_build(&shard, rank, nranks);
    double norm = exact ? global_norm_exact(&shard, rank, nranks) : global_norm(&shard, nranks);
    if (!isfinite(norm)) {
        /* a NaN or inf somewhere: every rank sees it, every rank skips the step */
        if (rank == 0) printf("non-finite gradients: step skipped\n");
    } else {
        check(gradclip_clip_grads_with_norm(shard.g, shard.n, MAX_NORM, norm), "clip");
    }
    print_rank(rank, nranks, norm, shard_hash(&shard));

    double after = exact ? global_norm_exact(&shard, rank, nranks) : global_norm(&shard, nranks);
    if (rank == 0)
        printf("# %s norm after clipping to %g: %.9f\n", exact ? "exact" : "compensated", MAX_NORM,
               after);

    shard_free(&shard);
    MPI_Finalize();
    return 0;
}
