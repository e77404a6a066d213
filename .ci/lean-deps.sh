#!/usr/bin/env bash
# The library's default dependency set is rayon, half and bytemuck (and their own dependencies):
# a scratch crate that depends on gradclip with default features must see exactly those three
# as gradclip's direct normal dependencies. Prints the full count for the record.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "gradclip-lean-deps-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
gradclip = { path = "$root" }

[workspace]
TOML
echo 'fn main() {}' >"$tmp/src/main.rs"
cd "$tmp"
direct=$(cargo tree -e normal --depth 1 --prefix none -p gradclip | tail -n +2 | awk '{print $1}' | sort -u | tr '\n' ' ')
all=$(cargo tree -e normal --prefix none | awk '{print $1}' | sort -u | grep -vc -e '^gradclip$' -e '^gradclip-lean-deps-check$')
echo "gradclip default features: direct dependencies: $direct; crates in the tree: $all"
if [ "$direct" != "bytemuck half rayon " ]; then
    echo "the default dependency set must be rayon, half, bytemuck" >&2
    exit 1
fi
