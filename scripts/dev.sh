#!/usr/bin/env bash
# `make run`: builds Lanyard and runs it locally with a nats-server on 4222 (started unless one
# is already listening), the fake identity provider on 8788 as a dev provider, and the daemon
# with config/dev.toml. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --workspace
target="${CARGO_TARGET_DIR:-target}/debug"
nats_server="$(command -v nats-server || echo /usr/sbin/nats-server)"

. scripts/procs.sh

if listening 4222; then
  echo "dev: using the nats-server already on 127.0.0.1:4222" >&2
else
  "$nats_server" -a 127.0.0.1 -p 4222 &
  pids+=($!)
fi
"$target/lanyard-fake-idp" --listen 127.0.0.1:8788 &
pids+=($!)
wait_for 4222
wait_for 8788

cat >&2 <<'MSG'
dev: Lanyard is starting with config/dev.toml. In another terminal:
       make demo                      # a whole login over NATS, printed step by step
       target/debug/lanyard events    # tail the events
MSG
"$target/lanyard" serve --config config/dev.toml
