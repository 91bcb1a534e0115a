#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for tests and benchmarks:
#   scripts/postgres.sh DIR PORT
#
# initdb + pg_ctl in DIR (no system service, nothing outside DIR), listening
# on 127.0.0.1:PORT only, with a superuser `idsync` whose password is
# "idsync-test" (override with PG_PASSWORD) and scram-sha-256 authentication
# over TCP, so the client's password path is the one production uses.
# Installs Debian's `postgresql` when initdb is missing. Prints the data
# directory on success; stop the cluster with `pg_ctl -D DIR/data stop`.
#
# With PG_TLS=1 it also makes a throwaway CA and a server certificate for
# 127.0.0.1/localhost (DIR/tls/ca.crt) and turns ssl on.
#
# PostgreSQL refuses to run as root: when run as root, the cluster belongs to
# the `postgres` user the Debian package creates, and DIR is handed to it.
#
# Settings are for tests, not production: fsync off (a killed test cluster
# is thrown away), more connections than the default for several operator
# processes and parallel tests.
set -euo pipefail

DIR=${1:?usage: postgres.sh DIR PORT}
PORT=${2:?usage: postgres.sh DIR PORT}
PASSWORD=${PG_PASSWORD:-idsync-test}

find_bin() {
  local found
  for found in /usr/lib/postgresql/*/bin; do
    if [ -x "$found/initdb" ]; then
      echo "$found"
      return 0
    fi
  done
  return 1
}

if ! BIN=$(find_bin); then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends postgresql >"$DIR.apt.log" 2>&1; then
    apt-get update >>"$DIR.apt.log" 2>&1
    apt-get install -y --no-install-recommends postgresql >>"$DIR.apt.log" 2>&1 || {
      cat "$DIR.apt.log" >&2
      exit 1
    }
  fi
  BIN=$(find_bin)
fi

mkdir -p "$DIR"
RUN=()
if [ "$(id -u)" = 0 ]; then
  # The postgres user must reach DIR: open the folders above it for
  # traversal (temporary folders are 0700) and give it DIR.
  d=$DIR
  while [ "$d" != / ] && [ -n "$d" ]; do
    chmod o+x "$d" 2>/dev/null || true
    d=$(dirname "$d")
  done
  chown postgres: "$DIR"
  RUN=(runuser -u postgres --)
fi

printf '%s\n' "$PASSWORD" >"$DIR/pwfile"
[ "$(id -u)" = 0 ] && chown postgres: "$DIR/pwfile"
"${RUN[@]}" "$BIN/initdb" -D "$DIR/data" -U idsync --pwfile="$DIR/pwfile" -A scram-sha-256 \
  -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 || {
  cat "$DIR/initdb.log" >&2
  exit 1
}
rm -f "$DIR/pwfile"
cat >>"$DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
CONF
if [ "${PG_TLS:-}" = 1 ]; then
  T="$DIR/tls"
  "$(dirname "$0")/test-ca.sh" "$T"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$T"
  cat >>"$DIR/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$T/server.crt'
ssl_key_file = '$T/server.key'
CONF
fi
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 start >"$DIR/pg_ctl.log" 2>&1 || {
  cat "$DIR/pg_ctl.log" "$DIR/postgres.log" >&2
  exit 1
}
echo "$DIR/data"
