#!/usr/bin/env bash
# Sourced by .ci/run: a throw-away PostgreSQL server for the tests that share a sweep through one.
#   pg_start  installs the Debian package when no server is there, creates a cluster in a temporary folder owned by
#             an unprivileged user (postgres refuses to run as root), starts it on a free local port and exports
#             FPAR_TEST_POSTGRES_URL (postgresql+psycopg://fpar@127.0.0.1:PORT/fpar_test)
#   pg_stop   stops it and removes the folder
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

pg_as() {  # run a command as the unprivileged owner of the cluster
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

pg_start() {
  local t0=$SECONDS bin
  bin=$(pg_bin)
  if [ -z "$bin" ]; then
    echo "PostgreSQL not found: installing the Debian package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(pg_bin)
  fi
  PG_USER=$(id -un)
  if [ "$(id -u)" = 0 ]; then
    PG_USER=postgres
    id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
  fi
  PG_DIR=$(mktemp -d /tmp/fpar-pg.XXXXXX)
  chown "$PG_USER" "$PG_DIR"
  PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pg_as "$bin/initdb" -D "$PG_DIR/data" -U fpar -A trust --no-sync >/dev/null
  pg_as "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 30 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  pg_as "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U fpar fpar_test
  export PG_BIN=$bin PG_DIR PG_USER
  export FPAR_TEST_POSTGRES_URL="postgresql+psycopg://fpar@127.0.0.1:$PG_PORT/fpar_test"
  echo "PostgreSQL on port $PG_PORT ($PG_DIR), started in $((SECONDS - t0)) s"
}

pg_stop() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
