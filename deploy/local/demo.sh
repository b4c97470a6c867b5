#!/usr/bin/env bash
# The main job (README): on a fresh machine, start what is missing (PostgreSQL, Redis,
# an OpenSearch node), seed a shipped model's tables, migrate (tidemark's tables and the
# model's capture), run a scheduler and two workers, then play a short scenario and print how
# long each change took to become searchable, and the status. The search application
# (`tidemark serve`) runs beside them; its address is printed.
#
#   DEMO_STUDENTS=100000 deploy/local/demo.sh                     # the student directory
#   DEMO_MODEL=refinebio DEMO_EXPERIMENTS=20000 deploy/local/demo.sh # refine.bio's experiments
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${DEMO_MODEL:-students}"
STUDENTS="${DEMO_STUDENTS:-100000}"
EXPERIMENTS="${DEMO_EXPERIMENTS:-20000}"
case "$MODEL" in
  students|refinebio) ;;
  *) echo "DEMO_MODEL=$MODEL: the demo runs a shipped model, students or refinebio (your own: README, \"Your own schema\")" >&2; exit 2 ;;
esac
eval "$(deploy/local/services.sh)"

# The demo's own database, alias and queue namespace: it never touches anything else.
BASE_URL="$DATABASE_URL"
export DATABASE_URL="${BASE_URL%/*}/tidemark_demo"
export REDIS_URL ELASTICSEARCH_URL
export TIDEMARK_INDEX_ALIAS="demo_$MODEL" TIDEMARK_QUEUE_NAMESPACE=tidemark_demo TIDEMARK_MODEL="$MODEL"
# One local node: no replicas (deploy/local/tidemark.toml).
export TIDEMARK_CONFIG="$PWD/deploy/local/tidemark.toml"
ES="$ELASTICSEARCH_URL"

echo "== building tidemark (release)"
cargo build --release --quiet
T=target/release/tidemark
LOGS=target/demo
mkdir -p "$LOGS"

echo "== fresh demo database and index"
psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS tidemark_demo WITH (FORCE)" -c "CREATE DATABASE tidemark_demo"
for index in $(curl -s "$ES/_cat/indices/demo_${MODEL}_*?format=json&h=index" | grep -o '"index":"[^"]*"' | cut -d'"' -f4); do
  curl -s -XDELETE "$ES/$index" >/dev/null
done
redis-cli -u "$REDIS_URL" --scan --pattern 'tidemark_demo:*' | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null

# The model's tables and their rows first, then tidemark's tables and the capture on them.
if [ "$MODEL" = refinebio ]; then
  $T seed --experiments "$EXPERIMENTS"; DOCS=$EXPERIMENTS; NOUN=experiments
else
  $T seed --students "$STUDENTS"; DOCS=$STUDENTS; NOUN=students
fi
$T migrate

echo "== starting a scheduler and two workers (logs in $LOGS/)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
$T scheduler --interval 5s 2>"$LOGS/scheduler.log" & pids+=($!)
$T worker --concurrency 2 2>"$LOGS/worker-1.log" & pids+=($!)
$T worker --concurrency 2 2>"$LOGS/worker-2.log" & pids+=($!)
SERVE_ADDR="${DEMO_SERVE_ADDR:-127.0.0.1:8080}"
$T serve --addr "$SERVE_ADDR" 2>"$LOGS/serve.log" & pids+=($!)
echo "== the search application: http://$SERVE_ADDR/ (tidemark serve; DEMO_SERVE_ADDR to change)"

sql() { psql "$DATABASE_URL" -Atqc "$1"; }
count() { curl -s "$ES/$TIDEMARK_INDEX_ALIAS/_count" -H 'content-type: application/json' -d "$1" | grep -o '"count":[0-9]*' | cut -d: -f2; }
now() { date +%s.%N; }
# Polls until the index answers `want` to the count query; prints the seconds it took.
wait_count() { # query want started_at
  local deadline=$(( $(date +%s) + 600 ))
  while [ "$(count "$1")" != "$2" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out; see $LOGS/" >&2; exit 1; }
    sleep 0.05
  done
  printf '%.2f s' "$(echo "$(now) - $3" | bc)"
}

echo "== first full index of $DOCS $NOUN (the first worker finds no index and builds it from the database)"
t0=$(now)
printf 'all %s %s searchable after %s\n' "$DOCS" "$NOUN" "$(wait_count '{"query":{"match_all":{}}}' "$DOCS" "$t0")"
# The scenario starts once nothing is outstanding, so each figure below times only its own change.
deadline=$(( $(date +%s) + 600 ))
until [ "$(sql "SELECT (SELECT count(*) FROM tidemark.outstanding) + (SELECT count(*) FROM tidemark.parents)")" = 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "marks still outstanding after 10 minutes; see $LOGS/" >&2; exit 1; }
  sleep 0.2
done
printf 'nothing outstanding after %.2f s\n' "$(echo "$(now) - $t0" | bc)"

echo "== scenario"
if [ "$MODEL" = refinebio ]; then
  human=$(sql "SELECT count(DISTINCT es.experiment_id) FROM experiment_samples es JOIN samples s ON s.id = es.sample_id JOIN organisms o ON o.id = s.organism_id WHERE o.name = 'HOMO_SAPIENS'")
  name="HOMO_SAPIENS_$(date +%H%M%S)"
  t0=$(now); sql "UPDATE organisms SET name = '$name' WHERE name = 'HOMO_SAPIENS'"
  printf '%-60s %s\n' "rename an organism (in $human experiments, through their samples)" "$(wait_count "{\"query\":{\"term\":{\"organism_names\":\"$name\"}}}" "$human" "$t0")"
  t0=$(now); sql "UPDATE experiments SET title = title || ' tidemarkdemo' WHERE id BETWEEN 1000 AND 1099"
  printf '%-60s %s\n' "update 100 experiments" "$(wait_count '{"query":{"match":{"title":"tidemarkdemo"}}}' 100 "$t0")"
  t0=$(now); sql "DELETE FROM experiment_samples WHERE experiment_id = 42; DELETE FROM experiments WHERE id = 42"
  printf '%-60s %s\n' "delete one experiment" "$(wait_count '{"query":{"ids":{"values":["42"]}}}' 0 "$t0")"
  echo "== status"
  $T admin status
  echo "== search"
  echo "the search application (tidemark serve) is at http://$SERVE_ADDR/ — e.g. http://$SERVE_ADDR/?organism=MUS_MUSCULUS&distinct=samples"
  if [[ -t 0 ]]; then
    read -r -p "press Enter to stop the demo (scheduler, workers and the search application) " _ || true
  fi
  exit 0
fi
mit=$(sql "SELECT count(*) FROM students WHERE university_id = 1")
name="Massachusetts Institute of Technology $(date +%H%M%S)"
t0=$(now); sql "UPDATE universities SET name = '$name' WHERE id = 1"
printf '%-52s %s\n' "rename MIT ($mit students)" "$(wait_count "{\"query\":{\"term\":{\"university.name\":\"$name\"}}}" "$mit" "$t0")"

t0=$(now); sql "UPDATE students SET last_name = 'Demo' WHERE id BETWEEN 1000 AND 1099"
printf '%-52s %s\n' "update 100 students" "$(wait_count '{"query":{"term":{"last_name.raw":"Demo"}}}' 100 "$t0")"

n=$(sql "SELECT count(*) FROM students WHERE id % 10 = 0")
t0=$(now); sql "UPDATE students SET age = 77 WHERE id % 10 = 0"
want=$(sql "SELECT count(*) FROM students WHERE age = 77")
printf '%-52s %s\n' "bulk-update the age of $n students (one statement)" "$(wait_count '{"query":{"term":{"age":77}}}' "$want" "$t0")"

t0=$(now); sql "DELETE FROM students WHERE id = 42"
printf '%-52s %s\n' "delete one student" "$(wait_count '{"query":{"ids":{"values":["42"]}}}' 0 "$t0")"

echo "== status"
$T admin status

echo "== search"
echo "the search application (tidemark serve) is at http://$SERVE_ADDR/ — e.g. http://$SERVE_ADDR/?q=ann&course=CS101"
echo "its API: http://$SERVE_ADDR/api/search?university=MIT&distinct=course  and  http://$SERVE_ADDR/api/suggest?q=an"
if [[ -t 0 ]]; then
  read -r -p "press Enter to stop the demo (scheduler, workers and the search application) " _ || true
fi
