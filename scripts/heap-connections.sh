#!/usr/bin/env bash
# Where an idle connection's bytes go: a release meshd under heaptrack holds N idle inbound
# connections from the load generator (handshake and one ping each), then stops; prints
# the node's RSS per peer and the peak heap by the deepest meshd function that allocated
# (scripts/heap-breakdown.py). Usage: scripts/heap-connections.sh [N]
# Environment: TRANSPORT=v2 opens every connection with the BIP324 v2 key exchange.
# Needs heaptrack (Debian package heaptrack). Not part of the test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ulimit -n 20000
n="${1:-1000}"
cargo build --release --bin meshd --example loadgen -q
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 10000))
heaptrack -o "$dir/heap" ./target/release/meshd --datadir "$dir/node" \
  --listen "127.0.0.1:$port" --no-metrics --max-inbound 20000 --max-connections 20100 \
  --log-level warn > "$dir/heaptrack.log" 2>&1 &
for _ in $(seq 100); do
  pid="$(pgrep -f "^./target/release/meshd --datadir $dir/node" | head -1 || true)"
  [ -n "$pid" ] && break
  sleep 0.1
done
sleep 2
./target/release/examples/loadgen "127.0.0.1:$port" "$n" --pid "$pid" --concurrency 256 \
  --hold 4 $([ "${TRANSPORT:-v1}" = v2 ] && echo --v2)
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
sleep 1
heaptrack_print -f "$dir/heap.zst" -p 0 -a 0 -T 0 -l 0 -F "$dir/peak.txt" \
  --flamegraph-cost-type peak | grep -E "peak heap|peak RSS"
python3 scripts/heap-breakdown.py "$dir/peak.txt" "$n"
