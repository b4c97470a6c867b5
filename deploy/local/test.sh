#!/usr/bin/env bash
# The test command (README): starts PostgreSQL, Redis and osmem where they are missing
# (reusing running ones), then runs every test against them. Extra arguments go to
# `cargo test` (e.g. a test name).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(deploy/local/services.sh)"
export DATABASE_URL REDIS_URL ELASTICSEARCH_URL

# Sweep what an interrupted earlier run may have left: test databases and indices.
for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tidemark_test_%'"); do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
done
curl -s "$ELASTICSEARCH_URL/_cat/indices?format=json&h=index" \
  | python3 -c 'import json,sys; print("\n".join(i["index"] for i in json.load(sys.stdin) if i["index"].startswith("t") and "_students_" in i["index"]))' \
  | while read -r index; do curl -s -XDELETE "$ELASTICSEARCH_URL/$index" >/dev/null; done

cargo test --workspace --lib --bins --tests "$@"
