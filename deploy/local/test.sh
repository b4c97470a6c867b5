#!/usr/bin/env bash
# The test command (README): starts PostgreSQL, Redis and the OpenSearch node where they
# are missing (reusing running ones), then runs every test against them. Extra arguments
# go to `cargo test` (e.g. a test name).
#
# Every run has an id, `r` and 8 hex digits, exported as TIDEMARK_TEST_RUN: the tests
# name every index and alias they create `<run>-...` and every database
# `tidemark_test_<run>_...`. The run records its PID in $TIDEMARK_CACHE/test-runs/<run>.pid
# (removed on exit). Before testing, it sweeps the leftovers of runs that have ended — their
# PID file gone (what a test failed to drop) or naming a process that is gone (killed,
# crashed machine) — and only those: suites running at the same time against the same
# PostgreSQL and OpenSearch never touch each other's data.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(deploy/local/services.sh)"
export DATABASE_URL REDIS_URL ELASTICSEARCH_URL

log() { printf '[test] %s\n' "$*" >&2; }

runs="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}/test-runs"
mkdir -p "$runs"

# A process's start time (clock ticks since boot): with the PID it names the process, so a
# recycled PID does not pass for a run that is still going.
started_at() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }

run="r$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
export TIDEMARK_TEST_RUN="$run"
echo "$$ $(started_at $$)" >"$runs/$run.pid"
trap 'rm -f "$runs/$run.pid"' EXIT
log "run $run"

# Leftovers of dead runs.
sweep() { # run id
  local dead=$1 db
  for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname = 'tidemark_test_$dead' OR datname LIKE 'tidemark\_test\_${dead}\_%'"); do
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  done
  # Aliases first (one could point at an index with another name), then the indices, each
  # by its name (no wildcard delete: that may be forbidden by action.destructive_requires_name).
  curl -sf "$ELASTICSEARCH_URL/_cat/aliases/$dead-*?h=alias,index" 2>/dev/null \
    | while read -r alias index; do
        [[ -n $alias && -n $index ]] && curl -s -XDELETE "$ELASTICSEARCH_URL/$index/_alias/$alias" >/dev/null || true
      done
  curl -sf "$ELASTICSEARCH_URL/_cat/indices/$dead-*?h=index&expand_wildcards=all" 2>/dev/null \
    | while read -r index; do
        [[ -n $index ]] && curl -s -XDELETE "$ELASTICSEARCH_URL/$index" >/dev/null || true
      done
}
# A run is dead when its PID file is gone (it ended: what its tests failed to drop stays
# behind) or names a process that has ended (killed, crashed machine).
alive() { # run id
  local f="$runs/$1.pid" pid start
  [[ -e $f ]] || return 1
  read -r pid start <"$f" || true
  [[ -n ${pid:-} ]] && kill -0 "$pid" 2>/dev/null && [[ -z ${start:-} || $(started_at "$pid") == "$start" ]]
}
others=$( {
  for f in "$runs"/r*.pid; do [[ -e $f ]] && basename "$f" .pid; done
  psql "$DATABASE_URL" -Atc "SELECT substring(datname from '^tidemark_test_(r[0-9a-f]{8})') FROM pg_database WHERE datname ~ '^tidemark_test_r[0-9a-f]{8}'"
} | sort -u)
for other in $others; do
  [[ $other =~ ^r[0-9a-f]{8}$ && $other != "$run" ]] || continue
  alive "$other" && continue
  log "sweeping the leftovers of run $other (it has ended)"
  sweep "$other"
  rm -f "$runs/$other.pid"
done

deploy/local/chromium.sh >/dev/null # the browser tests' headless Chromium and chromedriver (Debian's), when missing
# No arguments: every test. Arguments select (e.g. `--test stress`, or a test name).
if [[ $# -eq 0 ]]; then
  set -- --lib --bins --tests
fi
cargo test --workspace --no-fail-fast "$@"
