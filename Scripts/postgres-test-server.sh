#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: a fresh data directory, loopback only, run by an
# unprivileged user, password (SCRAM) authentication for a role that may create databases (each
# test makes its own database). Prints the two variables the tests read:
#   eval "$(Scripts/postgres-test-server.sh start /tmp/relay-pg)"   # then swift test
#   Scripts/postgres-test-server.sh stop /tmp/relay-pg
set -euo pipefail
action="${1:-}"
dir="${2:-/tmp/relay-pg}"
port="${RELAY_TEST_POSTGRES_PORT:-55432}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -n "$bin" ] || { echo "no PostgreSQL server found under /usr/lib/postgresql (apt-get install postgresql)" >&2; exit 1; }

# Who runs the server: never root (initdb and postgres refuse it).
user="$(id -un)"
if [ "$(id -u)" = 0 ]; then
  user=postgres
  id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
fi
as_user() { if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }

case "$action" in
start)
  if [ -f "$dir/data/postmaster.pid" ] && as_user "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    echo "already running in $dir" >&2
  else
    rm -rf "$dir"
    mkdir -p "$dir"
    chown "$user" "$dir"
    chmod 700 "$dir"
    password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
    printf '%s\n' "$password" > "$dir/password"
    chmod 600 "$dir/password"
    # The superuser exists only over the unix socket in $dir; the tests get a role with a password.
    as_user "$bin/initdb" -D "$dir/data" -U admin --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >/dev/null
    as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null
    # On stdin, not the command line: no password in the process list.
    printf "CREATE ROLE relay_test LOGIN CREATEDB PASSWORD '%s';\n" "$password" \
      | as_user "$bin/psql" -h "$dir" -p "$port" -U admin -d postgres -v ON_ERROR_STOP=1 -q >/dev/null
  fi
  echo "export RELAY_TEST_POSTGRES_URL=postgres://relay_test@127.0.0.1:$port/postgres"
  echo "export RELAY_TEST_POSTGRES_PASSWORD_FILE=$dir/password"
  ;;
stop)
  as_user "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
  ;;
*)
  echo "usage: $0 start|stop [DIR]" >&2
  exit 2
  ;;
esac
