#!/usr/bin/env bash
# Full load into MariaDB: pgtide (PostgreSQL → LOAD DATA LOCAL INFILE streamed from memory,
# parallel tables, one snapshot) against the floor: MariaDB's own LOAD DATA LOCAL INFILE of
# the same rows from local files, on the same server and the same converted tables (the files
# are written beforehand and their writing is not timed). Prints the ratio floor / pgtide
# (1.00 = as fast as loading local files).
#
# Then the same load with mysql.load_method: insert (the fallback without local_infile).
#
# Usage: bench/mysql_load.sh   (SCALE=10 WIDE_ROWS=500000 by default, ~350 MB of source)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_postgres
ensure_mariadb
SCALE=${SCALE:-10}
WIDE_ROWS=${WIDE_ROWS:-500000}
cargo build --release --locked -q
PGTIDE=$PWD/target/release/pgtide
. bench/source.sh

MYPORT=${MYPORT:-55436}
MY="$WORK/maria"
mkdir -p "$MY"
[ "$(id -u)" -eq 0 ] && chown "${PGTIDE_TEST_USER:-postgres}" "$MY"
install_db=$(command -v mariadb-install-db || command -v mysql_install_db)
mariadbd=$(command -v mariadbd || ls /usr/sbin/mariadbd)
client=$(command -v mariadb || command -v mysql)
"${runas[@]}" "$install_db" --no-defaults --datadir="$MY/data" --auth-root-authentication-method=normal \
    --skip-test-db ${runas:+--user=${PGTIDE_TEST_USER:-postgres}} >/dev/null
"${runas[@]}" "$mariadbd" --no-defaults --datadir="$MY/data" --port="$MYPORT" --bind-address=127.0.0.1 \
    --socket="$MY/sock" --pid-file="$MY/pid" --log-error="$MY/log" --skip-log-bin --local-infile=1 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_bin --innodb-buffer-pool-size=2G \
    --innodb-log-file-size=1G --innodb-flush-log-at-trx-commit=2 --skip-name-resolve &
stop_maria() { [ -f "$MY/pid" ] && kill "$(cat "$MY/pid")" 2>/dev/null; sleep 2; cleanup; }
trap stop_maria EXIT
for _ in $(seq 1 60); do [ -S "$MY/sock" ] && break; sleep 0.5; done
my() { "$client" --no-defaults --socket="$MY/sock" -uroot -N -B --local-infile=1 --default-character-set=utf8mb4 "$@"; }
my -e "CREATE USER 'pgtide'@'%' IDENTIFIED BY 'pgtide'; GRANT ALL ON *.* TO 'pgtide'@'%'; CREATE DATABASE bench CHARACTER SET utf8mb4"

TASK="$WORK/mysql.yaml"
cat >"$TASK" <<YAML
name: bench_mysql
source: { url: "$SRC" }
target: { url: "mysql://pgtide:pgtide@127.0.0.1:$MYPORT/bench" }
mode: full-load
full_load: { threads: 2 }
YAML

echo "==> pgtide full load into MariaDB"
t0=$(now)
"$PGTIDE" --progress none run "$TASK" >"$WORK/pgtide.out"
t1=$(now)
T_PGTIDE=$(secs "$t0" "$t1")
cat "$WORK/pgtide.out"

echo "==> the floor: LOAD DATA LOCAL INFILE of the same rows from local files"
tables=$(my bench -e "SELECT table_name FROM information_schema.tables WHERE table_schema = 'bench' AND table_name <> '_pgtide_cdc'")
for t in $tables; do
    # SELECT ... INTO OUTFILE writes the server's own LOAD DATA format.
    my bench -e "SELECT * FROM \`$t\` INTO OUTFILE '$MY/$t.tsv'"
done
for t in $tables; do my bench -e "SET FOREIGN_KEY_CHECKS = 0; TRUNCATE TABLE \`$t\`"; done
t0=$(now)
pids=()
for t in $tables; do
    # Two at a time, like pgtide's two workers.
    my bench -e "SET FOREIGN_KEY_CHECKS = 0, UNIQUE_CHECKS = 1; START TRANSACTION; \
        LOAD DATA LOCAL INFILE '$MY/$t.tsv' INTO TABLE \`$t\` CHARACTER SET utf8mb4; COMMIT" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait "${pids[@]}"
t1=$(now)
T_FLOOR=$(secs "$t0" "$t1")

echo "==> pgtide full load with multi-row INSERT (what servers with local_infile off get)"
INSERT_TASK="$WORK/mysql-insert.yaml"
{ cat "$TASK"; echo "mysql: { load_method: insert }"; } >"$INSERT_TASK"
t0=$(now)
"$PGTIDE" --progress none run "$INSERT_TASK" >"$WORK/pgtide-insert.out"
t1=$(now)
T_INSERT=$(secs "$t0" "$t1")

echo "==> pgtide full load with LOAD DATA again (caches now as warm as for the INSERT run)"
t0=$(now)
"$PGTIDE" --progress none run "$TASK" >"$WORK/pgtide-again.out"
t1=$(now)
T_AGAIN=$(secs "$t0" "$t1")

echo
echo "full load into MariaDB ($(cat "$MY"/*.tsv | wc -c | awk '{printf "%.0f MB of rows", $1/1e6}'); pgtide's time includes creating the tables and adding foreign keys)"
echo "  pgtide (from PostgreSQL):            ${T_PGTIDE} s"
echo "  LOAD DATA from local files (floor):  ${T_FLOOR} s"
echo "  ratio floor/pgtide:                  $(ratio "$T_FLOOR" "$T_PGTIDE")"
echo "  pgtide with multi-row INSERT:        ${T_INSERT} s (floor/insert $(ratio "$T_FLOOR" "$T_INSERT"))"
echo "  pgtide with LOAD DATA, second run:   ${T_AGAIN} s (floor/pgtide $(ratio "$T_FLOOR" "$T_AGAIN"); LOAD DATA/INSERT $(ratio "$T_AGAIN" "$T_INSERT"))"
