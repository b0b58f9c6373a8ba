#!/usr/bin/env bash
# pgtide's main job on an embedded default: two throwaway PostgreSQL servers, a sample shop
# database, a full load with progress, verification, report. Leaves nothing running.
# Extra arguments go to `pgtide demo` (e.g. --scale 5 --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres
cargo build --locked --release -p pgtide
exec ./target/release/pgtide demo "$@"
