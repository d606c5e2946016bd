#!/usr/bin/env bash
# PostgreSQL for the monitoring store's tests: Debian's server, a cluster on localhost, a test user and
# database.  Idempotent: installs what is missing, starts what is stopped, creates what does not exist.
# The tests read HTEX_TEST_POSTGRES_URL (default below) and skip, saying why, only if it is unreachable.
set -euo pipefail
USER_NAME=htex_test
PASSWORD=htex_test
DB=htex_test

if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -qx online; then
  pg_ctlcluster "$version" main start
fi
psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
for _ in $(seq 50); do psql_admin "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$(psql_admin "select 1 from pg_roles where rolname='$USER_NAME'")" != 1 ]; then
  psql_admin "create role $USER_NAME login password '$PASSWORD'"
fi
if [ "$(psql_admin "select 1 from pg_database where datname='$DB'")" != 1 ]; then
  psql_admin "create database $DB owner $USER_NAME"
fi
echo "postgresql $version: postgresql+psycopg://$USER_NAME:$PASSWORD@127.0.0.1:$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')/$DB"
