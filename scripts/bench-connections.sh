#!/usr/bin/env bash
# Connection-scale benchmark: a release meshd on loopback, then the load generator opens N
# inbound connections (handshake + ping each) and holds them idle; prints handshakes/s and
# the node's RSS per connected peer. Usage: scripts/bench-connections.sh [N ...]
# Environment: TRANSPORT=v2 opens every connection with the BIP324 v2 key exchange;
# CONCURRENCY (default 512) handshakes in flight at once (1 measures one handshake's time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ulimit -n 20000
cargo build --release --bin meshd --example loadgen -q
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for n in "${@:-1000 10000}"; do
  for count in $n; do
    # Below the ephemeral range (32768+), which the load generator's sockets use.
    port=$((20000 + RANDOM % 10000))
    ./target/release/meshd --datadir "$dir/$count" --listen "127.0.0.1:$port" --no-metrics \
      --max-inbound 20000 --max-connections 20100 --log-level warn &
    pid=$!
    sleep 1
    echo "== $count connections (meshd pid $pid)"
    ./target/release/examples/loadgen "127.0.0.1:$port" "$count" --pid "$pid" \
      --concurrency "${CONCURRENCY:-512}" --hold 3 $([ "${TRANSPORT:-v1}" = v2 ] && echo --v2)
    kill -TERM "$pid"; wait "$pid" || true
  done
done
