#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): the DESIGN.md performance targets, each measured
# side by side with a baseline in the same run, on real PostgreSQL, Redis and osmem and
# real tidemark processes.
#
#   deploy/local/bench.sh            # full run (~10-15 min on 2 cores)
#   deploy/local/bench.sh --quick    # small sizes (~2-3 min), for regression checks
#   deploy/local/bench.sh --only fanout,facets [--quick]
#
# Starts the services where missing (deploy/local/services.sh), builds in release mode,
# runs the harness (benches/tidemark.rs), and writes BENCHMARKS.md at the repository root
# with the machine, the versions and the command. Raw numbers and logs: target/bench/.
#
# The search server: a pre-set ELASTICSEARCH_URL is used as it is (e.g. a real
# Elasticsearch/OpenSearch); otherwise the run starts a private osmem (from the venv that
# services.sh installs) and stops it at the end. BENCH_SHARED_OSMEM=1 uses the shared
# local osmem instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT="$ROOT/target/bench"
mkdir -p "$OUT/logs"

quick=0
for a in "$@"; do [[ $a == --quick ]] && quick=1; done
command_line="deploy/local/bench.sh${*:+ $*}"

# One benchmark run at a time on this checkout (they sweep each other's leftovers).
# Every process started from here gets `8>&-`, so no daemon keeps the lock after we exit.
exec 8>"$OUT/run.lock"
flock -n 8 || { echo "bench.sh: another benchmark run holds $OUT/run.lock" >&2; exit 1; }
# This run's process logs only (the harness appends to them).
rm -f "$OUT"/logs/*.log

log() { printf '[bench.sh] %s\n' "$*" >&2; }

# A search server given by the caller (e.g. a real Elasticsearch) is used as it is;
# otherwise the benchmarks get an osmem of their own (see below).
preset_es="${ELASTICSEARCH_URL:-}"
eval "$(deploy/local/services.sh 8>&-)"
export DATABASE_URL REDIS_URL ELASTICSEARCH_URL

# Unless the caller chose a search server, run a private osmem for the benchmarks: a fresh
# heap (osmem never gives memory back after an index is deleted), nobody else's load on
# it (tests sharing the local one would distort every figure, and be distorted), and
# memory freed when the run ends. BENCH_SHARED_OSMEM=1 uses services.sh's osmem instead.
cache="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
export TIDEMARK_OSMEM_PID=""
private_osmem=""
cleanup() { [[ -n $private_osmem ]] && kill "$private_osmem" 2>/dev/null || true; }
trap cleanup EXIT
if [[ -z $preset_es && ${BENCH_SHARED_OSMEM:-0} != 1 ]]; then
  bin=$("$cache/venv/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())')
  "$bin" -addr 127.0.0.1:0 -no-ja -no-stdin-watch -parent-pid $$ </dev/null >"$OUT/logs/osmem.log" 2>&1 8>&- &
  private_osmem=$!
  url=""
  for _ in $(seq 100); do
    url=$(head -n1 "$OUT/logs/osmem.log" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["url"])' 2>/dev/null || true)
    [[ -n $url ]] && curl -sf --max-time 2 -o /dev/null "$url/" && break
    url=""
    sleep 0.2
  done
  [[ -n $url ]] || { log "the private osmem did not start; see $OUT/logs/osmem.log"; exit 1; }
  export ELASTICSEARCH_URL="$url" TIDEMARK_OSMEM_PID="$private_osmem"
  log "private osmem at $url (pid $private_osmem)"
elif [[ -z $preset_es && -f $cache/osmem.pid ]]; then
  p=$(<"$cache/osmem.pid")
  if kill -0 "$p" 2>/dev/null && [[ $(readlink "/proc/$p/exe" 2>/dev/null) == *osmem* ]]; then
    export TIDEMARK_OSMEM_PID="$p"
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
osmem_version=""
if [[ -x $cache/venv/bin/python ]]; then
  osmem_version=$("$cache/venv/bin/python" -c 'import osmem_server; print(osmem_server.__version__)' 2>/dev/null || true)
fi
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit (with uncommitted changes)"; fi

{
  echo "# Benchmarks"
  echo
  echo "The performance targets of DESIGN.md (\"Performance targets\"), each measured against a"
  echo "baseline in the same run on the same machine."
  echo "Reproduce with one command:"
  echo
  echo '```sh'
  echo "$command_line"
  echo '```'
  echo
  echo "It starts PostgreSQL, Redis and osmem where missing, builds in release mode, runs"
  echo "\`benches/tidemark.rs\` and rewrites this file. \`--quick\` runs small sizes in a couple of"
  echo "minutes (for regression checks); the full run takes ten to fifteen minutes."
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
  echo "| search server | $search_version (\`GET /\`)${osmem_version:+, osmem-server $osmem_version}$([[ -n $private_osmem ]] && echo ', a private instance started for this run') |"
  echo
  echo "Reading these numbers:"
  echo
  echo "- Everything runs on one small machine: PostgreSQL, Redis, osmem, the tidemark processes and"
  echo "  the harness share its cores. A search server on its own hardware takes its part of the load away."
  echo "- osmem is an in-memory OpenSearch-compatible server used for tests and demos; it indexes"
  echo "  a few thousand documents a second on this machine, so every figure that goes through it"
  echo "  (fan-out, freshness, end-to-end reindex) is bounded by it, and each such section shows"
  echo "  the server's own pace measured in the same run. tidemark's own cost is measured apart,"
  echo "  against a discarding endpoint that answers exactly like \`_bulk\`."
  echo "- The batched-vs-one-request-per-document ratios through osmem cannot exceed osmem's own"
  echo "  ratio (its \`_bulk\` pace ÷ its pace one document per request, no tidemark involved), which"
  echo "  each such row shows as its ceiling; tidemark's own ratio is the one against the discarding"
  echo "  endpoint. osmem answers one-document requests cheaply (no translog \`fsync\`, no refresh"
  echo "  cycle); a server that pays those per request (Elasticsearch does by default) raises it."
  echo "- osmem makes a write searchable at once. Elasticsearch and OpenSearch make it searchable"
  echo "  at the next refresh (\`refresh_interval\`, 1 s by default): add up to that to every"
  echo "  \"searchable\" figure when comparing with them."
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
