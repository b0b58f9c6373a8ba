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
# pgtide's peak RSS. Installs PostgreSQL, pgcopydb and GNU time when missing.
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

SCALE=${SCALE:-50}
WIDE_ROWS=${WIDE_ROWS:-2000000}
JOBS=${JOBS:-2}
THREADS=${THREADS:-4}
WORK=${BENCH_DIR:-/tmp/pgtide-bench}
BIN=${PGTIDE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
SPORT=${SPORT:-55432}
DPORT=${DPORT:-55433}

cargo build --locked --release -p pgtide >/dev/null
PGTIDE=$PWD/target/release/pgtide

runas=()
if [ "$(id -u)" -eq 0 ]; then runas=(runuser -u "${PGTIDE_TEST_USER:-postgres}" --); fi

cleanup() {
    for d in src dst; do
        [ -d "$WORK/$d" ] && "${runas[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
[ "$(id -u)" -eq 0 ] && chown "${PGTIDE_TEST_USER:-postgres}" "$WORK"

start_cluster() { # name port wal_level
    "${runas[@]}" "$BIN/initdb" -D "$WORK/$1" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    "${runas[@]}" "$BIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start -o \
        "-p $2 -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=$3 -c max_wal_size=8GB \
         -c checkpoint_timeout=30min -c shared_buffers=1GB -c maintenance_work_mem=256MB \
         -c max_wal_senders=10 -c max_replication_slots=10" >/dev/null
}
start_cluster src "$SPORT" logical
start_cluster dst "$DPORT" replica

SRC="postgresql://postgres@127.0.0.1:$SPORT/bench?sslmode=disable"
DST="postgresql://postgres@127.0.0.1:$DPORT/bench?sslmode=disable"
psrc() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$WORK" -p "$SPORT" -U postgres -d bench "$@"; }
pdst() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$WORK" -p "$DPORT" -U postgres -d bench "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "==> building the source: pgbench scale $SCALE + $WIDE_ROWS wide rows"
"$BIN/psql" -X -q -h "$WORK" -p "$SPORT" -U postgres -d postgres -c "CREATE DATABASE bench"
"$BIN/pgbench" -i -q -s "$SCALE" -h "$WORK" -p "$SPORT" -U postgres bench >/dev/null 2>&1
psrc <<SQL
CREATE TABLE wide (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text,
    attrs jsonb,
    price numeric(14,4),
    ratio numeric,
    created_at timestamptz NOT NULL,
    updated_at timestamptz
);
INSERT INTO wide
SELECT g, 'title ' || g, repeat(md5(g::text), 1 + g % 5),
       jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b', g % 10), 'flag', g % 2 = 0, 'name', md5((g * 3)::text)),
       (g % 100000) / 7.0, g / 3.0,
       '2020-01-01'::timestamptz + g * interval '17 seconds', CASE WHEN g % 3 = 0 THEN now() END
FROM generate_series(1, $WIDE_ROWS) g;
CREATE INDEX wide_created_idx ON wide (created_at);
VACUUM ANALYZE;
CHECKPOINT;
SQL
SIZE=$(psrc -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "    source database: $SIZE"

fresh_target() {
    "$BIN/psql" -X -q -h "$WORK" -p "$DPORT" -U postgres -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" -c "CHECKPOINT"
    sync
}
check_counts() { # tool
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history wide; do
        a=$(psrc -c "SELECT count(*) FROM $t"); b=$(pdst -c "SELECT count(*) FROM $t")
        if [ "$a" != "$b" ]; then echo "    WARNING: $1 left $t with $b rows, source has $a" >&2; fi
    done
}

echo "==> pgtide (threads=$THREADS)"
fresh_target
cat > "$WORK/task.yaml" <<YAML
name: bench
source: { url: "$SRC" }
target: { url: "$DST" }
mode: full-load
full_load: { threads: $THREADS${PGTIDE_FULL_LOAD:+, $PGTIDE_FULL_LOAD} }
YAML
/usr/bin/time -f "%e %M" -o "$WORK/pgtide.time" "$PGTIDE" --progress none --quiet run "$WORK/task.yaml" >"$WORK/pgtide.out"
read -r T_PGTIDE RSS_KB <"$WORK/pgtide.time"
T_DATA=$(grep -o 'data [0-9.]* s' "$WORK/pgtide.out" | awk '{print $2}')
check_counts pgtide
echo "    total ${T_PGTIDE}s, data phase ${T_DATA}s, peak RSS $((RSS_KB / 1024)) MB"

echo "==> raw COPY binary pipe, $JOBS tables at a time"
fresh_target
"$BIN/pg_dump" --schema-only --section=pre-data -h "$WORK" -p "$SPORT" -U postgres bench | pdst >/dev/null
TABLES=$(psrc -c "SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY pg_relation_size(oid) DESC")
export BIN WORK SPORT DPORT
t0=$(now)
echo "$TABLES" | xargs -P "$JOBS" -I{} sh -c \
    '"$BIN/psql" -X -q -h "$WORK" -p "$SPORT" -U postgres -d bench -c "COPY {} TO STDOUT (FORMAT binary)" | "$BIN/psql" -X -q -h "$WORK" -p "$DPORT" -U postgres -d bench -c "COPY {} FROM STDIN (FORMAT binary)"'
T_RAW=$(secs "$t0" "$(now)")
check_counts raw
echo "    ${T_RAW}s"

echo "==> pg_dump -Fd -j$JOBS + pg_restore -j$JOBS"
fresh_target
t0=$(now)
"$BIN/pg_dump" -Fd -j "$JOBS" -f "$WORK/dump" -h "$WORK" -p "$SPORT" -U postgres bench
"$BIN/pg_restore" -j "$JOBS" -d bench -h "$WORK" -p "$DPORT" -U postgres "$WORK/dump"
T_DUMP=$(secs "$t0" "$(now)")
rm -rf "$WORK/dump"
check_counts pg_dump
echo "    ${T_DUMP}s"

echo "==> pgcopydb clone --table-jobs $JOBS --index-jobs $JOBS"
fresh_target
t0=$(now)
PGCOPYDB_DIR="$WORK/pgcopydb" pgcopydb clone --source "$SRC" --target "$DST" --table-jobs "$JOBS" \
    --index-jobs "$JOBS" --dir "$WORK/pgcopydb" >"$WORK/pgcopydb.log" 2>&1 || { tail -20 "$WORK/pgcopydb.log"; exit 1; }
T_PGCOPYDB=$(secs "$t0" "$(now)")
check_counts pgcopydb
echo "    ${T_PGCOPYDB}s"

cat <<EOF

full load of a $SIZE database on $(nproc) cores (times in seconds; ratio = tool / pgtide)
  pgtide run (threads $THREADS)            $T_PGTIDE   1.00
  pgcopydb clone ($JOBS+$JOBS jobs)          $T_PGCOPYDB   $(ratio "$T_PGCOPYDB" "$T_PGTIDE")
  pg_dump -j$JOBS + pg_restore -j$JOBS       $T_DUMP   $(ratio "$T_DUMP" "$T_PGTIDE")
  pgtide data phase                  $T_DATA
  raw COPY pipe ($JOBS at a time)         $T_RAW   pgtide data phase / raw pipe = $(ratio "$T_DATA" "$T_RAW")
  pgtide peak RSS                    $((RSS_KB / 1024)) MB
targets: pgtide <= pgcopydb: $(ratio "$T_PGTIDE" "$T_PGCOPYDB") (<= 1.00), pgtide / (pg_dump+pg_restore): $(ratio "$T_PGTIDE" "$T_DUMP") (<= 0.60),
         data phase / raw pipe: $(ratio "$T_DATA" "$T_RAW") (<= 1.15), peak RSS < 200 MB
EOF
