#!/usr/bin/env bash
# The Python client's checks (clients/python): formatting and lints (ruff), types (mypy
# --strict) over the package, its FastAPI example and its tests, then pytest against a real
# daemon. The tests start their own nats-server, the fake identity provider and `lanyard
# serve` from target/debug, so build the workspace first (`make test` does). Arguments go
# to pytest (`-k device`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$(scripts/python-env.sh)"
export CLIENT_TESTS_BIN_DIR
CLIENT_TESTS_BIN_DIR="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"
cd clients/python
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/mypy" --no-error-summary src examples tests
exec "$VENV/bin/pytest" -q "$@"
