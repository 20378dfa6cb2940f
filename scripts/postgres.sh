#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: `up` installs PostgreSQL from the
# distribution's packages when it is missing, starts a cluster in a temporary folder on a
# free loopback port as the unprivileged `postgres` user, and writes its URL to
# $MEMVEE_PG_STATE/url (default .pg/url); `down` stops it and removes the folder. Each run
# of scripts/with-postgres.sh uses a state folder of its own, so runs never clash.
# Nothing listens beyond 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${MEMVEE_PG_STATE:-.pg}

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  return 1
}

up() {
  local bin
  if ! bin=$(find_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing PostgreSQL from the distribution's packages" >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bin=$(find_bin)
    else
      echo "PostgreSQL is not installed and cannot be installed here" >&2
      return 1
    fi
  fi
  down >/dev/null 2>&1 || true
  local dir port runner=()
  dir=$(mktemp -d /tmp/memvee-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$dir"
    runner=(runuser -u postgres --)
  fi
  "${runner[@]}" "$bin/initdb" -D "$dir/data" -U memvee -A trust -E UTF8 --no-instructions >/dev/null
  "${runner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  "${runner[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U memvee memvee
  mkdir -p "$state"
  echo "$dir" > "$state/dir"
  echo "$bin" > "$state/bin"
  echo "postgresql+psycopg://memvee@127.0.0.1:$port/memvee" > "$state/url"
  echo "PostgreSQL up: $(cat "$state/url")" >&2
}

down() {
  [ -f "$state/dir" ] || return 0
  local dir bin runner=()
  dir=$(cat "$state/dir"); bin=$(cat "$state/bin")
  [ "$(id -u)" = 0 ] && runner=(runuser -u postgres --)
  "${runner[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir" "$state"
  echo "PostgreSQL down" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
