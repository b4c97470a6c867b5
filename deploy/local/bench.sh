#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): the docs/design.md performance targets, each measured
# side by side with a baseline in the same run, on real PostgreSQL, Redis and OpenSearch
# and real tidemark processes.
#
#   deploy/local/bench.sh            # full run (~45 min on 2 cores)
#   deploy/local/bench.sh --quick    # small sizes (~5-6 min), for regression checks
#   deploy/local/bench.sh --only fanout,facets [--quick]
#   deploy/local/bench.sh --only writes   # write throughput under concurrency and the wake-up's idle cost (~25 min; pgbench)
#
# Starts the services where missing (deploy/local/services.sh), builds in release mode,
# runs the harness (benches/tidemark.rs), and writes BENCHMARKS.md at the repository root
# with the machine, the versions and the command. Raw numbers and logs: target/bench/.
#
# The search server: a pre-set ELASTICSEARCH_URL is used as it is (e.g. an Elasticsearch
# elsewhere); otherwise the run starts a private OpenSearch node (deploy/opensearch/, same
# engine line as services.sh's: TIDEMARK_OPENSEARCH_VERSION; heap BENCH_OPENSEARCH_HEAP,
# default 1g) on a free port with throwaway data, and stops it at the end.
# BENCH_SHARED_SEARCH=1 uses services.sh's shared local node instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT="$ROOT/target/bench"
mkdir -p "$OUT/logs"

quick=0
for a in "$@"; do
  [[ $a == --quick ]] && quick=1
  # Help only: say what the harness takes, without starting anything or writing BENCHMARKS.md.
  if [[ $a == -h || $a == --help ]]; then
    echo "usage: deploy/local/bench.sh [--quick] [--only fanout,reindex,overhead,freshness,facets,serve,writes,refinebio] [--serve-discard]"
    echo "writes BENCHMARKS.md; the harness's own arguments: cargo bench --bench tidemark -- --help"
    exit 0
  fi
done
command_line="deploy/local/bench.sh${*:+ $*}"

# One benchmark run at a time on this checkout (they sweep each other's leftovers).
# Every process started from here gets `8>&-`, so no daemon keeps the lock after we exit.
exec 8>"$OUT/run.lock"
flock -n 8 || { echo "bench.sh: another benchmark run holds $OUT/run.lock" >&2; exit 1; }
# This run's process logs only (the harness appends to them).
rm -f "$OUT"/logs/*.log

log() { printf '[bench.sh] %s\n' "$*" >&2; }

# A search server given by the caller (e.g. a real Elasticsearch) is used as it is;
# otherwise the benchmarks get an OpenSearch node of their own (see below).
preset_es="${ELASTICSEARCH_URL:-}"
eval "$(deploy/local/services.sh 8>&-)"
export DATABASE_URL REDIS_URL ELASTICSEARCH_URL

# Unless the caller chose a search server, run a private node for the benchmarks: nobody
# else's load on it (test suites sharing the local node would distort every figure, and be
# distorted), a fresh heap and empty data, and memory freed when the run ends. The harness
# reads the server's CPU time through TIDEMARK_SEARCH_PID (the search server's pid).
# BENCH_SHARED_SEARCH=1 uses the node services.sh runs instead.
cache="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
export TIDEMARK_SEARCH_PID=""
private_node=""
cleanup() {
  if [[ -n $private_node ]]; then
    kill -TERM "$private_node" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$private_node" 2>/dev/null || break; sleep 0.2; done
  fi
}
trap cleanup EXIT
if [[ -z $preset_es && ${BENCH_SHARED_SEARCH:-0} != 1 ]]; then
  # --parent-pid: the node stops by itself should this script die without its EXIT trap.
  TIDEMARK_OPENSEARCH_HEAP="${BENCH_OPENSEARCH_HEAP:-1g}" \
    deploy/opensearch/opensearch.sh --http-port 0 --node-name bench --cluster-name tidemark-bench --parent-pid $$ \
    </dev/null >"$OUT/logs/opensearch.json" 2>"$OUT/logs/opensearch.log" 8>&- &
  private_node=$!
  url=""
  for _ in $(seq 480); do
    url=$(grep -o '"url": *"[^"]*"' "$OUT/logs/opensearch.json" 2>/dev/null | sed -E 's/.*"(http[^"]*)"$/\1/' || true)
    [[ -n $url ]] && break
    kill -0 "$private_node" 2>/dev/null || break
    sleep 0.25
  done
  [[ -n $url ]] && curl -sf --max-time 5 -o /dev/null "$url/" \
    || { log "the private OpenSearch node did not start; tail of $OUT/logs/opensearch.log:"; tail -n 20 "$OUT/logs/opensearch.log" >&2; exit 1; }
  export ELASTICSEARCH_URL="$url" TIDEMARK_SEARCH_PID="$private_node"
  log "private OpenSearch node at $url (pid $private_node)"
elif [[ -z $preset_es ]]; then
  port="${ELASTICSEARCH_URL##*:}"
  port="${port%%/*}"
  p=$(cat "$cache/opensearch/node-$port.pid" 2>/dev/null || true)
  if [[ -n $p ]] && kill -0 "$p" 2>/dev/null && grep -qa tidemark.opensearch.Launcher "/proc/$p/cmdline" 2>/dev/null; then
    export TIDEMARK_SEARCH_PID="$p"
  fi
fi

# Leftovers of an interrupted earlier run: benchmark databases and indices.
for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tidemark\_bench\_%'"); do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
done
curl -s "$ELASTICSEARCH_URL/_cat/indices/bench_*?format=json&h=index" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print("\n".join(i["index"] for i in d if isinstance(i, dict)))' 2>/dev/null \
  | while read -r index; do
      if [[ -n $index ]]; then curl -s -XDELETE "$ELASTICSEARCH_URL/$index" >/dev/null || true; fi
    done

log "building (release)"
cargo build --release --quiet --bin tidemark
cargo bench --quiet --bench tidemark --no-run 2>/dev/null || cargo bench --bench tidemark --no-run

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "running the benchmarks: $command_line"
set +e
cargo bench --quiet --bench tidemark -- --out "$OUT" "$@" 2>&1 8>&- | tee "$OUT/run.log"
status=${PIPESTATUS[0]}
set -e
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# What ran, where.
cpu_model=$(awk -F: '/^model name/ {sub(/^ +/, "", $2); print $2; exit}' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
pg_version=$(psql "$DATABASE_URL" -Atc 'SHOW server_version' 2>/dev/null || echo unknown)
pg_settings=$(psql "$DATABASE_URL" -Atc "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'max_parallel_workers_per_gather', 'work_mem')" 2>/dev/null || echo unknown)
redis_version=$(redis-cli -u "$REDIS_URL" INFO server 2>/dev/null | awk -F: '/^redis_version/ {gsub(/\r/, "", $2); print $2}')
search_version=$(curl -s "$ELASTICSEARCH_URL/" | python3 -c 'import json,sys; v=json.load(sys.stdin)["version"]; print(v.get("distribution", "elasticsearch"), v["number"])' 2>/dev/null || echo unknown)
# The node's own JSON line (ours, private or shared) names its Java.
node_json="$OUT/logs/opensearch.json"
[[ -n $private_node ]] || node_json="$cache/opensearch/node-${port:-none}.json"
java_version=$(grep -o '"java": *"[^"]*"' "$node_json" 2>/dev/null | sed -E 's/.*"([^"]*)"$/Java \1/' || true)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit (with uncommitted changes)"; fi

{
  echo "# Benchmarks"
  echo
  echo "The performance targets of docs/design.md (\"Performance targets\"), each measured against a"
  echo "baseline in the same run on the same machine."
  echo "Reproduce with one command:"
  echo
  echo '```sh'
  echo "$command_line"
  echo '```'
  echo
  echo "It starts PostgreSQL, Redis and an OpenSearch node where missing, builds in release mode, runs"
  echo "\`benches/tidemark.rs\` and rewrites this file. \`--quick\` runs small sizes in a few"
  echo "minutes (for regression checks); the full run takes about 45 minutes on 2 cores."
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| run | $started$([[ $quick -eq 1 ]] && echo ', **quick mode** (small sizes)') |"
  echo "| machine | $(nproc) CPUs ($cpu_model), $mem_gib memory, $(uname -sr) |"
  echo "| load average (1/5/15 min) | before $load_before, after $load_after (the machine is shared: other builds and tests may run meanwhile) |"
  echo "| tidemark | commit $commit |"
  echo "| Rust | $(rustc -V) |"
  echo "| PostgreSQL | $pg_version ($pg_settings) |"
  echo "| Redis | ${redis_version:-unknown} |"
  echo "| search server | $search_version (\`GET /\`)$([[ -n $private_node ]] && echo ", a private embedded node started for this run (heap ${BENCH_OPENSEARCH_HEAP:-1g})")${java_version:+, $java_version} |"
  echo
  echo "Reading these numbers:"
  echo
  echo "- Everything runs on one small machine: PostgreSQL, Redis, the OpenSearch node, the tidemark"
  echo "  processes and the harness share its cores. A search server on its own hardware takes its part"
  echo "  of the load away."
  echo "- The search server is a real OpenSearch node (embedded, one JVM, see \`deploy/opensearch/\`):"
  echo "  every figure that goes through it (fan-out, freshness, end-to-end reindex, facets, search)"
  echo "  is bounded by its pace on this machine, so each such section shows the server's own pace"
  echo "  (or ceiling) measured in the same run. tidemark's own cost is measured apart, against a"
  echo "  discarding endpoint that answers exactly like \`_bulk\`."
  echo "- OpenSearch makes a write searchable at the next refresh (\`refresh_interval\`, 1 s by"
  echo "  default), so where refresh matters two times are reported apart: **acknowledged** (the"
  echo "  \`_bulk\` answered and tidemark cleared its marks) and **searchable** (a search, polled from"
  echo "  outside, returns the change). Nothing in tidemark's path is made to refresh for the"
  echo "  benchmark; a full reindex refreshes its new index before verifying it, as it always does."
  echo "- Baselines that would take minutes (one request per document over 100,000+ documents) are"
  echo "  measured on a sample and extrapolated linearly; the tables say so where it is done."
  echo
  if [[ -s $OUT/results.md ]]; then
    cat "$OUT/results.md"
  else
    echo "**The harness produced no results** (exit status $status); see \`target/bench/run.log\`."
  fi
  echo
  echo "---"
  echo "Raw numbers: \`target/bench/results.json\`; process logs: \`target/bench/logs/\`; harness output: \`target/bench/run.log\`."
} >"$ROOT/BENCHMARKS.md"

log "wrote BENCHMARKS.md (harness exit status $status)"
exit "$status"
