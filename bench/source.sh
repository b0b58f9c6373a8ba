# Shared by bench/fullload.sh and bench/validate.sh (sourced, not run): two local servers in
# $WORK and the ~1.4 GB benchmark source: pgbench scale $SCALE (~750 MB at 50) plus a
# $WIDE_ROWS-row wide table with text/jsonb/numeric/timestamptz (~650 MB at 2M).
# Expects scripts/lib.sh to be sourced and `set -euo pipefail`.

SCALE=${SCALE:-50}
WIDE_ROWS=${WIDE_ROWS:-2000000}
WORK=${BENCH_DIR:-/tmp/pgtide-bench}
BIN=${PGTIDE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
SPORT=${SPORT:-55432}
DPORT=${DPORT:-55433}

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
best() { if [ -z "$1" ]; then echo "$2"; else awk -v a="$1" -v b="$2" 'BEGIN { print (b < a ? b : a) }'; fi; }

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
