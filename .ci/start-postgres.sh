#!/usr/bin/env bash
# Install (Debian package) and start a local PostgreSQL server for the ledger's
# production-backend tests; print the SQLAlchemy URL of an empty test database.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
done
pg_isready -h 127.0.0.1 -p 5432 >&2
as_pg() { su postgres -c "$1"; }
as_pg "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='pharmafl'\"" | grep -q 1 \
    || as_pg "psql -qc \"CREATE ROLE pharmafl LOGIN CREATEDB PASSWORD 'pharmafl'\"" >&2
as_pg "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='pharmafl_test'\"" | grep -q 1 \
    || as_pg "createdb -O pharmafl pharmafl_test" >&2
echo "postgresql+psycopg://pharmafl:pharmafl@127.0.0.1:5432/pharmafl_test"
