#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster, exported as MEMVEE_TEST_PG_URL, and
# stop the cluster afterwards, also on failure. In CI (CI=true) PostgreSQL is required;
# elsewhere, when it cannot be started, the command runs on SQLite alone.
set -uo pipefail
cd "$(dirname "$0")/.."
MEMVEE_PG_STATE=$(mktemp -d /tmp/memvee-pg-state.XXXXXX)
export MEMVEE_PG_STATE
trap 'scripts/postgres.sh down; rm -rf "$MEMVEE_PG_STATE"' EXIT
if scripts/postgres.sh up; then
  MEMVEE_TEST_PG_URL=$(cat "$MEMVEE_PG_STATE/url")
  export MEMVEE_TEST_PG_URL
elif [ "${CI:-}" = "true" ]; then
  echo "CI needs PostgreSQL and it could not be started" >&2
  exit 1
else
  echo "PostgreSQL unavailable: running the SQLite suite only" >&2
fi
"$@"
