#!/usr/bin/env bash
# Make sure the services tidemark needs locally are up, reusing whatever already runs:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), Redis on 127.0.0.1:6379,
#   a real OpenSearch node (embedded, from Maven Central jars: deploy/opensearch/) on
#   127.0.0.1:${TIDEMARK_OPENSEARCH_PORT:-9200}.
#
# Usage:
#   eval "$(deploy/local/services.sh)"      # executed: prints `export ...` lines on stdout
#   source deploy/local/services.sh         # sourced: exports the variables into the caller
#
# Progress goes to stderr; stdout carries only the `export` lines.
# A pre-set DATABASE_URL / REDIS_URL / ELASTICSEARCH_URL means "use that one": the
# service is then not started, only checked for reachability and echoed back.
# Works on a fresh Debian 12 as root (installs packages with apt: PostgreSQL, Redis, a
# JDK 17 and Maven; the OpenSearch jars are resolved once into the cache).
#
# Environment knobs:
#   TIDEMARK_CACHE                where the OpenSearch jars, data, log and pid file live
#                                 (default ~/.cache/tidemark)
#   TIDEMARK_OPENSEARCH_PORT      HTTP port of the local node (default 9200)
#   TIDEMARK_OPENSEARCH_VERSION   engine line (default 2.19.6; e.g. 3.9.0 runs on a JDK 21+,
#                                 Temurin 25 here: use another port for it, e.g. 9201)
#   TIDEMARK_OPENSEARCH_HEAP      heap of a node started here (default 768m)

# deploy/opensearch/ beside this file's folder: resolved now, while BASH_SOURCE is this file.
_tidemark_opensearch_sh="$(cd "$(dirname "${BASH_SOURCE[0]}")/../opensearch" 2>/dev/null && pwd)/opensearch.sh"

# The whole job runs in a subshell so that `set -euo pipefail`, the lock fd and any
# `exit` stay inside it, whether this file is executed or sourced.
tidemark_services() (
  set -euo pipefail

  local cache="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
  local os_port="${TIDEMARK_OPENSEARCH_PORT:-9200}"
  local os_version="${TIDEMARK_OPENSEARCH_VERSION:-2.19.6}"
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
  # don't both install packages or start a second search node on the same port.
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

  # ----------------------------------------------------------------- OpenSearch
  local es_url
  if [[ -n "${ELASTICSEARCH_URL:-}" ]]; then
    # Caller chose a search server (Elasticsearch/OpenSearch): only check that
    # something answers HTTP there (any status: it may want credentials).
    curl -s -k --max-time 5 -o /dev/null "$ELASTICSEARCH_URL" || die "ELASTICSEARCH_URL is set but nothing answers HTTP there"
    log "Search: using pre-set ELASTICSEARCH_URL"
    es_url="$ELASTICSEARCH_URL"
  else
    es_url="http://127.0.0.1:$os_port"
    [[ $os_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "TIDEMARK_OPENSEARCH_VERSION must look like 2.19.6, not '$os_version'"
    [[ -x $_tidemark_opensearch_sh || -f $_tidemark_opensearch_sh ]] || die "the node launcher $_tidemark_opensearch_sh is missing"
    local osdir="$cache/opensearch"
    local pidfile="$osdir/node-$os_port.pid" logfile="$osdir/node-$os_port.log" infofile="$osdir/node-$os_port.json"
    mkdir -p "$osdir"

    # What answers on the port: "none" (connection refused), "opensearch <version>",
    # "osmem <version>", or a short description of something else.
    probe() {
      local body rc=0
      body=$(curl -s --max-time 3 "$es_url/" 2>/dev/null) || rc=$?
      if [[ $rc -eq 7 ]]; then echo none; return; fi
      if [[ $rc -ne 0 ]]; then echo "something that is not an HTTP server, or does not answer (curl exit $rc)"; return; fi
      local dist number
      dist=$(grep -o '"distribution" *: *"[^"]*"' <<<"$body" | head -n1 | sed -E 's/.*"([^"]*)"$/\1/')
      number=$(grep -o '"number" *: *"[^"]*"' <<<"$body" | head -n1 | sed -E 's/.*"([^"]*)"$/\1/')
      if grep -q '"build_hash" *: *"osmem"' <<<"$body"; then echo "osmem $number"; return; fi
      if [[ $dist == opensearch && -n $number ]]; then echo "opensearch $number"; return; fi
      if [[ -n $number ]]; then echo "${dist:-elasticsearch} $number"; return; fi
      echo "an HTTP server that is not OpenSearch (GET / answered: $(head -c 160 <<<"$body" | tr '\n' ' '))"
    }
    # Our node: the pid file names a live launcher process.
    our_pid() {
      local p
      p=$(cat "$pidfile" 2>/dev/null) || return 1
      [[ -n $p ]] && kill -0 "$p" 2>/dev/null && grep -qa tidemark.opensearch.Launcher "/proc/$p/cmdline" 2>/dev/null && echo "$p"
    }
    stop_ours() {
      local p=$1
      kill -TERM "$p" 2>/dev/null || true
      wait_until 20 bash -c "! kill -0 $p" || kill -9 "$p" 2>/dev/null || true
    }

    local what
    what=$(probe)
    if [[ $what == none ]]; then
      # A node of ours that is alive but not (yet) serving: let it finish starting, else replace it.
      local oldpid
      if oldpid=$(our_pid); then
        log "OpenSearch: pid $oldpid (ours) does not answer on $es_url yet; waiting up to 60 s"
        if wait_until 60 bash -c "curl -sf --max-time 2 -o /dev/null '$es_url/'"; then
          what=$(probe)
        else
          log "OpenSearch: pid $oldpid still does not answer; stopping it"
          stop_ours "$oldpid"
        fi
      fi
    fi

    case $what in
      "opensearch $os_version")
        log "OpenSearch $os_version: already answering on $es_url" ;;
      none)
        # Java and Maven: a JDK 17 from Debian for 2.x (3.x finds a JDK 21+ itself, e.g.
        # /usr/lib/jvm/temurin-25-jdk-amd64); Maven only while the jars are not resolved yet.
        if [[ ${os_version%%.*} -lt 3 ]]; then
          need_cmd java openjdk-17-jdk-headless
          need_cmd javac openjdk-17-jdk-headless
        fi
        if [[ ! -f $osdir/$os_version/lib/.stamp ]]; then need_cmd mvn maven; fi
        bash "$_tidemark_opensearch_sh" --engine "$os_version" --prepare >/dev/null 9>&- \
          || die "could not prepare OpenSearch $os_version (see the messages above)"

        # Detached: own session (no Ctrl-C or hang-up from the caller's terminal), stdin
        # from /dev/null, the JSON line to $infofile, the node's log to $logfile, and no
        # lock fd, so `$(services.sh)` does not wait on it and the lock is not held.
        log "OpenSearch $os_version: starting a node on $es_url (log $logfile)"
        rm -f "$infofile"
        local t0=$SECONDS
        TIDEMARK_CACHE="$cache" nohup setsid bash "$_tidemark_opensearch_sh" --engine "$os_version" \
          --http-port "$os_port" --node-name "local-$os_port" --cluster-name "tidemark-local" \
          --data "$osdir/$os_version/data/local-$os_port" \
          </dev/null >"$infofile" 2>"$logfile" 9>&- &
        local pid=$!
        echo "$pid" >"$pidfile"
        # The JSON line comes once the node serves HTTP: ~6 s on an idle machine, up to a
        # minute on 2 cores busy with builds.
        local i
        for ((i = 0; i < 240; i++)); do
          [[ -s $infofile ]] && break
          kill -0 "$pid" 2>/dev/null || break
          sleep 0.5
        done
        if [[ ! -s $infofile ]]; then
          if kill -0 "$pid" 2>/dev/null; then
            stop_ours "$pid"
            die "the OpenSearch node (pid $pid) did not answer within 120 s and was stopped; tail of $logfile:
$(tail -n 30 "$logfile" 2>/dev/null)"
          fi
          rm -f "$pidfile"
          die "the OpenSearch node exited while starting; tail of $logfile:
$(tail -n 30 "$logfile" 2>/dev/null)
(\"failed to obtain node locks\": another process uses $osdir/$os_version/data/local-$os_port;
a data dir the node cannot read any more can be removed: rm -rf $osdir/$os_version/data/local-$os_port)"
        fi
        what=$(probe)
        [[ $what == "opensearch $os_version" ]] || die "the node started (see $infofile) but GET $es_url/ says: $what"
        log "OpenSearch $os_version: ready on $es_url (pid $pid, $((SECONDS - t0)) s)" ;;
      "opensearch "*)
        local p hint=""
        p=$(our_pid) && hint=" It is ours (pid $p): stop it with \`kill $p\`."
        die "OpenSearch ${what#opensearch } answers on $es_url, but $os_version was asked for.$hint Or use it: TIDEMARK_OPENSEARCH_VERSION=${what#opensearch }; or another port: TIDEMARK_OPENSEARCH_PORT=<free port>." ;;
      "osmem "*)
        local p="" how="kill <its pid>"
        p=$(cat "$cache/osmem.pid" 2>/dev/null || true)
        [[ -n $p ]] && kill -0 "$p" 2>/dev/null && how="kill $p (pid from $cache/osmem.pid)"
        die "osmem, the in-memory emulator that earlier versions of this script started, answers on $es_url. tidemark now runs against a real OpenSearch node. Stop osmem ($how) and run this again, or put the node on another port: TIDEMARK_OPENSEARCH_PORT=9201." ;;
      *)
        die "port $os_port is taken by $what. Stop that, or put the OpenSearch node on another port: TIDEMARK_OPENSEARCH_PORT=<free port>." ;;
    esac
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
