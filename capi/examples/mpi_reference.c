/*
 * What mpi_clip.c computes with N ranks, in one process: the partial of each rank's shard,
 * merged in rank order, finished; each shard clipped with that norm. Prints the lines every rank
 * of `mpirun -np N mpi_clip` prints (.ci/mpi.sh compares them), and checks the sharded norm
 * against the norm of the whole, unsharded set (equal within 1e-14 relative; the reduction
 * trees differ, so the last bits may too).
 *
 *   mpi_reference N
 */
#include <math.h>

#include "shards.h"

int main(int argc, char **argv) {
    int nranks = argc == 2 ? atoi(argv[1]) : 0;
    if (nranks < 1) {
        fprintf(stderr, "usage: mpi_reference NRANKS\n");
        return 2;
    }
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
