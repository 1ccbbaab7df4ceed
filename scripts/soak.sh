#!/usr/bin/env bash
# Soak: a 10-node regtest mesh of release meshd on loopback for MINUTES (default 30), with
#   - churn: every 60 s one of nodes 7-9 is restarted (SIGTERM, then started again), and
#     every 15 s a random node drops one of its peers through the API (outbound ones redial);
#   - generation: every 10 s a random node mines a block (it crosses the mesh);
#   - transaction relay: three independent peers (tests/peers/txpeer.py) announce and serve a
#     new transaction every 0.5 s to nodes 0, 3 and 6;
#   - bans: every 30 s a random node bans a documentation address for 60 s (it expires).
# Every 10 s it samples each node's RSS, open files and threads (from /proc) and header
# height into target/soak/soak.csv, then draws target/soak/soak.png with gnuplot. Nodes 0-6
# run the whole time: their lines are the ones that must stay flat. The relay pool, the
# largest structure this load fills, is capped at 2,000 transactions so it is full within
# the first five minutes; what the rest of the run shows is whether anything else grows.
#   scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-30}"
command -v gnuplot >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox
}
cargo build --release --bin meshd -q
bin="$PWD/target/release/meshd"
out="$PWD/target/soak"
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
declare -a pids
extra_pids=()
cleanup() {
  for p in "${pids[@]}" "${extra_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

p2p() { echo $((21000 + $1)); }
metrics() { echo $((22000 + $1)); }
api() { echo $((23000 + $1)); }

start_node() {
  local i=$1
  "$bin" --datadir "$work/n$i" --listen "127.0.0.1:$(p2p "$i")" \
    --metrics "127.0.0.1:$(metrics "$i")" --api "127.0.0.1:$(api "$i")" \
    --connect "127.0.0.1:$(p2p $(((i + 1) % 10)))" --connect "127.0.0.1:$(p2p $(((i + 4) % 10)))" \
    --tx-pool-max-count 2000 --log-level warn >>"$out/node$i.log" 2>&1 &
  pids[$i]=$!
}

call() { # node method route [json]
  local i=$1 method=$2 route=$3 body=${4:-}
  local token
  token="$(cat "$work/n$i/regtest/.cookie" 2>/dev/null || true)"
  curl -s -m 5 -X "$method" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    ${body:+-d "$body"} "http://127.0.0.1:$(api "$i")$route" || true
}

for i in $(seq 0 9); do start_node "$i"; done
sleep 3
for i in 0 3 6; do
  python3 tests/peers/txpeer.py "127.0.0.1:$(p2p "$i")" --interval 0.5 >/dev/null 2>&1 &
  extra_pids+=($!)
done

echo "t_s,node,pid,rss_kib,fds,threads,header_height,txs_received" >"$out/soak.csv"
start=$(date +%s)
end=$((start + minutes * 60))
tick=0
restart_next=7
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(($(date +%s) - start))
  for i in $(seq 0 9); do
    pid=${pids[$i]}
    if [ -r "/proc/$pid/status" ]; then
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
      threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
      fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
      scrape=$(curl -s -m 2 "http://127.0.0.1:$(metrics "$i")/metrics" || true)
      height=$(awk '/^meshd_header_height / {print $2}' <<<"$scrape")
      txs=$(awk '/^meshd_txs_received_total / {print $2}' <<<"$scrape")
      echo "$now,$i,$pid,$rss,$fds,$threads,${height:-},${txs:-0}" >>"$out/soak.csv"
    fi
  done
  # Load and churn, on a 10 s beat.
  call $((RANDOM % 10)) POST /v1/generate '{"blocks":1}' >/dev/null
  if [ $((tick % 3)) -eq 0 ]; then
    call $((RANDOM % 10)) POST /v1/bans "{\"subnet\":\"203.0.113.$((RANDOM % 250 + 1))/32\",\"duration\":\"60s\"}" >/dev/null
  fi
  if [ $((tick % 2)) -eq 1 ]; then
    n=$((RANDOM % 10))
    id=$(call "$n" GET /v1/peers | python3 -c 'import json,sys,random
try:
    peers=json.load(sys.stdin)
    print(random.choice(peers)["id"] if peers else "")
except Exception:
    print("")')
    [ -n "$id" ] && call "$n" DELETE "/v1/peers/$id" >/dev/null
  fi
  if [ $((tick % 6)) -eq 5 ]; then
    kill -TERM "${pids[$restart_next]}" 2>/dev/null || true
    wait "${pids[$restart_next]}" 2>/dev/null || true
    start_node "$restart_next"
    restart_next=$(((restart_next - 6) % 3 + 7))
  fi
  tick=$((tick + 1))
  sleep 10
done

for n in $(seq 0 9); do
  awk -F, -v n="$n" 'NR > 1 && $2 == n' "$out/soak.csv" >"$out/node-$n.csv"
done
gnuplot <<EOF
set datafile separator ","
set terminal pngcairo size 1400,1000 noenhanced
set output "$out/soak.png"
set multiplot layout 3,1 title "meshd soak: 10 nodes, ${minutes} min (nodes 7-9 restarted in turn every minute)"
set key outside right
set xlabel "minutes"
set ylabel "RSS (MiB)"
plot for [n=0:9] sprintf("$out/node-%d.csv", n) using (\$1/60):(\$4/1024) with lines title sprintf("node %d", n)
set ylabel "open files"
plot for [n=0:9] sprintf("$out/node-%d.csv", n) using (\$1/60):5 with lines title sprintf("node %d", n)
set ylabel "threads"
plot for [n=0:9] sprintf("$out/node-%d.csv", n) using (\$1/60):6 with lines title sprintf("node %d", n)
unset multiplot
EOF
echo "soak done: $out/soak.csv, $out/soak.png" >&2
# First and last sample of each long-running node, for the record.
awk -F, 'NR > 1 && $2 <= 6 { if (!($2 in first)) first[$2] = $4; last[$2] = $4; h[$2] = $7; tx[$2] = $8 }
  END { for (n = 0; n <= 6; n++) printf "node %d: rss %d -> %d KiB, height %s, transactions received %s\n", n, first[n], last[n], h[n], tx[n] }' \
  "$out/soak.csv" >&2
