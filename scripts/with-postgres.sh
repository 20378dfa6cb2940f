#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster, exported as MEMVEE_TEST_PG_URL, and
# stop the cluster afterwards, also on failure. In CI (CI=true) PostgreSQL is required;
# elsewhere, when it cannot be started, the command runs on SQLite alone.
set -uo pipefail
cd "$(dirname "$0")/.."
if scripts/postgres.sh up; then
  trap 'scripts/postgres.sh down' EXIT
  MEMVEE_TEST_PG_URL=$(cat .pg/url)
  export MEMVEE_TEST_PG_URL
elif [ "${CI:-}" = "true" ]; then
  echo "CI needs PostgreSQL and it could not be started" >&2
  exit 1
else
  echo "PostgreSQL unavailable: running the SQLite suite only" >&2
fi
"$@"
