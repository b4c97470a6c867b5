#!/usr/bin/env bash
# Headless Chromium and its WebDriver (chromedriver) for the browser tests
# (tests/browser.rs): Debian's `chromium` and `chromium-driver`, installed with apt when
# missing; nothing is downloaded from anywhere else. Idempotent: a machine that has both
# installs nothing. Prints the chromedriver path on stdout (and nothing else); progress
# goes to stderr.
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
  else
    sudo=
  fi
  log "installing Debian's chromium and chromium-driver (apt)"
  $sudo apt-get update -qq >&2 || log "apt-get update failed; trying the install with the lists at hand"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2
fi
command -v chromium >/dev/null 2>&1 || { log "chromium is still missing after the install"; exit 1; }
command -v chromedriver
