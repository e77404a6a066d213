/*
 * Distributed gradient clipping on MPI: each rank holds a shard of one gradient set (cut at
 * arbitrary element boundaries, mixed dtypes; see shards.h), computes the 40-byte partial of its
 * shard, all-gathers the partials, merges them in rank order, finishes, and clips its shard with
 * the global norm. Every rank gets the same norm bits: the merge order is the same everywhere.
 *
 *   cargo build --release -p gradclip-capi
 *   mpicc -std=c11 -O2 -I capi/include capi/examples/mpi_clip.c target/release/libgradclip.a \
 *         -lpthread -ldl -lm -o mpi_clip
 *   mpirun -np 3 ./mpi_clip
 *
 * .ci/mpi.sh runs it with 1, 2 and 3 ranks and compares the output with mpi_reference.c.
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

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    shard_t shard;
    shard_build(&shard, rank, nranks);
    double norm = global_norm(&shard, nranks);
    if (!isfinite(norm)) {
        /* a NaN or inf somewhere: every rank sees it, every rank skips the step */
        if (rank == 0) printf("non-finite gradients: step skipped\n");
    } else {
        check(gradclip_clip_grads_with_norm(shard.g, shard.n, MAX_NORM, norm), "clip");
    }
    print_rank(rank, nranks, norm, shard_hash(&shard));

    double after = global_norm(&shard, nranks);
    if (rank == 0) printf("# norm after clipping to %g: %.9f\n", MAX_NORM, after);

    shard_free(&shard);
    MPI_Finalize();
    return 0;
}
