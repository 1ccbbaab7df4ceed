#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, idempotently:
#   - bcoin 1.0.2 (an independent Bitcoin implementation in JavaScript) from npm, into
#     $MESHD_PEERS_DIR/bcoin (default: <repo>/.peers/bcoin);
#   - Node.js and npm from Debian if they are missing;
#   - dnsmasq (Debian's dnsmasq-base) for the DNS-seed tests;
#   - prometheus and promtool, and systemd-analyze, for the deploy/ checks;
#   - coturn, nftables and iproute2 for the STUN NAT lab (tests/lab/natlab.sh);
#   - miniupnpd-nftables (a PCP, NAT-PMP and UPnP gateway) and miniupnpc (upnpc) for the
#     port-mapping lab (tests/portmap_lab.rs);
#   - btclib_secp256k1 and cryptography from PyPI for the independent BIP324 peer
#     (tests/peers/v2peer.py);
#   - microsocks (a SOCKS5 proxy) and tor (started offline by the onion-service tests);
#   - nats-server (JetStream) for the fleet tests;
#   - python-bitcoinrpc (PyPI) and bitcoin-core (npm), JSON-RPC clients written for bitcoind;
#   - tmux, the terminal `meshd top` is tested in;
#   - js-libp2p 3 (npm) for the overlay interop tests, into $MESHD_PEERS_DIR/jslibp2p.
# Everything stays local; nothing is started here.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${MESHD_PEERS_DIR:-$REPO/.peers}"
BCOIN_HOME="$PEERS/bcoin"

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# dnsmasq: a real DNS server for the DNS-seed discovery tests.
[ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
# prometheus (with promtool): checks deploy/ and runs the dashboard test against a live mesh.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# systemd-analyze verifies deploy/meshd.service.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The STUN NAT lab: coturn (the STUN server), nftables (the NATs), iproute2 (namespaces).
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# The port-mapping lab: miniupnpd as the gateway (run only inside the lab's namespace; the
# package installs no service), upnpc to list its mappings.
[ -x /usr/sbin/miniupnpd ] || need_apt+=(miniupnpd-nftables)
command -v upnpc >/dev/null 2>&1 || need_apt+=(miniupnpc)
# Proxies: microsocks for SOCKS5, tor (offline) for the control port and onion services.
command -v microsocks >/dev/null 2>&1 || need_apt+=(microsocks)
command -v tor >/dev/null 2>&1 || need_apt+=(tor)
# tmux: `meshd top` is driven in a real terminal (send-keys, capture-pane).
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# The fleet: a real NATS server with JetStream.
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from apt" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The independent BIP324 peer: ElligatorSwift from btclib_secp256k1, ChaCha20-Poly1305 and
# HKDF from cryptography.
if ! python3 -c "import btclib_secp256k1, cryptography" >/dev/null 2>&1; then
  echo "installing btclib_secp256k1 and cryptography from PyPI" >&2
  python3 -m pip --version >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
  }
  python3 -m pip install --quiet btclib_secp256k1 cryptography 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages btclib_secp256k1 cryptography
fi
python3 -c "import btclib_secp256k1, cryptography; print('python BIP324 peer deps ready')" >&2

# Independent JSON-RPC clients for the Core-compatible RPC: python-bitcoinrpc (PyPI) and
# bitcoin-core (npm), both written against bitcoind.
if ! python3 -c "import bitcoinrpc.authproxy" >/dev/null 2>&1; then
  echo "installing python-bitcoinrpc from PyPI" >&2
  python3 -m pip install --quiet python-bitcoinrpc==1.0 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages python-bitcoinrpc==1.0
fi
python3 -c "import bitcoinrpc.authproxy; print('python-bitcoinrpc ready')" >&2
RPC_CLIENTS="$PEERS/rpcclients"
if [ ! -f "$RPC_CLIENTS/node_modules/bitcoin-core/package.json" ]; then
  mkdir -p "$RPC_CLIENTS"
  (cd "$RPC_CLIENTS" \
    && echo '{"name":"meshd-rpc-clients","private":true,"dependencies":{"bitcoin-core":"4.2.0"}}' > package.json \
    && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
node -e "require('$RPC_CLIENTS/node_modules/bitcoin-core'); console.error('npm bitcoin-core ready')"

if [ -f "$BCOIN_HOME/node_modules/bcoin/package.json" ] && [ -d "$BCOIN_HOME/node_modules/leveldown" ]; then
  echo "bcoin already installed in $BCOIN_HOME" >&2
else
  mkdir -p "$BCOIN_HOME"
  cd "$BCOIN_HOME"
  # leveldown 4.0.1 (pinned by bcoin's bdb) does not build against current Node's V8;
  # 6.1.1 ships N-API prebuilds. bcoin runs with an in-memory db in our tests anyway.
  cat > package.json <<'JSON'
{"name":"meshd-test-peers","private":true,
 "dependencies":{"bcoin":"1.0.2"},
 "overrides":{"leveldown":"6.1.1"}}
JSON
  npm install --ignore-scripts --no-audit --no-fund --loglevel=error
  # Native addons that build are faster; those that do not fall back to pure JS.
  npm rebuild >/dev/null 2>&1 || true
fi
node -e "require('$BCOIN_HOME/node_modules/bcoin'); console.error('bcoin', require('$BCOIN_HOME/node_modules/bcoin/package.json').version, 'ready')"

# js-libp2p 3, an independent libp2p implementation, for the overlay interop tests
# (actors/tests/overlay_js.rs drives tests/peers/js_overlay.mjs). GossipSub for libp2p 3 is
# @libp2p/gossipsub (@chainsafe/libp2p-gossipsub is built for libp2p 2 and never delivers
# with 3). Pinned; the multiformats packages are direct dependencies (npm may not hoist them).
JS_LIBP2P="$PEERS/jslibp2p"
if [ -f "$JS_LIBP2P/node_modules/libp2p/package.json" ] && [ -f "$JS_LIBP2P/node_modules/@libp2p/gossipsub/package.json" ]; then
  echo "js-libp2p already installed in $JS_LIBP2P" >&2
else
  mkdir -p "$JS_LIBP2P"
  cat > "$JS_LIBP2P/package.json" <<'JSON'
{"name":"meshd-js-libp2p","private":true,"type":"module",
 "dependencies":{
  "libp2p":"3.3.11","@libp2p/tcp":"11.0.28","@chainsafe/libp2p-noise":"17.0.0",
  "@chainsafe/libp2p-yamux":"8.0.1","@libp2p/identify":"4.1.14","@libp2p/ping":"3.1.13",
  "@libp2p/kad-dht":"16.4.5","@libp2p/gossipsub":"17.1.1","@libp2p/circuit-relay-v2":"4.2.13",
  "@multiformats/multiaddr":"13.0.3","multiformats":"14.0.5"}}
JSON
  (cd "$JS_LIBP2P" && npm install --no-audit --no-fund --loglevel=error)
fi
(cd "$JS_LIBP2P" && node -e "import('libp2p').then(() => console.error('js-libp2p', require('./node_modules/libp2p/package.json').version, 'ready'))")
