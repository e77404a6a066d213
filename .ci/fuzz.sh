#!/usr/bin/env bash
# Runs every cargo-fuzz target of gradclip for a fixed time and fails on any crash.
#
#   .ci/fuzz.sh [SECONDS]          (default 60 per target)
#
# Installs cargo-fuzz when it is missing (needs a nightly toolchain: `rustup toolchain install
# nightly`). Corpora grow in fuzz/corpus/<target> (not committed); the committed seeds in
# fuzz/seeds/<target> are read but never written. A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit non-zero; reproduce it with
#   cargo +nightly fuzz run -O <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build -O

status=0
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    [ -d "seeds/$target" ] && dirs+=("seeds/$target")
    extra=()
    [ -f "$target.dict" ] && extra+=("-dict=$target.dict")
    [ "$target" = safetensors_cli ] && extra+=("-dict=safetensors.dict")
    log="$(mktemp)"
    echo "== $target: ${secs}s" >&2
    if cargo +nightly fuzz run -O "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1; then
        grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units' "$log" >&2 || true
    else
        status=1
        tail -n 60 "$log" >&2
        echo "== $target: CRASH (see fuzz/artifacts/$target/)" >&2
    fi
    rm -f "$log"
done
exit "$status"
