#!/usr/bin/env bash
# Full-load benchmark, all tools in one run on the same two local servers:
#
#   pgtide run                                   (the task's default settings, threads=$THREADS)
#   raw COPY (FORMAT binary) pipe per table      (the physical floor for the data phase; $JOBS at once)
#   pg_dump -Fd -j$JOBS + pg_restore -j$JOBS
#   pgcopydb clone --table-jobs $JOBS --index-jobs $JOBS
#
# Source: pgbench scale $SCALE (~750 MB at 50) plus a $WIDE_ROWS-row wide table with
# text/jsonb/numeric/timestamptz (~650 MB at 2M). Every tool loads into a fresh empty database.
# Prints each time as a ratio to pgtide's, pgtide's data phase against the raw pipe, and
# pgtide's peak RSS. Each tool runs $REPS times (default 2), interleaved; the best time counts.
# Installs PostgreSQL, pgcopydb and GNU time when missing.
#
#   bench/fullload.sh                    # the full-size run from the issue
#   SCALE=5 WIDE_ROWS=200000 bench/fullload.sh   # a quick one
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres
command -v pgcopydb >/dev/null 2>&1 || apt_install pgcopydb
[ -x /usr/bin/time ] || apt_install time

cargo build --locked --release -p pgtide >/dev/null
PGTIDE=$PWD/target/release/pgtide
. bench/source.sh
JOBS=${JOBS:-2}
THREADS=${THREADS:-4}
REPS=${REPS:-2}

fresh_target() {
    "$BIN/psql" -X -q -h "$WORK" -p "$DPORT" -U postgres -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" -c "CHECKPOINT"
    sync
}
check_counts() { # tool
    local tbl a b
    for tbl in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history wide; do
        a=$(psrc -c "SELECT count(*) FROM $tbl"); b=$(pdst -c "SELECT count(*) FROM $tbl")
        if [ "$a" != "$b" ]; then echo "    WARNING: $1 left $tbl with $b rows, source has $a" >&2; fi
    done
}

cat > "$WORK/task.yaml" <<YAML
name: bench
source: { url: "$SRC" }
target: { url: "$DST" }
mode: full-load
full_load: { threads: $THREADS${PGTIDE_FULL_LOAD:+, $PGTIDE_FULL_LOAD} }
YAML
TABLES=$(psrc -c "SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY pg_relation_size(oid) DESC")
export BIN WORK SPORT DPORT

run_pgtide() {
    local t t0 d rss
    fresh_target
    /usr/bin/time -f "%e %M" -o "$WORK/pgtide.time" "$PGTIDE" --progress none --quiet run "$WORK/task.yaml" >"$WORK/pgtide.out"
    read -r t rss <"$WORK/pgtide.time"
    d=$(grep -o 'data [0-9.]* s' "$WORK/pgtide.out" | awk '{print $2}')
    check_counts pgtide
    echo "    pgtide: total ${t}s, data phase ${d}s, peak RSS $((rss / 1024)) MB"
    T_PGTIDE=$(best "${T_PGTIDE:-}" "$t"); T_DATA=$(best "${T_DATA:-}" "$d")
    RSS_KB=$(( rss > ${RSS_KB:-0} ? rss : ${RSS_KB:-0} ))
}
run_raw() {
    local t t0 d rss
    fresh_target
    "$BIN/pg_dump" --schema-only --section=pre-data -h "$WORK" -p "$SPORT" -U postgres bench | pdst >/dev/null
    t0=$(now)
    echo "$TABLES" | xargs -P "$JOBS" -I{} sh -c \
        '"$BIN/psql" -X -q -h "$WORK" -p "$SPORT" -U postgres -d bench -c "COPY {} TO STDOUT (FORMAT binary)" | "$BIN/psql" -X -q -h "$WORK" -p "$DPORT" -U postgres -d bench -c "COPY {} FROM STDIN (FORMAT binary)"'
    t=$(secs "$t0" "$(now)")
    check_counts raw
    echo "    raw COPY pipe: ${t}s"
    T_RAW=$(best "${T_RAW:-}" "$t")
}
run_dump() {
    local t t0 d rss
    fresh_target
    t0=$(now)
    "$BIN/pg_dump" -Fd -j "$JOBS" -f "$WORK/dump" -h "$WORK" -p "$SPORT" -U postgres bench
    "$BIN/pg_restore" -j "$JOBS" -d bench -h "$WORK" -p "$DPORT" -U postgres "$WORK/dump"
    t=$(secs "$t0" "$(now)")
    rm -rf "$WORK/dump"
    check_counts pg_dump
    echo "    pg_dump + pg_restore: ${t}s"
    T_DUMP=$(best "${T_DUMP:-}" "$t")
}
run_pgcopydb() {
    local t t0 d rss
    fresh_target
    rm -rf "$WORK/pgcopydb"
    t0=$(now)
    pgcopydb clone --source "$SRC" --target "$DST" --table-jobs "$JOBS" --index-jobs "$JOBS" \
        --dir "$WORK/pgcopydb" >"$WORK/pgcopydb.log" 2>&1 || { tail -20 "$WORK/pgcopydb.log"; exit 1; }
    t=$(secs "$t0" "$(now)")
    check_counts pgcopydb
    echo "    pgcopydb: ${t}s"
    T_PGCOPYDB=$(best "${T_PGCOPYDB:-}" "$t")
}

# Each tool runs $REPS times, interleaved, and its best time counts: whichever tool runs right
# after the source is built (or after another tool) must not pay for the other's write-back.
sync; sleep 5
for rep in $(seq 1 "$REPS"); do
    echo "==> round $rep of $REPS"
    run_pgtide; run_raw; run_dump; run_pgcopydb
done

cat <<EOF

full load of a $SIZE database on $(nproc) cores (best of $REPS, seconds; ratio = tool / pgtide)
  pgtide run (threads $THREADS)            $T_PGTIDE   1.00
  pgcopydb clone ($JOBS+$JOBS jobs)          $T_PGCOPYDB   $(ratio "$T_PGCOPYDB" "$T_PGTIDE")
  pg_dump -j$JOBS + pg_restore -j$JOBS       $T_DUMP   $(ratio "$T_DUMP" "$T_PGTIDE")
  pgtide data phase                  $T_DATA
  raw COPY pipe ($JOBS at a time)         $T_RAW   pgtide data phase / raw pipe = $(ratio "$T_DATA" "$T_RAW")
  pgtide peak RSS                    $((RSS_KB / 1024)) MB
targets: pgtide <= pgcopydb: $(ratio "$T_PGTIDE" "$T_PGCOPYDB") (<= 1.00), pgtide / (pg_dump+pg_restore): $(ratio "$T_PGTIDE" "$T_DUMP") (<= 0.60),
         data phase / raw pipe: $(ratio "$T_DATA" "$T_RAW") (<= 1.15), peak RSS < 200 MB
EOF
