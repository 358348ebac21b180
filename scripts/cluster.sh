#!/usr/bin/env bash
# `make cluster`: Lanyard scaled out on one machine. A three-node nats-server cluster with
# JetStream (client ports 4222-4224, routes 6222-6224, data in .lanyard/cluster/), the fake
# identity provider on 8788, and three daemons in one queue group sharing the JetStream store
# (R3 buckets) and the events stream. `make demo` then logs in through whichever daemon the
# queue group picks. Ctrl-C stops everything; `rm -rf .lanyard/cluster` forgets the state.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --workspace
target="${CARGO_TARGET_DIR:-target}/debug"
nats_server="$(scripts/jetstream-server.sh)"
state=.lanyard/cluster
mkdir -p "$state"

. scripts/procs.sh
for port in 4222 4223 4224 8788; do
  if listening "$port"; then
    echo "cluster: port $port is taken (is \`make run\` still running?)" >&2
    exit 1
  fi
done

routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for n in 1 2 3; do
  cat >"$state/n$n.conf" <<CONF
server_name: n$n
listen: 127.0.0.1:$((4221 + n))
jetstream { store_dir: "$state/n$n" }
cluster { name: lanyard-dev, listen: 127.0.0.1:$((6221 + n)), routes: [$routes] }
CONF
  "$nats_server" -c "$state/n$n.conf" >"$state/n$n.log" 2>&1 &
  pids+=($!)
done
"$target/lanyard-fake-idp" --listen 127.0.0.1:8788 >"$state/idp.log" 2>&1 &
pids+=($!)
for port in 4222 4223 4224 8788; do wait_for "$port"; done

# Every daemon seals with the same master key: made once, kept with the cluster's state.
if [ ! -s "$state/master.key" ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 >"$state/master.key")
fi

urls="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
for d in 1 2 3; do
  LANYARD_STORE=jetstream \
  LANYARD_JETSTREAM__REPLICAS=3 \
  LANYARD_EVENTS__STREAM=true \
  LANYARD_EVENTS__REPLICAS=3 \
  LANYARD_NATS__URL="$urls" \
  LANYARD_NATS__NAME="lanyard-$d" \
  LANYARD_DATA_DIR="$state/d$d" \
  LANYARD_VAULT__MASTER_KEY_FILE="$state/master.key" \
    "$target/lanyard" serve --config config/dev.toml >"$state/d$d.log" 2>&1 &
  pids+=($!)
  # The first daemon creates the buckets; the others find them.
  [ "$d" = 1 ] && sleep 2
done

cat >&2 <<'MSG'
cluster: three nats-server nodes (4222-4224) and three daemons sharing JetStream.
       make demo                                  # a login through the queue group
       target/debug/lanyard events --since 1h     # replay the events stream
       logs in .lanyard/cluster/*.log; Ctrl-C stops everything
MSG
wait
