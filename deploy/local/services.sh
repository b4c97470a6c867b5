#!/usr/bin/env bash
# Make sure the services tidemark needs locally are up, reusing whatever already runs:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), Redis on 127.0.0.1:6379,
#   osmem (OpenSearch-compatible in-memory search server) on 127.0.0.1:${TIDEMARK_OSMEM_PORT:-9200}.
#
# Usage:
#   eval "$(deploy/local/services.sh)"      # executed: prints `export ...` lines on stdout
#   source deploy/local/services.sh         # sourced: exports the variables into the caller
#
# Progress goes to stderr; stdout carries only the `export` lines.
# A pre-set DATABASE_URL / REDIS_URL / ELASTICSEARCH_URL means "use that one": the
# service is then not started, only checked for reachability and echoed back.
# Works on a fresh Debian 12 as root (installs packages with apt, osmem with pip).
#
# Environment knobs:
#   TIDEMARK_CACHE       where the osmem venv, log and pid file live (default ~/.cache/tidemark)
#   TIDEMARK_OSMEM_PORT  port of the local osmem (default 9200)

# The whole job runs in a subshell so that `set -euo pipefail`, the lock fd and any
# `exit` stay inside it, whether this file is executed or sourced.
tidemark_services() (
  set -euo pipefail

  local cache="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
  local osmem_port="${TIDEMARK_OSMEM_PORT:-9200}"
  local venv="$cache/venv"
  local osmem_version="0.1.6"
  local apt_updated=0

  log() { printf '[services] %s\n' "$*" >&2; }
  die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

  # Install Debian packages; `apt-get update` runs once per invocation, before the
  # first install, because a fresh machine has no package lists. dpkg is chatty, so
  # its output goes to $cache/apt.log and is shown only when something fails.
  apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $*"
    local aptlog="$cache/apt.log"
    if [[ $apt_updated -eq 0 ]]; then
      log "apt-get update"
      DEBIAN_FRONTEND=noninteractive apt-get update -q >"$aptlog" 2>&1 \
        || die "apt-get update failed; tail of $aptlog:
$(tail -n 20 "$aptlog")"
      apt_updated=1
    fi
    log "apt-get install $* (log: $aptlog)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$aptlog" 2>&1 9>&- \
      || die "apt-get install $* failed; tail of $aptlog:
$(tail -n 20 "$aptlog")"
  }

  # Install the package providing a command only if the command is missing.
  need_cmd() { command -v "$1" >/dev/null 2>&1 || apt_install "$2"; }

  # Poll a check command once per 0.5 s for at most $1 seconds.
  wait_until() {
    local secs=$1; shift
    local tries=$((secs * 2)) i
    for ((i = 0; i < tries; i++)); do
      if "$@" >/dev/null 2>&1; then return 0; fi
      sleep 0.5
    done
    return 1
  }

  # Serialise concurrent callers (e.g. two test scripts starting at once) so they
  # don't both install packages or start a second osmem on the same port.
  # Anything that may leave a daemon behind runs with `9>&-`: a daemon inheriting
  # fd 9 would hold the lock for as long as it lives.
  mkdir -p "$cache"
  need_cmd flock util-linux
  exec 9>"$cache/services.lock"
  flock -w 600 9 || die "timed out waiting for $cache/services.lock"

  # curl is used to probe the search server; a minimal Debian image lacks it.
  need_cmd curl curl

  # ---------------------------------------------------------------- PostgreSQL
  local database_url
  if [[ -n "${DATABASE_URL:-}" ]]; then
    # Caller chose a database: only check it answers.
    need_cmd pg_isready postgresql-client
    pg_isready -q -t 5 -d "$DATABASE_URL" || die "DATABASE_URL is set but not reachable"
    log "PostgreSQL: using pre-set DATABASE_URL"
    database_url="$DATABASE_URL"
  else
    database_url="postgres://postgres@127.0.0.1:5432/postgres"
    pg_ready() { pg_isready -q -t 2 -h 127.0.0.1 -p 5432; }
    # Trust auth is what the URL above (no password) needs; check it with a real login.
    pg_login() { env -u PGPASSWORD psql -w -X -q -At "$database_url" -c 'select 1' >/dev/null 2>&1; }

    if command -v pg_isready >/dev/null 2>&1 && pg_ready && pg_login; then
      log "PostgreSQL: already running on 127.0.0.1:5432"
    else
      # Install the server if this machine never had it (creates cluster <ver>/main).
      [[ -d /usr/lib/postgresql ]] && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
        || apt_install postgresql
      # The newest version that has a cluster, else the newest installed server.
      local pgver
      pgver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
      [[ -n $pgver ]] || pgver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
      # Some images install the packages without creating the default cluster.
      if [[ ! -d /etc/postgresql/$pgver/main ]]; then
        log "PostgreSQL: creating cluster $pgver/main"
        pg_createcluster "$pgver" main --port 5432 >&2
      fi

      # A fresh cluster uses scram/md5 for TCP; tidemark's local URL has no password,
      # so let 127.0.0.1 (and ::1) connect with trust. Only loopback is opened up.
      local hba="/etc/postgresql/$pgver/main/pg_hba.conf"
      if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        log "PostgreSQL: setting trust auth for 127.0.0.1 in $hba"
        sed -i -E \
          -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+)[^[:space:]]+#\1trust#' \
          -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+)[^[:space:]]+#\1trust#' \
          "$hba"
        # No such line at all: put one first (the first matching line wins).
        grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" \
          || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      fi

      # Start the cluster, or reload it if it runs (so a pg_hba change takes effect).
      # --skip-systemctl-redirect: containers have no systemd to hand off to.
      if pg_ctlcluster "$pgver" main status >/dev/null 2>&1; then
        log "PostgreSQL: reloading cluster $pgver/main"
        pg_ctlcluster --skip-systemctl-redirect "$pgver" main reload >&2 9>&-
      else
        log "PostgreSQL: starting cluster $pgver/main"
        pg_ctlcluster --skip-systemctl-redirect "$pgver" main start >&2 9>&-
      fi
      wait_until 30 pg_ready || die "PostgreSQL did not accept connections on 127.0.0.1:5432 within 30 s (see /var/log/postgresql/)"
      wait_until 10 pg_login || die "PostgreSQL is up but user postgres cannot log in over 127.0.0.1 without a password (check $hba and the port of cluster $pgver/main)"
      log "PostgreSQL: ready"
    fi
  fi

  # ---------------------------------------------------------------------- Redis
  local redis_url
  if [[ -n "${REDIS_URL:-}" ]]; then
    # Caller chose a Redis: only check it answers PING.
    need_cmd redis-cli redis-tools
    [[ $(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]] || die "REDIS_URL is set but Redis does not answer PING"
    log "Redis: using pre-set REDIS_URL"
    redis_url="$REDIS_URL"
  else
    redis_url="redis://127.0.0.1:6379"
    redis_ready() { [[ $(timeout 2 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }
    if command -v redis-cli >/dev/null 2>&1 && redis_ready; then
      log "Redis: already running on 127.0.0.1:6379"
    else
      need_cmd redis-server redis-server
      # The package's postinst may already have started it.
      if ! redis_ready; then
        # Daemonised, loopback only, no persistence: it is a cache for tests and demos.
        mkdir -p /var/lib/redis /var/log/redis
        log "Redis: starting redis-server on 127.0.0.1:6379"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
          --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 9>&-
        wait_until 15 redis_ready || die "Redis did not answer PING within 15 s; tail of /var/log/redis/ci.log:
$(tail -n 20 /var/log/redis/ci.log 2>/dev/null)"
      fi
      log "Redis: ready"
    fi
  fi

  # ---------------------------------------------------------------------- osmem
  local es_url
  if [[ -n "${ELASTICSEARCH_URL:-}" ]]; then
    # Caller chose a search server (Elasticsearch/OpenSearch/osmem): only check that
    # something answers HTTP there (any status: it may want credentials).
    curl -s -k --max-time 5 -o /dev/null "$ELASTICSEARCH_URL" || die "ELASTICSEARCH_URL is set but nothing answers HTTP there"
    log "Search: using pre-set ELASTICSEARCH_URL"
    es_url="$ELASTICSEARCH_URL"
  else
    es_url="http://127.0.0.1:$osmem_port"
    osmem_ready() { curl -sf --max-time 2 -o /dev/null "$es_url/"; }
    if osmem_ready; then
      log "osmem: already answering on $es_url"
    else
      # osmem ships as a binary inside a PyPI wheel: install it into a private venv.
      if ! "$venv/bin/python" -c "import osmem_server, sys; sys.exit(osmem_server.__version__ != '$osmem_version')" 2>/dev/null; then
        command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
        # Debian's python3 lacks ensurepip until python3-venv is installed; a failed
        # `python3 -m venv` leaves a half-made venv behind, so remove it and retry.
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >&2 2>/dev/null || [[ ! -x $venv/bin/pip ]]; then
          rm -rf "$venv"
          apt_install python3-venv
          python3 -m venv "$venv" >&2
        fi
        log "osmem: pip install osmem-server==$osmem_version into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "osmem-server==$osmem_version" >&2 \
          || die "pip install osmem-server==$osmem_version failed (see above)"
      fi
      local bin
      bin=$("$venv/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())')

      # A pid file whose process lives but does not answer is a wedged osmem of ours.
      local pidfile="$cache/osmem.pid" logfile="$cache/osmem.log"
      if [[ -f $pidfile ]]; then
        local oldpid
        oldpid=$(<"$pidfile")
        if [[ -n $oldpid ]] && kill -0 "$oldpid" 2>/dev/null \
          && [[ $(readlink "/proc/$oldpid/exe" 2>/dev/null) == "$(readlink -f "$bin")" ]]; then
          log "osmem: pid $oldpid does not answer; stopping it"
          kill "$oldpid" 2>/dev/null || true
          wait_until 5 bash -c "! kill -0 $oldpid" || kill -9 "$oldpid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
      fi

      # -no-ja: skip the Japanese analyser (~400 MB); -no-stdin-watch: keep running
      # after our stdin closes. stdin/stdout/stderr are detached from the caller so
      # `$(services.sh)` does not wait on the background process.
      log "osmem: starting $bin on 127.0.0.1:$osmem_port (log $logfile)"
      nohup "$bin" -addr "127.0.0.1:$osmem_port" -no-ja -no-stdin-watch </dev/null >"$logfile" 2>&1 9>&- &
      local pid=$!
      echo "$pid" >"$pidfile"
      if ! wait_until 30 osmem_ready; then
        kill -0 "$pid" 2>/dev/null || log "osmem: process $pid exited"
        die "osmem did not answer on $es_url within 30 s; tail of $logfile:
$(tail -n 20 "$logfile" 2>/dev/null)"
      fi
      log "osmem: ready (pid $pid)"
    fi
  fi

  # The only stdout: lines for the caller to eval.
  printf 'export DATABASE_URL=%q\n' "$database_url"
  printf 'export REDIS_URL=%q\n' "$redis_url"
  printf 'export ELASTICSEARCH_URL=%q\n' "$es_url"
)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: run in the subshell, then export into the caller's shell.
  if _tidemark_services_out=$(tidemark_services); then
    eval "$_tidemark_services_out"
    unset _tidemark_services_out
  else
    unset _tidemark_services_out
    return 1
  fi
else
  tidemark_services
fi
