#!/usr/bin/env bash
# Run one embedded OpenSearch node (see README.md beside this file).
#
#   deploy/opensearch/opensearch.sh [--engine VERSION] [launcher flags]   # run a node (exec's java)
#   deploy/opensearch/opensearch.sh [--engine VERSION] --prepare           # only resolve + compile
#
# The first run of an engine line resolves its jars from Maven Central into
# $TIDEMARK_CACHE/opensearch/<version>/lib (mvn dependency:copy-dependencies, plus the
# log4j-core that matches the log4j-api OpenSearch pulls) and compiles Launcher.java
# against them; later runs reuse both (and Maven works offline once ~/.m2 holds the jars).
# stdout carries only the launcher's JSON line; everything else goes to stderr.
#
# Environment:
#   TIDEMARK_CACHE                  cache root (default ~/.cache/tidemark)
#   TIDEMARK_OPENSEARCH_VERSION     engine line (default 2.19.6; 3.x needs Java 21+)
#   TIDEMARK_OPENSEARCH_HEAP        heap, -Xms = -Xmx (default 768m; 512m..1g is sensible here)
#   TIDEMARK_OPENSEARCH_JAVA_HOME   JDK to use (default: java on PATH for 2.x, if it is 17+;
#                                   for 3.x the first JDK 21+ of $JAVA_HOME, Temurin 25, /usr/lib/jvm/*)
#   TIDEMARK_OPENSEARCH_JAVA_OPTS   extra JVM flags
#   TIDEMARK_OPENSEARCH_LOG_LEVEL   root log level of the node (default INFO)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version="${TIDEMARK_OPENSEARCH_VERSION:-2.19.6}"
prepare_only=0
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --engine) [[ $# -ge 2 ]] || { echo "opensearch.sh: --engine needs a version" >&2; exit 2; }; version=$2; shift 2 ;;
    --engine=*) version=${1#--engine=}; shift ;;
    --prepare) prepare_only=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "opensearch.sh: engine version must be X.Y.Z, got '$version'" >&2; exit 2; }
major=${version%%.*}

cache="${TIDEMARK_CACHE:-$HOME/.cache/tidemark}"
base="$cache/opensearch/$version"
lib="$base/lib"
launcher="$base/launcher"

say() { printf '[opensearch.sh] %s\n' "$*" >&2; }
die() { printf '[opensearch.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ the JDK
java_major() { # JAVA_HOME -> major version, or nothing
  local v
  v=$("$1/bin/java" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}')
  printf '%s' "${v%%.*}"
}
need_java=17
[[ $major -ge 3 ]] && need_java=21
pick_jdk() {
  local c
  local candidates=()
  [[ -n ${TIDEMARK_OPENSEARCH_JAVA_HOME:-} ]] && { printf '%s' "$TIDEMARK_OPENSEARCH_JAVA_HOME"; return; }
  if [[ $major -lt 3 ]] && command -v javac >/dev/null 2>&1; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")")
  fi
  [[ -n ${JAVA_HOME:-} ]] && candidates+=("$JAVA_HOME")
  candidates+=(/usr/lib/jvm/temurin-25-jdk-amd64)
  for c in /usr/lib/jvm/*/; do candidates+=("${c%/}"); done
  for c in "${candidates[@]}"; do
    [[ -x $c/bin/java && -x $c/bin/javac ]] || continue
    local m
    m=$(java_major "$c")
    [[ -n $m && $m -ge $need_java ]] && { printf '%s' "$c"; return; }
  done
}
jdk=$(pick_jdk)
if [[ $major -ge 3 ]]; then hint="install a JDK 21+ (e.g. Temurin) or point TIDEMARK_OPENSEARCH_JAVA_HOME at one"
else hint="Debian: apt-get install openjdk-17-jdk-headless, or point TIDEMARK_OPENSEARCH_JAVA_HOME at a JDK 17+"; fi
[[ -n $jdk && -x $jdk/bin/javac ]] || die "OpenSearch $version needs a JDK $need_java+ (java and javac); none found: $hint"
jmajor=$(java_major "$jdk")
[[ -n $jmajor && $jmajor -ge $need_java ]] || die "OpenSearch $version needs Java $need_java+, but $jdk is Java ${jmajor:-?}"

# ------------------------------------------------------------- JVM flags
heap="${TIDEMARK_OPENSEARCH_HEAP:-768m}"
opts=(
  -Xss1m
  # The JVM's own warnings go to stderr, not to stdout (the default), which is the JSON line's.
  -Xlog:disable -Xlog:all=warning:stderr:uptime,level,tags
  -XX:+UseG1GC -XX:G1ReservePercent=25 -XX:InitiatingHeapOccupancyPercent=30
  -XX:-OmitStackTraceInFastThrow -XX:+ShowCodeDetailsInExceptionMessages
  -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djna.nosys=true
  -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true
  -Dio.netty.recycler.maxCapacityPerThread=0 -Dio.netty.allocator.numDirectArenas=0
  -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
  "-Dlog4j2.configurationFile=$launcher/log4j2.properties"
  "-Dtidemark.opensearch.base=$base"
)
if [[ $major -ge 3 ]]; then
  # What the 3.x distribution passes on JDK 21+ (minus its security agent, which an
  # embedded node does not use).
  opts+=(-Djava.locale.providers=SPI,CLDR --enable-native-access=ALL-UNNAMED
    --add-modules=jdk.incubator.vector -Dorg.apache.lucene.store.MMapDirectory.sharedArenaMaxPermits=1)
else
  # 2.x parses dates with the COMPAT locale data, as its distribution does on Java 17.
  opts+=(-Djava.locale.providers=SPI,COMPAT)
fi
# shellcheck disable=SC2206
[[ -n ${TIDEMARK_OPENSEARCH_JAVA_OPTS:-} ]] && opts+=(${TIDEMARK_OPENSEARCH_JAVA_OPTS})

# ------------------------------------------------- resolve + compile, once
# A stamp per step, keyed by what it was made from: a changed pom or launcher source
# redoes that step (and nothing else).
key() { cat "$@" | sha256sum | cut -c1-16; }
lib_key="$version-$(key "$here/pom.xml")"
# The JDK build is part of the launcher's key: the class-data archive (below) is only valid
# for the JVM that wrote it.
launcher_key="$version-$jmajor-$(stat -c %Y "$(readlink -f "$jdk/bin/java")" "$jdk"/lib/server/libjvm.so 2>/dev/null | tr '\n' -)$(key "$here/src/main/java/tidemark/opensearch/Launcher.java" "$here/log4j2.properties")"
classpath="$launcher/launcher.jar:$lib/*"

prepare() {
  mkdir -p "$base"
  if [[ $(cat "$lib/.stamp" 2>/dev/null) != "$lib_key" ]]; then
    command -v mvn >/dev/null 2>&1 || die "mvn is missing (Debian: apt-get install maven); it resolves the OpenSearch jars once"
    local tmp="$base/lib.tmp.$$" mlog="$base/resolve.log"
    rm -rf "$tmp"
    say "resolving OpenSearch $version from Maven Central into $lib (log $mlog)"
    # Offline first: once ~/.m2 holds the artifacts nothing needs the network.
    local mvn_args=(-B -q -f "$here/pom.xml" "-Dopensearch.version=$version"
      dependency:copy-dependencies "-DoutputDirectory=$tmp" -DincludeScope=runtime)
    if ! mvn -o "${mvn_args[@]}" >"$mlog" 2>&1; then
      rm -rf "$tmp"
      mvn "${mvn_args[@]}" >>"$mlog" 2>&1 || die "resolving OpenSearch $version failed; tail of $mlog:
$(tail -n 25 "$mlog")"
    fi
    # log4j-core is not a dependency of the server jar; take the one matching its log4j-api.
    local api
    api=$(cd "$tmp" && ls log4j-api-*.jar 2>/dev/null | sed -E 's/^log4j-api-(.*)\.jar$/\1/' | head -n1)
    [[ -n $api ]] || die "no log4j-api jar among the resolved OpenSearch $version jars (see $mlog)"
    local core_args=(-B -q dependency:copy "-Dartifact=org.apache.logging.log4j:log4j-core:$api" "-DoutputDirectory=$tmp")
    if ! (cd "$tmp" && mvn -o "${core_args[@]}") >>"$mlog" 2>&1; then
      (cd "$tmp" && mvn "${core_args[@]}") >>"$mlog" 2>&1 || die "resolving log4j-core $api failed; tail of $mlog:
$(tail -n 25 "$mlog")"
    fi
    [[ -f $tmp/opensearch-$version.jar ]] || die "opensearch-$version.jar was not resolved (see $mlog)"
    echo "$lib_key" >"$tmp/.stamp"
    rm -rf "$lib" "$launcher"
    mv "$tmp" "$lib"
    say "resolved $(ls "$lib"/*.jar | wc -l) jars ($(du -sh "$lib" | cut -f1)), log4j $api"
  fi
  if [[ $(cat "$launcher/.stamp" 2>/dev/null) != "$launcher_key" ]]; then
    local tmp="$base/launcher.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/classes"
    say "compiling the launcher against OpenSearch $version with $jdk"
    "$jdk/bin/javac" -nowarn -XDignore.symbol.file -encoding UTF-8 -d "$tmp/classes" -cp "$lib/*" \
      "$here/src/main/java/tidemark/opensearch/Launcher.java" 2>"$base/javac.log" \
      || die "compiling Launcher.java failed:
$(grep -v 'warning' "$base/javac.log" | tail -n 25)"
    # A jar, not a directory: class-data sharing takes no non-empty directory on the classpath.
    "$jdk/bin/jar" cf "$tmp/launcher.jar" -C "$tmp/classes" . || die "jar failed"
    rm -rf "$tmp/classes"
    cp "$here/log4j2.properties" "$tmp/log4j2.properties"
    echo "$launcher_key" >"$tmp/.stamp"
    rm -rf "$launcher"
    mv "$tmp" "$launcher"
  fi
  # Class-data sharing: one training start of a throwaway node records the ~20k classes a
  # node loads (parsed and verified) into launcher/cds.jsa; every later start maps them
  # instead of loading them again, which halves the start time on 2 busy cores. Once per
  # launcher build; TIDEMARK_OPENSEARCH_CDS=0 skips it. A failed training is not retried
  # (cds.failed) and only costs the speed-up.
  if [[ ${TIDEMARK_OPENSEARCH_CDS:-1} != 0 && ! -f $launcher/cds.jsa && ! -f $launcher/cds.failed ]]; then
    local jsa="$launcher/cds.jsa.tmp.$$" clog="$base/cds-training.log" t0=$SECONDS
    say "training class-data sharing for OpenSearch $version (one throwaway node start; log $clog)"
    if "$jdk/bin/java" "${opts[@]}" -Xms512m -Xmx512m "-XX:ArchiveClassesAtExit=$jsa" -cp "$classpath" \
      tidemark.opensearch.Launcher --http-port 0 --node-name cds-training --cluster-name cds-training \
      --exit-after-start </dev/null >/dev/null 2>"$clog" && [[ -s $jsa ]]; then
      mv "$jsa" "$launcher/cds.jsa"
      say "class-data archive ready ($(du -sh "$launcher/cds.jsa" | cut -f1), $((SECONDS - t0)) s)"
    else
      rm -f "$jsa"
      touch "$launcher/cds.failed"
      say "warning: class-data training failed (see $clog); nodes start without it"
    fi
  fi
}
# Serialise concurrent first runs of the same line. The lock fd is opened in a subshell
# only, so the node (exec'd below) never inherits it.
mkdir -p "$base"
( flock -w 900 7 || die "timed out waiting for $base/.prepare.lock"; prepare ) 7>"$base/.prepare.lock"

if [[ $prepare_only -eq 1 ]]; then
  printf '%s\n' "$base"
  exit 0
fi

[[ ${TIDEMARK_OPENSEARCH_CDS:-1} != 0 && -f $launcher/cds.jsa ]] && opts+=("-XX:SharedArchiveFile=$launcher/cds.jsa")
exec "$jdk/bin/java" "-Xms$heap" "-Xmx$heap" "${opts[@]}" -cp "$classpath" tidemark.opensearch.Launcher "${args[@]}"
