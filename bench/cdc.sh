#!/usr/bin/env bash
# Change data capture benchmark, in one run on two local servers:
#
# (a) steady state: `pgbench -c 4 -j 2 -T $SECONDS` on the source, without and with pgtide
#     streaming to the target: source TPS both ways, replication lag p50/p99 (a probe row with a
#     timestamp is inserted on the source every 50 ms; lag = now - newest probe visible on the
#     target), catch-up time after pgbench stops, then a 2M-row transaction; pgtide's peak RSS.
# (b) backlog drain: pgtide's slot, a native subscription's slot (CREATE SUBSCRIPTION, disabled)
#     and pgcopydb's slot are created at the same quiet moment over identical target copies; one
#     `pgbench -T $SECONDS` backlog accumulates in all three; then each drains it in turn:
#     `pgtide run --end-lsn`, `ALTER SUBSCRIPTION ... ENABLE`, `pgcopydb follow --endpos`.
#     Drain rates are printed as ratios to native logical replication's. The drains of pgtide
#     and of native replication are repeated `DRAIN_RUNS` times (default 5) from a saved copy of
#     both servers taken once the backlog is written (same backlog, same target copies), in
#     alternating order; every pair's ratio is printed, and the median one is the result. On the
#     project's shared 2-core machine the pairs of one run have ranged from 1.7x to 3.0x.
#
#   bench/cdc.sh                 # the issue's run: 60 s of pgbench, scale 10
#   SECONDS_RUN=10 bench/cdc.sh  # a quick one
#   SKIP_STEADY=1 bench/cdc.sh   # only (b), e.g. while working on the drain
#   DRAIN_RUNS=1 bench/cdc.sh    # one drain each (the servers' copy is then not needed)
#   DRAIN_YAML='cdc: { catch_up_chunk_mb: 8 }' bench/cdc.sh   # lines added to the drain's task
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres
command -v pgcopydb >/dev/null 2>&1 || apt_install pgcopydb

RUN=${SECONDS_RUN:-60}
SCALE=${SCALE:-10}
WORK=${BENCH_DIR:-/tmp/pgtide-cdc-bench}
BIN=${PGTIDE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
MAJOR=$("$BIN/postgres" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
if ! [ -e "/usr/lib/postgresql/$MAJOR/lib/wal2json.so" ]; then
    apt_install "postgresql-$MAJOR-wal2json" || echo "    (wal2json unavailable: pgcopydb follow will be skipped)"
fi
SPORT=${SPORT:-56432}
DPORT=${DPORT:-56433}
cargo build --locked --release -p pgtide >/dev/null
PGTIDE=$PWD/target/release/pgtide

runas=()
if [ "$(id -u)" -eq 0 ]; then runas=(runuser -u "${PGTIDE_TEST_USER:-postgres}" --); fi
cleanup() {
    [ -n "${PGTIDE_PID:-}" ] && kill "$PGTIDE_PID" 2>/dev/null || true
    for d in src dst; do
        [ -d "$WORK/$d" ] && "${runas[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
[ "$(id -u)" -eq 0 ] && chown "${PGTIDE_TEST_USER:-postgres}" "$WORK"
start_cluster() { # name port
    "${runas[@]}" "$BIN/initdb" -D "$WORK/$1" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    start_server "$@"
}
start_server() { # name port
    "${runas[@]}" "$BIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start -o \
        "-p $2 -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_size=8GB \
         -c checkpoint_timeout=30min -c shared_buffers=512MB -c max_replication_slots=20 \
         -c max_wal_senders=20 -c max_logical_replication_workers=8" >/dev/null
}
start_cluster src "$SPORT"
start_cluster dst "$DPORT"
ps() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$WORK" -p "$SPORT" -U postgres "$@"; }
pd() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$WORK" -p "$DPORT" -U postgres "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
pgbench_run() { # seconds -> prints tps
    "$BIN/pgbench" -n -c 4 -j 2 -T "$1" -h "$WORK" -p "$SPORT" -U postgres src 2>/dev/null \
        | awk '/^tps/ { printf "%.0f", $3; exit }'
}
lsn_ge() { ps -d src -c "SELECT '$1'::pg_lsn >= '$2'::pg_lsn"; }
TICK=$(getconf CLK_TCK)
cluster_ticks() { # name -> CPU ticks of the cluster's postmaster, its live children and the reaped ones
    local pm; pm=$(head -n 1 "$WORK/$1/postmaster.pid")
    { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat"
      for c in $(pgrep -P "$pm"); do awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || true; done
    } | awk '{ s += $1 } END { print s }'
}
cpu_mark() { echo "$(cluster_ticks src) $(cluster_ticks dst)"; }
cpu_since() { # mark -> "source X s, target Y s" of CPU since the mark
    local now_; now_=$(cpu_mark)
    awk -v a="$1" -v b="$now_" -v t="$TICK" 'BEGIN { split(a, x); split(b, y); printf "source server %.1f CPU-s, target server %.1f CPU-s", (y[1] - x[1]) / t, (y[2] - x[2]) / t }'
}

echo "==> source: pgbench scale $SCALE, a lag probe table"
ps -d postgres -c "CREATE DATABASE src"
"$BIN/pgbench" -i -q -s "$SCALE" -h "$WORK" -p "$SPORT" -U postgres src >/dev/null 2>&1
ps -d src -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY" \
    -c "CREATE TABLE lag_probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())" \
    -c "CREATE TABLE bulk (id bigint PRIMARY KEY, a text)" -c "VACUUM ANALYZE" -c "CHECKPOINT"

probe() { # write a probe row every 50 ms until killed
    while true; do echo "INSERT INTO lag_probe DEFAULT VALUES;"; sleep 0.05; done \
        | "$BIN/psql" -X -q -h "$WORK" -p "$SPORT" -U postgres -d src >/dev/null 2>&1
}
sample_lag() { # db outfile: every 200 ms, seconds between now and the newest probe on the target
    while true; do
        pd -d "$1" -c "SELECT extract(epoch FROM clock_timestamp() - max(at)) FROM lag_probe" >>"$2" 2>/dev/null || true
        sleep 0.2
    done
}
percentile() { sort -n "$1" | awk -v p="$2" '{ a[NR] = $1 } END { i = int(NR * p / 100); if (i < 1) i = 1; printf "%.2f", a[i] }'; }

task() { # name db extra-yaml
    cat > "$WORK/$1.yaml" <<YAML
name: $1
source: { url: "postgresql://postgres@127.0.0.1:$SPORT/src?sslmode=disable" }
target: { url: "postgresql://postgres@127.0.0.1:$DPORT/$2?sslmode=disable" }
mode: full-load-and-cdc
$3
YAML
}

if [ "${SKIP_STEADY:-0}" != 1 ]; then
    echo "==> (a) steady state, $RUN s of pgbench -c 4 -j 2"
    TPS_ALONE=$(pgbench_run "$RUN")
    echo "    without pgtide: $TPS_ALONE tps"
    pd -d postgres -c "CREATE DATABASE steady"
    task steady steady "tables: { include: [\"public.*\"] }"
    "$PGTIDE" --progress none --quiet run "$WORK/steady.yaml" --end-lsn "$(ps -d src -c 'SELECT pg_current_wal_insert_lsn()')" >/dev/null
    "$PGTIDE" --progress none --quiet run "$WORK/steady.yaml" >"$WORK/steady.out" 2>&1 &
    PGTIDE_PID=$!
    peak_rss() { # pid outfile: the process's peak RSS (VmHWM, kB), sampled until it exits
        while [ -r "/proc/$1/status" ]; do awk '/VmHWM/ { print $2 }' "/proc/$1/status" >"$2.tmp" 2>/dev/null && mv "$2.tmp" "$2"; sleep 0.1; done
    }
    peak_rss "$PGTIDE_PID" "$WORK/steady.rss" & RSS_SAMPLER=$!
    sleep 2
    probe & PROBE=$!
    sample_lag steady "$WORK/lag.txt" & SAMPLER=$!
    TPS_WITH=$(pgbench_run "$RUN")
    t_stop=$(now)
    kill $PROBE 2>/dev/null; wait $PROBE 2>/dev/null || true
    last_probe=$(ps -d src -c "SELECT max(id) FROM lag_probe")
    until [ "$(pd -d steady -c "SELECT coalesce(max(id), 0) FROM lag_probe")" -ge "$last_probe" ]; do sleep 0.05; done
    T_CATCHUP=$(secs "$t_stop" "$(now)")
    kill $SAMPLER 2>/dev/null; wait $SAMPLER 2>/dev/null || true
    echo "    with pgtide: $TPS_WITH tps, lag p50 $(percentile "$WORK/lag.txt" 50) s, p99 $(percentile "$WORK/lag.txt" 99) s, caught up ${T_CATCHUP}s after pgbench stopped"
    echo "==> a 2M-row transaction while streaming"
    t0=$(now)
    ps -d src -c "INSERT INTO bulk SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 2000000) g"
    until [ "$(pd -d steady -c "SELECT count(*) FROM bulk")" = 2000000 ]; do sleep 0.2; done
    T_BULK=$(secs "$t0" "$(now)")
    kill -TERM "$PGTIDE_PID"; wait "$PGTIDE_PID" || true; PGTIDE_PID=
    wait "$RSS_SAMPLER" 2>/dev/null || true
    RSS_MB=$(( $(cat "$WORK/steady.rss" 2>/dev/null || echo 0) / 1024 ))
    echo "    applied in ${T_BULK}s; pgtide peak RSS over the whole steady-state run: $RSS_MB MB"
else
    echo "==> (a) steady state skipped (SKIP_STEADY=1)"
    TPS_ALONE=- TPS_WITH=- T_CATCHUP=- T_BULK=- RSS_MB=-
    echo 0 >"$WORK/lag.txt"
fi

echo "==> (b) backlog drain: three consumers start at the same quiet moment"
for db in drain_pgtide drain_native drain_pgcopydb; do pd -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"; done
ps -d src -c "TRUNCATE bulk" -c "CHECKPOINT"
task drain drain_pgtide "tables: { include: [\"public.*\"] }
${DRAIN_YAML:-}"
"$PGTIDE" --progress none --quiet run "$WORK/drain.yaml" --end-lsn "$(ps -d src -c 'SELECT pg_current_wal_insert_lsn()')" >/dev/null
"$BIN/pg_dump" -h "$WORK" -p "$SPORT" -U postgres src | pd -d drain_native >/dev/null
"$BIN/pg_dump" -h "$WORK" -p "$SPORT" -U postgres src | pd -d drain_pgcopydb >/dev/null
ps -d src -c "CREATE PUBLICATION native_pub FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, lag_probe, bulk"
pd -d drain_native -c "CREATE SUBSCRIPTION native_sub CONNECTION 'host=127.0.0.1 port=$SPORT user=postgres dbname=src' PUBLICATION native_pub WITH (copy_data = false, enabled = false)"
PGCOPYDB_OK=1
export PGCOPYDB_SOURCE_PGURI="postgresql://postgres@127.0.0.1:$SPORT/src?sslmode=disable"
export PGCOPYDB_TARGET_PGURI="postgresql://postgres@127.0.0.1:$DPORT/drain_pgcopydb?sslmode=disable"
pgcopydb stream setup --dir "$WORK/pgcopydb" >"$WORK/pgcopydb-setup.log" 2>&1 || { PGCOPYDB_OK=0; echo "    pgcopydb stream setup failed: $(grep -m1 -E 'ERROR|FATAL' "$WORK/pgcopydb-setup.log")"; }
TPS_BACKLOG=$(pgbench_run "$RUN")
END=$(ps -d src -c "SELECT pg_current_wal_insert_lsn()")
BACKLOG=$(ps -d src -c "SELECT pg_size_pretty(pg_wal_lsn_diff('$END', confirmed_flush_lsn)) FROM pg_replication_slots WHERE slot_name = 'native_sub'")
TXNS=$(ps -d src -c "SELECT count(*) FROM pgbench_history WHERE mtime > now() - interval '$((RUN + 30)) seconds'")
echo "    backlog: $TXNS pgbench transactions ($TPS_BACKLOG tps), $BACKLOG of WAL in each slot"

# Each drain starts on equal footing: no autovacuum running on either server (it is paused for
# the drains: a vacuum of the tables a drain just updated otherwise lands at random in the next
# drain, seen in both directions), the target's dirty buffers written out, and the tables of
# the database it applies to read into the target's buffer cache (pg_prewarm). Without this the
# drain that runs second found its database warmer: it was loaded later (pg_dump | psql), so
# more of its pages were still in shared_buffers.
for q in ps pd; do $q -d postgres -c "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null; done
even_start() { # database
    for _ in $(seq 600); do
        [ "$(ps -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")$(pd -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 00 ] && break
        sleep 0.2
    done
    pd -d postgres -c "CHECKPOINT"
    pd -d "$1" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" \
        -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')" >/dev/null
}

# CPU is accounted per server (postmaster, live backends, reaped ones) and for pgtide's process,
# so that a drain's time can be told apart into decoding on the source, pgtide and applying.
drain_pgtide() {
    even_start drain_pgtide
    local mark t0; mark=$(cpu_mark); t0=$(now)
    /usr/bin/time -f "%U %S" -o "$WORK/drain.cpu" "$PGTIDE" --progress none --quiet run "$WORK/drain.yaml" --end-lsn "$END" >"$WORK/drain.out"
    T_PGTIDE=$(secs "$t0" "$(now)")
    CPU_PGTIDE="$(cpu_since "$mark"), pgtide $(awk '{ printf "%.1f", $1 + $2 }' "$WORK/drain.cpu") CPU-s"
    echo "    pgtide: ${T_PGTIDE}s ($CPU_PGTIDE)"
}
drain_native() {
    even_start drain_native
    local mark t0; mark=$(cpu_mark); t0=$(now)
    pd -d drain_native -c "ALTER SUBSCRIPTION native_sub ENABLE"
    until [ "$(lsn_ge "$(ps -d src -c "SELECT coalesce(confirmed_flush_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'native_sub'")" "$END")" = t ]; do sleep 0.05; done
    T_NATIVE=$(secs "$t0" "$(now)")
    CPU_NATIVE=$(cpu_since "$mark")
    echo "    native logical replication: ${T_NATIVE}s ($CPU_NATIVE)"
}
check_identical() { # databases...
    local db q a b
    for db in "$@"; do
        for q in "SELECT count(*), sum(abalance) FROM pgbench_accounts" "SELECT count(*), max(id) FROM pgbench_history"; do
            a=$(ps -d src -c "$q"); b=$(pd -d "$db" -c "$q")
            [ "$a" = "$b" ] || echo "    WARNING: $db differs from the source for: $q ($b vs $a)"
        done
    done
}
stop_servers() { # mode
    for d in src dst; do "${runas[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -m "$1" -w stop >/dev/null; done
}

# Both servers are saved once the backlog is written (a clean shutdown, so the copy is
# consistent); each later pair of drains starts from that copy, on freshly started servers like
# the first. The first pair runs pgtide first, the next native first, and so on. Each copy
# (~1.3 GB) is written to disk (`sync`) before the servers start: the kernel otherwise wrote
# it back about 30 s later, in the middle of whichever drain was running then.
DRAIN_RUNS=${DRAIN_RUNS:-5}
if [ "$DRAIN_RUNS" -gt 1 ]; then
    stop_servers fast
    mkdir -p "$WORK/saved"
    cp -a "$WORK/src" "$WORK/dst" "$WORK/saved/"
    sync
    start_server src "$SPORT"; start_server dst "$DPORT"
fi
T_PGCOPYDB="-"
RATIOS=() T_PGTIDE_ALL=() T_NATIVE_ALL=() CPU_PGTIDE_ALL=() CPU_NATIVE_ALL=()
for run in $(seq "$DRAIN_RUNS"); do
    if [ "$run" -gt 1 ]; then
        stop_servers immediate
        rm -rf "$WORK/src" "$WORK/dst"
        cp -a "$WORK/saved/src" "$WORK/saved/dst" "$WORK/"
        sync
        start_server src "$SPORT"; start_server dst "$DPORT"
    fi
    echo "  drain pair $run of $DRAIN_RUNS"
    if [ $((run % 2)) = 1 ]; then drain_pgtide; drain_native; else drain_native; drain_pgtide; fi
    check_identical drain_pgtide drain_native
    RATIOS+=("$(ratio "$T_NATIVE" "$T_PGTIDE")")
    T_PGTIDE_ALL+=("$T_PGTIDE") T_NATIVE_ALL+=("$T_NATIVE") CPU_PGTIDE_ALL+=("$CPU_PGTIDE") CPU_NATIVE_ALL+=("$CPU_NATIVE")
    if [ "$run" = 1 ] && [ "$PGCOPYDB_OK" = 1 ]; then
        even_start drain_pgcopydb
        t0=$(now)
        # pgcopydb follow can hang after its own errors and exits 0 when killed, so it gets a
        # deadline (ten times the native drain, at least 120 s), its log is searched for errors,
        # and its target is compared with the source like the others before its time counts.
        deadline=$(awk -v t="$T_NATIVE" 'BEGIN { d = int(t * 10); print (d < 120 ? 120 : d) }')
        rc=0
        timeout "$deadline" pgcopydb follow --dir "$WORK/pgcopydb" --resume --not-consistent --endpos "$END" >"$WORK/pgcopydb-follow.log" 2>&1 || rc=$?
        T_ELAPSED=$(secs "$t0" "$(now)")
        if [ "$rc" = 124 ]; then
            echo "    pgcopydb follow did not reach the end LSN within ${deadline}s (killed); first error: $(grep -m1 -E ' (ERROR|FATAL) |BUG:' "$WORK/pgcopydb-follow.log" | cut -c1-160)"
        elif [ "$rc" != 0 ] || grep -qE ' (ERROR|FATAL) |BUG:' "$WORK/pgcopydb-follow.log"; then
            echo "    pgcopydb follow failed (exit $rc): $(grep -m1 -E ' (ERROR|FATAL) |BUG:' "$WORK/pgcopydb-follow.log")"
        else
            T_PGCOPYDB=$T_ELAPSED
            echo "    pgcopydb follow: ${T_PGCOPYDB}s"
            check_identical drain_pgcopydb
        fi
    fi
done
# The median pair (by ratio) gives the reported times.
MID=$(for i in "${!RATIOS[@]}"; do echo "${RATIOS[$i]} $i"; done | sort -n | awk -v n="${#RATIOS[@]}" 'NR == int((n + 1) / 2) { print $2 }')
T_PGTIDE=${T_PGTIDE_ALL[$MID]} T_NATIVE=${T_NATIVE_ALL[$MID]} CPU_PGTIDE=${CPU_PGTIDE_ALL[$MID]} CPU_NATIVE=${CPU_NATIVE_ALL[$MID]}

rate() { awk -v n="$TXNS" -v t="$1" 'BEGIN { if (t == "-" || t == 0) print "-"; else printf "%.0f", n / t }'; }
cat <<EOF

change data capture on $(nproc) cores, pgbench scale $SCALE, $RUN s runs
(a) steady state: source $TPS_ALONE tps alone, $TPS_WITH tps with pgtide attached ($(ratio "$TPS_WITH" "$TPS_ALONE")x)
    lag p50 $(percentile "$WORK/lag.txt" 50) s, p99 $(percentile "$WORK/lag.txt" 99) s (target: p99 < 1 s); caught up ${T_CATCHUP} s after pgbench stopped
    2M-row transaction applied in ${T_BULK} s; pgtide peak RSS $RSS_MB MB (target: < 256 MB)
(b) drain of $TXNS transactions ($BACKLOG of WAL), $DRAIN_RUNS pairs of drains; the median pair:
    pgtide            ${T_PGTIDE} s   $(rate "$T_PGTIDE") txn/s   ($CPU_PGTIDE)
    native (SUBSCRIPTION) ${T_NATIVE} s   $(rate "$T_NATIVE") txn/s   ($CPU_NATIVE)
    pgtide drain rate = $(ratio "$T_NATIVE" "$T_PGTIDE")x native (target >= 2); every pair: ${RATIOS[*]}
    pgcopydb follow   ${T_PGCOPYDB} s   $(rate "$T_PGCOPYDB") txn/s
EOF
