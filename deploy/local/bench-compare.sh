#!/usr/bin/env bash
# Benchmarks side by side with an earlier commit, in one run on this machine:
#
#   deploy/local/bench-compare.sh REV [--rounds N] [bench.sh arguments]
#   deploy/local/bench-compare.sh 899e4e0 --only reindex
#   deploy/local/bench-compare.sh HEAD~3 --rounds 2 --quick --only fanout,overhead
#
# Checks REV out in a git worktree (target/compare/<rev>/src, its own target directory),
# then runs deploy/local/bench.sh of REV and of this checkout in turn — ABBA order (REV,
# this, this, REV), N times (default 1) — so a drift of the machine's load weighs on both
# sides alike. Each run's results are kept in target/compare/runs/<n>-<rev|this>/
# (results.md, results.json, run.log); this checkout's BENCHMARKS.md is left as it was.
# At the end every summary row is printed with the figure of each run, side by side.
# The sections must exist on both sides (bench.sh --help in each lists them).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
log() { printf '[bench-compare] %s\n' "$*" >&2; }

[[ $# -ge 1 && $1 != -* ]] || { echo "usage: deploy/local/bench-compare.sh REV [--rounds N] [bench.sh arguments]" >&2; exit 2; }
rev_arg=$1
shift
rounds=1
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a whole number ≥ 1, e.g. --rounds 2" >&2; exit 2; }
      rounds=$2
      shift 2
      ;;
    *) args+=("$1"); shift ;;
  esac
done
rev=$(git rev-parse --verify --quiet "$rev_arg^{commit}") || { echo "$rev_arg is not a commit here (try git log --oneline)" >&2; exit 2; }
short=${rev:0:12}
base="$ROOT/target/compare/$short"
runs="$ROOT/target/compare/runs"
mkdir -p "$runs"
if [[ ! -d $base/src ]]; then
  log "checking out $short in $base/src"
  git worktree add --detach "$base/src" "$rev" >/dev/null
fi
# Keep this checkout's BENCHMARKS.md: bench.sh rewrites it.
saved=$(mktemp)
cp BENCHMARKS.md "$saved"
trap 'cp "$saved" "$ROOT/BENCHMARKS.md"; rm -f "$saved"' EXIT

n=0
run() { # which dir
  local which=$1 dir=$2
  n=$((n + 1))
  local out="$runs/$n-$which"
  log "run $n: $which ($(git -C "$dir" rev-parse --short=12 HEAD)): bench.sh ${args[*]}"
  local status=0
  (cd "$dir" && deploy/local/bench.sh "${args[@]}") || status=$?
  rm -rf "$out"
  cp -r "$dir/target/bench" "$out"
  echo "$status" >"$out/status"
  log "run $n: $which done (exit status $status, load $(cut -d' ' -f1-3 /proc/loadavg))"
}
rm -rf "$runs"/*
for _ in $(seq "$rounds"); do
  run "$short" "$base/src"
  run this "$ROOT"
  run this "$ROOT"
  run "$short" "$base/src"
done

python3 - "$runs" <<'EOF'
import json, os, sys
runs = sys.argv[1]
names = sorted(os.listdir(runs), key=lambda d: int(d.split("-")[0]))
rows = {}
for d in names:
    try:
        data = json.load(open(os.path.join(runs, d, "results.json")))
    except (OSError, ValueError):
        continue
    for r in data.get("rows", []):
        rows.setdefault((r.get("bench", ""), r.get("what", "")), {})[d] = r.get("figure", "")
print("| benchmark | what | " + " | ".join(names) + " |")
print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
for (bench, what), figs in rows.items():
    print(f"| {bench} | {what} | " + " | ".join(figs.get(d, "—") for d in names) + " |")
EOF
