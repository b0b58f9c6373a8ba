#!/usr/bin/env bash
# Validation benchmark on the ~1.4 GB benchmark database (bench/source.sh), in one run:
#
#   pgtide validate --threads $THREADS      (bucketed checksums on both servers, in parallel)
#   baseline: per table, SELECT count(*) and the sum of an MD5 hash of every row, on both servers
#             at the same time, $JOBS tables at a time per server (psql; a plain "count + hash
#             scan" with no bucketing, no snapshot coordination and no way to name a difference)
#
# The target is a pgtide full load of the source. Each is run $REPS times, interleaved; the best
# time counts. Prints pgtide's time as a ratio to the baseline's, and checks that pgtide finds
# one changed row after a single value is altered on the target.
#
#   bench/validate.sh                              # the full-size run
#   SCALE=5 WIDE_ROWS=200000 bench/validate.sh     # a quick one
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres

cargo build --locked --release -p pgtide >/dev/null
PGTIDE=$PWD/target/release/pgtide
. bench/source.sh
JOBS=${JOBS:-2}
THREADS=${THREADS:-4}
REPS=${REPS:-2}

"$BIN/psql" -X -q -h "$WORK" -p "$DPORT" -U postgres -d postgres -c "CREATE DATABASE bench"
cat > "$WORK/task.yaml" <<YAML
name: bench
source: { url: "$SRC" }
target: { url: "$DST" }
mode: full-load
YAML
echo "==> loading the target with pgtide"
"$PGTIDE" --progress none --quiet run "$WORK/task.yaml" >/dev/null
pdst -c "VACUUM ANALYZE" -c "CHECKPOINT"
psrc -c "CHECKPOINT"

TABLES=$(psrc -c "SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY pg_relation_size(oid) DESC")
export BIN WORK SPORT DPORT

baseline_side() { # port
    # shellcheck disable=SC2016
    printf '%s\n' $TABLES | xargs -P "$JOBS" -I{} "$BIN/psql" -X -q -A -t -h "$WORK" -p "$1" -U postgres -d bench \
        -c "SELECT count(*), sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::int8::numeric) FROM ONLY {} t" >/dev/null
}
run_baseline() {
    local t0
    t0=$(now)
    baseline_side "$SPORT" & local a=$!
    baseline_side "$DPORT" & local b=$!
    wait $a; wait $b
    secs "$t0" "$(now)"
}
run_pgtide() {
    local t0
    t0=$(now)
    "$PGTIDE" --progress none --quiet validate "$WORK/task.yaml" --threads "$THREADS" >"$WORK/validate.out"
    secs "$t0" "$(now)"
}

T_PGTIDE=""; T_BASE=""
for rep in $(seq "$REPS"); do
    echo "==> round $rep"
    t=$(run_pgtide); echo "    pgtide validate: ${t}s"; T_PGTIDE=$(best "$T_PGTIDE" "$t")
    t=$(run_baseline); echo "    count + hash scan: ${t}s"; T_BASE=$(best "$T_BASE" "$t")
done

echo "==> one value changed on the target"
pdst -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 4242"
if "$PGTIDE" --progress none --quiet validate "$WORK/task.yaml" --threads "$THREADS" >"$WORK/validate-diff.out" 2>&1; then
    echo "    ERROR: pgtide validate did not find the changed row" >&2
    exit 1
fi
grep -q 'changed: ("aid")=(4242)' "$WORK/validate-diff.out" && echo "    found: $(grep 'changed:' "$WORK/validate-diff.out" | head -1 | sed 's/^ *//')"

cat <<EOF

validation of the benchmark database ($SIZE), best of $REPS, on $(nproc) cores
    pgtide validate --threads $THREADS   ${T_PGTIDE} s
    count(*) + hash scan, both sides ${T_BASE} s   (pgtide / baseline = $(ratio "$T_PGTIDE" "$T_BASE"))
EOF
