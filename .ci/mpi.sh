#!/usr/bin/env bash
# The MPI example (capi/examples/mpi_clip.c) on 1, 2 and 3 ranks over loopback TCP: every rank
# must print the same norm bits, equal to the norm of the same partition computed in one process
# (capi/examples/mpi_reference.c), and the same clipped-shard hash. Needs mpicc and mpirun
# (Debian: openmpi-bin libopenmpi-dev).
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

for np in 1 2 3; do
    mpirun "${run_flags[@]}" -np "$np" "$out/mpi_clip" >"$out/mpi_np$np.txt"
    grep '^rank ' "$out/mpi_np$np.txt" | sort >"$out/mpi_np$np.ranks"
    "$out/mpi_reference" "$np" | sort >"$out/ref_np$np.ranks"
    if [ "$(wc -l <"$out/mpi_np$np.ranks")" != "$np" ]; then
        echo "mpirun -np $np: expected $np rank lines" >&2
        cat "$out/mpi_np$np.txt" >&2
        exit 1
    fi
    if [ "$(awk '{print $4}' "$out/mpi_np$np.ranks" | sort -u | wc -l)" != 1 ]; then
        echo "mpirun -np $np: the ranks disagree on the norm bits" >&2
        cat "$out/mpi_np$np.txt" >&2
        exit 1
    fi
    if ! diff -u "$out/ref_np$np.ranks" "$out/mpi_np$np.ranks"; then
        echo "mpirun -np $np: not the one-process result of the same partition" >&2
        exit 1
    fi
    echo "np=$np: $(head -n 1 "$out/mpi_np$np.ranks" | cut -d' ' -f3-4), equal on every rank and in one process; $(grep '^#' "$out/mpi_np$np.txt")"
done
