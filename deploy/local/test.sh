#!/usr/bin/env bash
# The test command (README): starts PostgreSQL, Redis and osmem where they are missing
# (reusing running ones), then runs every test against them. Extra arguments go to
# `cargo test` (e.g. a test name).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(deploy/local/services.sh)"
export DATABASE_URL REDIS_URL ELASTICSEARCH_URL

# osmem keeps the memory of deleted indices; a long-lived one we started is restarted
# before the suite once it holds more than 3 GB, so repeated runs do not pile up.
pidfile="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}/osmem.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$pidfile")/status" 2>/dev/null || echo 0)
  if [ "${rss_kb:-0}" -gt 3000000 ]; then
    echo "[test] restarting osmem (RSS $((rss_kb / 1024)) MB)" >&2
    kill "$(cat "$pidfile")"; sleep 1
    eval "$(deploy/local/services.sh)"
  fi
fi

# Sweep what an interrupted earlier run may have left: test databases and indices.
for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tidemark_test_%'"); do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
done
curl -s "$ELASTICSEARCH_URL/_cat/indices?format=json&h=index" \
  | python3 -c 'import json,sys; print("\n".join(i["index"] for i in json.load(sys.stdin) if i["index"].startswith("t") and "_students_" in i["index"]))' \
  | while read -r index; do curl -s -XDELETE "$ELASTICSEARCH_URL/$index" >/dev/null; done

cargo test --workspace --lib --bins --tests "$@"
