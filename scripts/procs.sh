# Sourced by scripts/dev.sh and scripts/cluster.sh: the processes they start, stopped on
# exit, and waiting for ports.
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
  for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done
  echo "$(basename "$0" .sh): nothing is listening on port $1" >&2
  exit 1
}
