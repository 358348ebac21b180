#!/usr/bin/env bash
# Prints the path of a virtualenv with the Python client (clients/python) and the tools its
# checks and its FastAPI example need, creating it when needed: under target/tools, every
# package from PyPI pinned by version and hash (clients/python/requirements-test.txt;
# requirements-test.in says how to update it). The client itself is installed from its
# source as a user's pip would, so what runs is what would ship (py.typed included).
set -euo pipefail
cd "$(dirname "$0")/.."

lock=clients/python/requirements-test.txt
TOOLS="${CARGO_TARGET_DIR:-target}/tools"
# Keyed by the lock and the interpreter: a new python3 gets a venv of its own.
VENV="$TOOLS/python-$( (cat "$lock"; python3 -VV) | sha256sum | cut -c1-12)"
if [ ! -f "$VENV/.installed" ]; then
  echo "python-env: installing the Python client's tools into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV" >/dev/null
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --only-binary :all: \
    -r "$lock" >&2
  touch "$VENV/.installed"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --no-index --force-reinstall ./clients/python >&2
echo "$(cd "$VENV" && pwd)"
