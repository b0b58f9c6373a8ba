#!/usr/bin/env bash
# pgtide's whole test suite: formatting, lints, unit tests and end-to-end tests against real
# PostgreSQL (and MariaDB) servers started from this machine's binaries. Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres
ensure_mariadb
[ -n "${PGTIDE_PG17_BIN:-}" ] || ensure_npm
# A clean checkout gains nothing from incremental state, and it costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> disk: $(df -h --output=avail . | tail -1 | tr -d ' ') available for the build"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --workspace
