#!/usr/bin/env bash
# The MPI example (capi/examples/mpi_clip.c) on 1, 2 and 3 ranks over loopback TCP, in both modes:
# - compensated (40-byte partials): every rank must print the same norm bits, equal to the norm of
#   the same partition computed in one process (capi/examples/mpi_reference.c), and the same
#   clipped-shard hash;
# - exact (--exact, 96-byte partials, each rank merging in its own order): every rank must print
#   the same norm bits, equal to the exact norm of the WHOLE, unsharded set computed in one
#   process (gradclip_total_norm_with, GRADCLIP_SUMMATION_EXACT) for every number of ranks, and
#   the hash of its shard cut from the whole set clipped in one process.
# Needs mpicc and mpirun (Debian: openmpi-bin libopenmpi-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gradclip-capi
out=target/mpi
mkdir -p "$out"
link=(target/release/libgradclip.a -lpthread -ldl -lm)
flags=(-std=c11 -Wall -Wextra -Werror -O2 -I capi/include)
mpicc "${flags[@]}" capi/examples/mpi_clip.c "${link[@]}" -o "$out/mpi_clip"
cc "${flags[@]}" capi/examples/mpi_reference.c "${link[@]}" -o "$out/mpi_reference"

# Loopback only: TCP between ranks on 127.0.0.1 (plus self), no shared-memory or fabric transports.
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo \
    OMPI_MCA_oob_tcp_if_include=lo
run_flags=(--oversubscribe)
if [ "$(id -u)" = 0 ]; then run_flags+=(--allow-run-as-root); fi

fail() {
    echo "$1" >&2
    if [ -n "${2:-}" ]; then cat "$2" >&2; fi
    exit 1
}

# Runs `mpi_clip $mode` on $np ranks into $out/$name.ranks (sorted rank lines) and checks one line
# per rank and one norm value among them; prints that norm's bits.
run_ranks() {
    local np=$1 name=$2 mode=${3:-}
    mpirun "${run_flags[@]}" -np "$np" "$out/mpi_clip" ${mode:+"$mode"} >"$out/$name.txt"
    grep '^rank ' "$out/$name.txt" | sort >"$out/$name.ranks"
    [ "$(wc -l <"$out/$name.ranks")" = "$np" ] ||
        fail "mpirun -np $np $mode: expected $np rank lines" "$out/$name.txt"
    [ "$(awk '{print $4}' "$out/$name.ranks" | sort -u | wc -l)" = 1 ] ||
        fail "mpirun -np $np $mode: the ranks disagree on the norm bits" "$out/$name.txt"
    awk 'NR == 1 {print $4}' "$out/$name.ranks"
}

whole=$("$out/mpi_reference" --exact-norm)
echo "exact L2 norm of the whole, unsharded set in one process: $whole"
for np in 1 2 3; do
    # Compensated: the one-process result of the same partition.
    bits=$(run_ranks "$np" "mpi_np$np")
    "$out/mpi_reference" "$np" | sort >"$out/ref_np$np.ranks"
    diff -u "$out/ref_np$np.ranks" "$out/mpi_np$np.ranks" ||
        fail "mpirun -np $np: not the one-process result of the same partition"
    echo "np=$np compensated: norm $bits, equal on every rank and in one process; $(grep '^#' "$out/mpi_np$np.txt")"

    # Exact: the one-process result of the whole set, whatever the number of ranks.
    ebits=$(run_ranks "$np" "mpi_exact_np$np" --exact)
    [ "$ebits" = "$whole" ] ||
        fail "mpirun -np $np --exact: norm $ebits, not the unsharded norm $whole" "$out/mpi_exact_np$np.txt"
    "$out/mpi_reference" "$np" --exact | sort >"$out/ref_exact_np$np.ranks"
    diff -u "$out/ref_exact_np$np.ranks" "$out/mpi_exact_np$np.ranks" ||
        fail "mpirun -np $np --exact: the clipped shards are not the whole set clipped in one process"
    echo "np=$np exact: norm $ebits on every rank = the unsharded norm in one process; $(grep '^#' "$out/mpi_exact_np$np.txt")"
done
