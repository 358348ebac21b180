#!/usr/bin/env bash
# The Python client's checks (clients/python): formatting and lints (ruff), types (mypy
# --strict) over the package, its FastAPI example and its tests, then pytest against a real
# daemon. The tests start their own
# nats-server, the fake identity provider and `lanyard serve` from target/debug, so build
# the workspace first (`make test` does).
#
# The tools come from PyPI into a virtualenv under target/tools, every package pinned by
# version and hash (clients/python/requirements-test.txt; requirements-test.in says how to
# update it). The client itself is installed from its source as a user's pip would, so the
# tests import what would ship (py.typed included).
set -euo pipefail
cd "$(dirname "$0")/.."

lock=clients/python/requirements-test.txt
TOOLS="${CARGO_TARGET_DIR:-target}/tools"
VENV="$TOOLS/python-$(sha256sum "$lock" | cut -c1-12)"
if [ ! -f "$VENV/.installed" ]; then
  echo "python-tests: installing the Python test tools into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV" >/dev/null
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --only-binary :all: \
    -r "$lock" >&2
  touch "$VENV/.installed"
fi
VENV="$(cd "$VENV" && pwd)"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --no-index --force-reinstall ./clients/python >&2

export CLIENT_TESTS_BIN_DIR
CLIENT_TESTS_BIN_DIR="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"
cd clients/python
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/mypy" --no-error-summary src examples tests
exec "$VENV/bin/pytest" -q "$@"
