#!/usr/bin/env bash
# Header sync under --max-download-rate: bytes of `headers` received per header (81 means
# each header arrived once). Issue #24's probe saw every batch arrive several times.
#
# usage: scripts/bench-rate-limited-sync.sh MODE HEADERS RATE [MESHD_BIN]
#   MODE server: the serving peer is tests/peers/header_server.py (Python, not meshd), which
#                only answers getheaders;
#   MODE meshd:  the serving peer is a meshd regtest node that generated HEADERS blocks
#                (at most about 40,000: regtest block times run ahead of the clock) and
#                generates one more every second during the sync, so it announces blocks.
# MESHD_BIN (default target/debug/meshd) is the node under test; the serving meshd is always
# target/debug/meshd. Everything listens on loopback.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=$1; N=$2; RATE=$3; B=${4:-$ROOT/target/debug/meshd}
A=$ROOT/target/debug/meshd
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
cd "$W"
height() { "$1" sync --datadir "$2" --api "$3" --json 2>/dev/null |
  python3 -c "import json,sys; print(json.load(sys.stdin)['header_height'])" 2>/dev/null || echo 0; }
if [ "$MODE" = server ]; then
  python3 "$ROOT/tests/peers/header_server.py" --headers "$N" \
    --cache "$ROOT/target/header-server-$N-60s.bin" > srv.log 2>&1 &
  for _ in $(seq 1 300); do grep -q listening srv.log && break; sleep 1; done
  PEER=$(awk '{print $3}' srv.log)
  TARGET=$N
else
  "$A" --datadir ./a --listen 127.0.0.1:19711 --api 127.0.0.1:19712 --no-metrics \
    --log-format json > a.log 2>&1 &
  sleep 2
  left=$N
  while [ "$left" -gt 0 ]; do
    n=$(( left > 10000 ? 10000 : left ))
    "$A" generate "$n" --datadir ./a --api 127.0.0.1:19712 > /dev/null
    left=$(( left - n ))
  done
  PEER=127.0.0.1:19711
  TARGET=$N
fi
"$B" --datadir ./b --connect "$PEER" --no-listen --max-download-rate "$RATE" --blocks none \
  --no-metrics --api 127.0.0.1:19713 --log-format json > b.log 2>&1 &
START=$(date +%s.%N)
for _ in $(seq 1 900); do
  [ "$MODE" = meshd ] && "$A" generate 1 --datadir ./a --api 127.0.0.1:19712 > /dev/null
  sleep 1
  [ "$(height "$B" ./b 127.0.0.1:19713)" -ge "$TARGET" ] && break
done
END=$(date +%s.%N)
sleep 2
SERVED=$TARGET
[ "$MODE" = meshd ] && SERVED=$(height "$A" ./a 127.0.0.1:19712)
"$B" peers --datadir ./b --api 127.0.0.1:19713 --json | python3 -c "
import json,sys
p=json.load(sys.stdin)[0]
h=p['bytes_received_per_command'].get('headers',0)
print(f'peer tip {$SERVED}: headers bytes {h}, {h/$SERVED:.1f} per header, '
      f'getheaders sent {p[\"bytes_sent_per_command\"].get(\"getheaders\")} bytes, '
      f'synced to {$TARGET} in {$END-$START:.1f} s')"
